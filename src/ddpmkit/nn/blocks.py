"""U-Net building blocks: ResBlock with time conditioning, self- and cross-attention, resampling.

Following Ho et al. 2020 (Appendix B) and improved-diffusion (scale-shift norm): GroupNorm,
SiLU, 3x3 convs, zero-initialised last layers so every residual block starts as the identity.
Attention uses ``torch.nn.functional.scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CrossAttention", "Downsample", "ResBlock", "SelfAttention", "Upsample", "zero_init"]


def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (residual branches start as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """x + F(x, emb): GN-SiLU-conv3, time injection, GN-SiLU-dropout-conv3 (zero init).

    With ``scale_shift`` the embedding gives (scale, shift) applied after the second GroupNorm,
    h = GN(h) * (1 + scale) + shift (improved-diffusion's ``use_scale_shift_norm``); otherwise it
    is added to h as a per-channel bias (Ho et al.).
    """

    def __init__(
        self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float, scale_shift: bool
    ):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out if scale_shift else c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(F.silu(emb))[:, :, None, None]  # (B, C or 2C, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual, zero-initialised output."""

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {channels}")
        self.heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class CrossAttention(nn.Module):
    """Pixels (queries) attend to condition tokens (keys/values), residual, zero-init output."""

    def __init__(self, channels: int, cond_dim: int, num_heads: int, groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {channels}")
        self.heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(cond_dim, 2 * channels)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        q = self.q(self.norm(x)).reshape(b, self.heads, d, h * w).transpose(-1, -2)  # (B,h,HW,d)
        kv = self.kv(tokens).to(q.dtype)  # (B, L, 2C)
        k, v = kv.reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # 2 x (B, h, L, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, HW, d)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
