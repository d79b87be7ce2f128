"""The image denoiser: a U-Net (Ronneberger et al. 2015) as used by Ho et al. 2020 (Appendix B)
and Nichol & Dhariwal 2021, with class or text conditioning for classifier-free guidance.

Shapes: ``forward(x: (B, C, H, W), t: (B,) long, y: (B,) long | None, text=None) -> (B, C, H, W)``
(``(B, out_channels, H, W)`` with ``out_channels`` set, e.g. 2C for learned variances).
``y = None`` on a conditional model means "no label" (the null class, as does any label < 0).

Text (``text_dim > 0``): ``text = (tokens (B, L, text_dim) float, mask (B, L) bool, pooled
(B, text_dim))``, e.g. a ``ddpmkit.text.TextEncoding`` (a named tuple; ``nn`` does not import
``text``). With "add" in ``text_conditioning`` the pooled vector goes through an MLP and joins the
time embedding (seed 001); with "cross" the tokens, LayerNorm-ed and projected (and, with
``text_refiner_layers``, re-read by a small trainable transformer), are the keys and values of
cross-attention from the pixels, padding masked out (seed 000, Stable Diffusion). A row
whose mask is all False is the *null condition* (the empty prompt; ``text=None`` for every row):
its pooled vector is replaced by a learned one (``text_null_pooled``) and its only key is a
learned null token (``text_null_token``), which is present, masked out, in every other row, so a
fully masked row never reaches the softmax (no NaN) and padding changes nothing. With
``text_layout`` the same tokens are also read per *position* into a layout map that every level
adds to its features (:mod:`ddpmkit.nn.layout`).

Layout: conv_in -> per level ``num_res_blocks`` ResBlocks (+ self-attention at the chosen
feature-map sizes, + cross-attention to label tokens when ``conditioning`` includes "cross"),
Downsample between levels -> middle ResBlock-Attention-ResBlock -> the mirror image with skip
connections (concatenated) and Upsample -> GroupNorm-SiLU-conv_out (zero-initialised).

Activation checkpointing (``UNet(cfg, checkpointing=True)``): while training with autograd
recording, every ResBlock with its attention (the skip concatenation included on the way up) and
the middle block run under ``torch.utils.checkpoint`` (non-reentrant): only their inputs are kept
for the backward pass, which recomputes their insides. The same function and gradients (the RNG
state, dropout included, and the autocast state are replayed), less memory, about one more
forward pass of time. Evaluation and ``no_grad``/``inference_mode`` calls are unaffected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ddpmkit.nn.blocks import (
    CrossAttention,
    Downsample,
    ResBlock,
    SelfAttention,
    TokenPool,
    TokenRefiner,
    Upsample,
    zero_init,
)
from ddpmkit.nn.embeddings import LabelEmbedding, LabelTokens, TimeEmbedding
from ddpmkit.nn.groupnorm import group_norm_act
from ddpmkit.nn.layout import LayoutInjection, TextLayout
from ddpmkit.nn.unet_config import CONDITIONINGS, Conditioning, UNetConfig

__all__ = [
    "CONDITIONINGS",
    "Conditioning",
    "TextCondition",
    "UNet",
    "UNetConfig",
    "num_parameters",
]


def num_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (only those with requires_grad if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# The text condition as the U-Net takes it: (tokens (B, L, D), mask (B, L) bool, pooled (B, D)).
TextCondition = tuple[Tensor, Tensor, Tensor]


class _Level(nn.Module):
    """One ResBlock (+ the text layout map) with optional self- and cross-attention after it."""

    def __init__(
        self,
        res: ResBlock,
        attn: SelfAttention | None,
        cross: CrossAttention | None,
        layout: LayoutInjection | None = None,
    ):
        super().__init__()
        self.res, self.attn, self.cross, self.layout = res, attn, cross, layout

    def forward(
        self,
        x: Tensor,
        emb: Tensor,
        tokens: Tensor | None,
        mask: Tensor | None = None,
        layout: Tensor | None = None,
    ) -> Tensor:
        x = self.res(x, emb)
        if self.layout is not None and layout is not None:
            x = self.layout(x, layout)
        if self.attn is not None:
            x = self.attn(x)
        if self.cross is not None and tokens is not None:
            x = self.cross(x, tokens, mask)
        return x


class UNet(nn.Module):
    """The denoising network (predicts eps, x0 or v, as trained); layout in the module docstring.

    ``UNet(cfg)`` validates ``cfg`` first (ValueError naming the field). The time embedding has
    width 4 * base_channels (Ho et al.); label embeddings and label tokens use the same width.
    Every parameter takes part in every forward pass (no unused parameters under DDP), also
    for ``y = None`` on a conditional model (the null class is a learned embedding) and for
    ``text = None`` on a text model (both the projections and the learned nulls are computed).

    ``checkpointing``: activation checkpointing while training (module docstring); a runtime
    switch, not part of the architecture (same parameters, same state dict), also settable as
    the attribute ``model.checkpointing``.
    """

    def __init__(self, cfg: UNetConfig, *, checkpointing: bool = False):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.checkpointing = checkpointing
        base, g = cfg.base_channels, cfg.groups
        emb_dim = 4 * base
        self.time_embed = TimeEmbedding(base, emb_dim)
        conditional = cfg.num_classes > 0
        self.label_embed = (
            LabelEmbedding(cfg.num_classes, emb_dim)
            if conditional and "add" in cfg.conditioning
            else None
        )
        cond_dim = emb_dim
        self.label_tokens = (
            LabelTokens(cfg.num_classes, cond_dim, cfg.num_cond_tokens)
            if conditional and "cross" in cfg.conditioning
            else None
        )
        # Text: pooled -> MLP -> added to emb; tokens -> LayerNorm -> Linear -> cross-attention.
        d = cfg.text_dim
        text_add = d > 0 and "add" in cfg.text_conditioning
        text_cross = d > 0 and "cross" in cfg.text_conditioning
        attn_pool = text_add and cfg.text_pooling == "attention"
        d_pool = cond_dim if attn_pool else d
        self.text_pool = TokenPool(cond_dim) if attn_pool else None
        self.text_pooled = (
            nn.Sequential(nn.Linear(d_pool, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if text_add
            else None
        )
        self.text_null_pooled = nn.Parameter(torch.randn(emb_dim) * 0.02) if text_add else None
        self.text_tokens = (
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cond_dim)) if text_cross else None
        )
        self.text_null_token = nn.Parameter(torch.randn(1, cond_dim) * 0.02) if text_cross else None
        self.text_refiner = (
            TokenRefiner(cond_dim, cfg.num_heads, cfg.text_refiner_layers)
            if text_cross and cfg.text_refiner_layers > 0
            else None
        )
        pos = cfg.cross_attention_positions
        use_cross = cfg.uses_cross
        lay = text_cross and cfg.text_layout
        lay_dim = cfg.text_layout_dim or cond_dim
        self.text_layout = TextLayout(cond_dim, cfg.num_heads, lay_dim) if lay else None

        def level(c_in: int, c_out: int, size: int) -> _Level:
            at = size in cfg.attention_resolutions
            cross = use_cross and size in cfg.cross_resolutions
            return _Level(
                ResBlock(c_in, c_out, emb_dim, g, cfg.dropout, cfg.scale_shift),
                SelfAttention(c_out, cfg.num_heads, g) if at else None,
                CrossAttention(c_out, cond_dim, cfg.num_heads, g, pos) if cross else None,
                LayoutInjection(lay_dim, c_out) if lay else None,
            )

        sizes = cfg.level_sizes()
        c_io = cfg.in_channels * cfg.patch_size**2  # channels after space-to-depth
        c_final = (cfg.out_channels or cfg.in_channels) * cfg.patch_size**2  # conv_out
        self.conv_in = nn.Conv2d(c_io + (2 if cfg.coord_channels else 0), base, 3, padding=1)
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
        self.mid_cross = CrossAttention(ch, cond_dim, cfg.num_heads, g, pos) if use_cross else None
        self.mid2 = ResBlock(ch, ch, emb_dim, g, cfg.dropout, cfg.scale_shift)
        self.mid_layout = LayoutInjection(lay_dim, ch) if lay else None
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(level(ch + skips.pop(), base * m, sizes[i]))
                ch = base * m
            if i > 0:
                self.up.append(Upsample(ch))
        self.out = nn.Sequential(
            nn.GroupNorm(g, ch), nn.SiLU(), zero_init(nn.Conv2d(ch, c_final, 3, padding=1))
        )

    def forward(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, text: TextCondition | None = None
    ) -> Tensor:
        """(B, C, H, W), (B,) long, (B,) long | None, text | None -> (B, C, H, W).

        ``t``: timestep indices in [0, T). ``y``: class labels, < 0 (``NULL_LABEL``) for the
        null class; ``None`` on a conditional model is the null class for every sample, and is
        ignored by an unconditional one. ``text``: (tokens (B, L, text_dim), mask (B, L) bool,
        pooled (B, text_dim)) on a model with ``text_dim > 0``, a row with its mask all False
        (or ``text = None``: every row) being the null condition; passing text to a model
        without text conditioning is a ValueError. Works in any memory format and under
        autocast; the output is returned as computed (bf16 under bf16 autocast), the caller casts.
        """
        emb = self.time_embed(t)  # (B, 4 * base)
        tokens = None
        if self.cfg.num_classes > 0:
            if y is None:  # unconditional call of a conditional model: the null class
                y = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
            if self.label_embed is not None:
                emb = emb + self.label_embed(y)
            if self.label_tokens is not None:
                tokens = self.label_tokens(y)  # (B, L, D)
        mask = None
        if self.cfg.text_dim > 0:
            emb, tokens, mask = self._text(x, emb, tokens, text)
        elif text is not None:
            raise ValueError("text given to a U-Net without text conditioning (model.text_dim = 0)")
        p = self.cfg.patch_size
        h = F.pixel_unshuffle(x, p) if p > 1 else x
        lay = None
        if self.text_layout is not None and tokens is not None and mask is not None:
            lay = self.text_layout(tokens, mask, (h.shape[-2], h.shape[-1]))  # (B, D, H/p, W/p)
        if self.cfg.coord_channels:
            h = torch.cat([h, _coords(h)], dim=1)
        h = self.conv_in(h)
        ckpt = self.checkpointing and self.training and torch.is_grad_enabled()
        hs = [h]
        for mod in self.down:
            if isinstance(mod, Downsample):
                h = mod(h)
            elif ckpt:
                h = checkpoint(mod, h, emb, tokens, mask, lay, use_reentrant=False)
            else:
                h = mod(h, emb, tokens, mask, lay)
            hs.append(h)
        if ckpt:
            h = checkpoint(self._middle, h, emb, tokens, mask, lay, use_reentrant=False)
        else:
            h = self._middle(h, emb, tokens, mask, lay)
        for mod in self.up:
            if isinstance(mod, Upsample):
                h = mod(h)
            elif ckpt:  # the concatenation inside: its output is not kept either
                h = checkpoint(
                    _cat_level, mod, h, hs.pop(), emb, tokens, mask, lay, use_reentrant=False
                )
            else:
                h = _cat_level(mod, h, hs.pop(), emb, tokens, mask, lay)
        norm, _, conv = self.out  # (GroupNorm, SiLU, conv): kept as modules for the state dict
        assert isinstance(norm, nn.GroupNorm)
        out = conv(group_norm_act(norm, h))
        return F.pixel_shuffle(out, p) if p > 1 else out

    def _text(
        self, x: Tensor, emb: Tensor, label_tokens: Tensor | None, text: TextCondition | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Join the text condition: (emb, cross-attention tokens, their mask); module doc."""
        b, d = x.shape[0], self.cfg.text_dim
        if text is None:  # the null condition for every row
            text = (
                x.new_zeros(b, 1, d),
                torch.zeros(b, 1, dtype=torch.bool, device=x.device),
                x.new_zeros(b, d),
            )
        tok, mask, pooled = text
        if tok.ndim != 3 or tok.shape[0] != b or tok.shape[2] != d:
            raise ValueError(
                f"text tokens must be ({b}, L, {d}) for this U-Net, got {tuple(tok.shape)}"
            )
        if tuple(mask.shape) != tuple(tok.shape[:2]) or tuple(pooled.shape) != (b, d):
            raise ValueError(
                f"text mask must be {tuple(tok.shape[:2])} and pooled ({b}, {d}), got "
                f"{tuple(mask.shape)} and {tuple(pooled.shape)}"
            )
        tok, pooled = tok.to(x.device, torch.float32), pooled.to(x.device, torch.float32)
        mask = mask.to(device=x.device, dtype=torch.bool)
        null = ~mask.any(dim=1)  # (B,) rows without a real token: the null condition
        ctx = self.text_context(tok, mask) if self.text_tokens is not None else None
        if self.text_pooled is not None:
            assert self.text_null_pooled is not None
            if self.text_pool is not None:
                assert ctx is not None
                pooled = self.text_pool(ctx, mask)
            p = self.text_pooled(pooled)  # (B, 4 * base)
            emb = emb + torch.where(null[:, None], self.text_null_pooled.to(p.dtype), p)
        if ctx is None:
            return emb, label_tokens, None
        assert self.text_null_token is not None
        null_tok = self.text_null_token.to(ctx.dtype).expand(b, 1, -1)  # (B, 1, cond_dim)
        ctx = torch.cat([null_tok, ctx], dim=1)  # (B, 1 + L, cond_dim)
        ctx_mask = torch.cat([null[:, None], mask], dim=1)  # null rows see only the null token
        if label_tokens is not None:  # labels and text together: labels' tokens always seen
            ones = torch.ones(b, label_tokens.shape[1], dtype=torch.bool, device=x.device)
            ctx = torch.cat([label_tokens.to(ctx.dtype), ctx], dim=1)
            ctx_mask = torch.cat([ones, ctx_mask], dim=1)
        return emb, ctx, ctx_mask

    def text_context(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """The text tokens as cross-attention sees them: LN -> Linear to the conditioning
        width, then the refiner if any; (B, L, text_dim), (B, L) -> (B, L, cond_dim). Also
        what ``text_pool`` pools and what ``ddpmkit.training.text_align`` trains."""
        assert self.text_tokens is not None
        ctx = self.text_tokens(tokens)
        if self.text_refiner is not None:
            ctx = self.text_refiner(ctx, mask)
        return ctx  # type: ignore[no-any-return]

    def _middle(
        self,
        h: Tensor,
        emb: Tensor,
        tokens: Tensor | None,
        mask: Tensor | None = None,
        layout: Tensor | None = None,
    ) -> Tensor:
        h = self.mid1(h, emb)
        if self.mid_layout is not None and layout is not None:
            h = self.mid_layout(h, layout)
        h = self.mid_attn(h)
        if self.mid_cross is not None and tokens is not None:
            h = self.mid_cross(h, tokens, mask)
        return self.mid2(h, emb)


def _cat_level(
    mod: nn.Module,
    h: Tensor,
    skip: Tensor,
    emb: Tensor,
    tokens: Tensor | None,
    mask: Tensor | None = None,
    layout: Tensor | None = None,
) -> Tensor:
    return mod(torch.cat([h, skip], dim=1), emb, tokens, mask, layout)


def _coords(h: Tensor) -> Tensor:
    """(B, 2, H, W): each pixel's row and column, linearly in [-1, 1], in h's dtype and format."""
    b, _, hh, ww = h.shape
    rows = torch.linspace(-1.0, 1.0, hh, device=h.device, dtype=h.dtype).view(1, 1, hh, 1)
    cols = torch.linspace(-1.0, 1.0, ww, device=h.device, dtype=h.dtype).view(1, 1, 1, ww)
    return torch.cat([rows.expand(b, 1, hh, ww), cols.expand(b, 1, hh, ww)], dim=1)
