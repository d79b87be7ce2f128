"""The image denoiser: a U-Net (Ronneberger et al. 2015) as used by Ho et al. 2020 (Appendix B)
and Nichol & Dhariwal 2021, with class conditioning for classifier-free guidance.

Shapes: ``forward(x: (B, C, H, W), t: (B,) long, y: (B,) long | None) -> (B, C, H, W)``.
``y = None`` on a conditional model means "no label" (the null class, as does any label < 0).

Layout: conv_in -> per level ``num_res_blocks`` ResBlocks (+ self-attention at the chosen
feature-map sizes, + cross-attention to label tokens when ``conditioning`` includes "cross"),
Downsample between levels -> middle ResBlock-Attention-ResBlock -> the mirror image with skip
connections (concatenated) and Upsample -> GroupNorm-SiLU-conv_out (zero-initialised).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ddpmkit.nn.blocks import (
    CrossAttention,
    Downsample,
    ResBlock,
    SelfAttention,
    Upsample,
    zero_init,
)
from ddpmkit.nn.embeddings import LabelEmbedding, LabelTokens, TimeEmbedding

__all__ = ["CONDITIONINGS", "UNet", "UNetConfig", "num_parameters"]

CONDITIONINGS = ("add", "cross", "add+cross")


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 1
    image_size: int | tuple[int, int] = 28  # S (square) or (H, W)
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)  # one level per entry; 2^(levels-1) must divide H, W
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (7,)  # feature-map sides (min(H, W)) with attention
    num_heads: int = 4
    dropout: float = 0.0
    num_classes: int = 0  # 0 = unconditional
    conditioning: str = "add"  # add: label embedding + time embedding; cross: cross-attention
    num_cond_tokens: int = 4  # tokens per label for cross-attention (> 1, see embeddings.py)
    scale_shift: bool = True
    groups: int = 8

    @property
    def hw(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def level_sizes(self) -> list[int]:
        """min(H, W) of the feature maps at each level."""
        h, w = self.hw
        return [min(h, w) >> i for i in range(len(self.channel_mults))]

    def validate(self) -> None:
        """Raise ValueError (one line, naming the field) for a config that cannot be built."""
        h, w = self.hw
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ValueError(
                f"channel_mults must be non-empty positive integers, got {list(self.channel_mults)}"
            )
        if self.base_channels < 1 or self.num_res_blocks < 1:
            raise ValueError("base_channels and num_res_blocks must be >= 1")
        factor = 2 ** (len(self.channel_mults) - 1)
        if h < 1 or w < 1 or h % factor or w % factor:
            raise ValueError(
                f"image_size {h}x{w} must be divisible by 2^(levels-1) = {factor} for "
                f"channel_mults {list(self.channel_mults)}; resize the images or use fewer levels"
            )
        for m in self.channel_mults:
            c = self.base_channels * m
            if c % self.groups:
                raise ValueError(
                    f"groups={self.groups} must divide every channel count; {c} is not divisible"
                )
            if c % self.num_heads:
                raise ValueError(
                    f"num_heads={self.num_heads} must divide every channel count; {c} is not"
                )
        sizes = self.level_sizes()
        for r in self.attention_resolutions:
            if r not in sizes:
                raise ValueError(
                    f"attention_resolutions: no level has feature-map size {r}; sizes are {sizes}"
                )
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(
                f"conditioning {self.conditioning!r} is not one of {list(CONDITIONINGS)}"
            )
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.num_cond_tokens < 1:
            raise ValueError(f"num_cond_tokens must be >= 1, got {self.num_cond_tokens}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _Level(nn.Module):
    """One ResBlock with optional self- and cross-attention after it."""

    def __init__(self, res: ResBlock, attn: SelfAttention | None, cross: CrossAttention | None):
        super().__init__()
        self.res, self.attn, self.cross = res, attn, cross

    def forward(self, x: Tensor, emb: Tensor, tokens: Tensor | None) -> Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.cross is not None and tokens is not None:
            x = self.cross(x, tokens)
        return x


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        base, g = cfg.base_channels, cfg.groups
        emb_dim = 4 * base
        self.time_embed = TimeEmbedding(base, emb_dim)
        conditional = cfg.num_classes > 0
        self.label_embed = (
            LabelEmbedding(cfg.num_classes, emb_dim)
            if conditional and "add" in cfg.conditioning
            else None
        )
        use_cross = conditional and "cross" in cfg.conditioning
        cond_dim = emb_dim
        self.label_tokens = (
            LabelTokens(cfg.num_classes, cond_dim, cfg.num_cond_tokens) if use_cross else None
        )

        def level(c_in: int, c_out: int, size: int) -> _Level:
            at = size in cfg.attention_resolutions
            return _Level(
                ResBlock(c_in, c_out, emb_dim, g, cfg.dropout, cfg.scale_shift),
                SelfAttention(c_out, cfg.num_heads, g) if at else None,
                CrossAttention(c_out, cond_dim, cfg.num_heads, g) if at and use_cross else None,
            )

        sizes = cfg.level_sizes()
        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [base]
        ch = base
        for i, m in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                self.down.append(level(ch, base * m, sizes[i]))
                ch = base * m
                skips.append(ch)
            if i < len(cfg.channel_mults) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
        self.mid1 = ResBlock(ch, ch, emb_dim, g, cfg.dropout, cfg.scale_shift)
        self.mid_attn = SelfAttention(ch, cfg.num_heads, g)
        self.mid_cross = CrossAttention(ch, cond_dim, cfg.num_heads, g) if use_cross else None
        self.mid2 = ResBlock(ch, ch, emb_dim, g, cfg.dropout, cfg.scale_shift)
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(level(ch + skips.pop(), base * m, sizes[i]))
                ch = base * m
            if i > 0:
                self.up.append(Upsample(ch))
        self.out = nn.Sequential(
            nn.GroupNorm(g, ch), nn.SiLU(), zero_init(nn.Conv2d(ch, cfg.in_channels, 3, padding=1))
        )

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """(B, C, H, W), (B,) long, (B,) long | None -> (B, C, H, W)."""
        emb = self.time_embed(t)  # (B, 4 * base)
        tokens = None
        if self.cfg.num_classes > 0:
            if y is None:  # unconditional call of a conditional model: the null class
                y = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
            if self.label_embed is not None:
                emb = emb + self.label_embed(y)
            if self.label_tokens is not None:
                tokens = self.label_tokens(y)  # (B, L, D)
        h = self.conv_in(x)
        hs = [h]
        for mod in self.down:
            h = mod(h) if isinstance(mod, Downsample) else mod(h, emb, tokens)
            hs.append(h)
        h = self.mid1(h, emb)
        h = self.mid_attn(h)
        if self.mid_cross is not None and tokens is not None:
            h = self.mid_cross(h, tokens)
        h = self.mid2(h, emb)
        for mod in self.up:
            if isinstance(mod, Upsample):
                h = mod(h)
            else:
                h = mod(torch.cat([h, hs.pop()], dim=1), emb, tokens)
        return self.out(h)
