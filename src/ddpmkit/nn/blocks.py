"""U-Net building blocks: ResBlock with time conditioning, self- and cross-attention, resampling.

Following Ho et al. 2020 (Appendix B) and improved-diffusion (scale-shift norm): GroupNorm,
SiLU, 3x3 convs, zero-initialised last layers so every residual block starts as the identity.

Attention is ``softmax(q k^T / sqrt(d)) v`` (Vaswani et al. 2017, Eq. 1) through
``torch.nn.functional.scaled_dot_product_attention``, with q, k, v laid out (B, heads, L, d),
last dimension contiguous, *whatever the memory format of the feature map*: SDPA picks its kernel
from the strides, and a layout-dependent choice would make NCHW and channels_last different
programs (see :func:`attention` for the one exception made on purpose, by dtype and sequence
length). Outputs are returned in the memory format of the input.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # pragma: no cover - older torch: SDPA chooses on its own
    SDPBackend = None  # type: ignore[assignment, misc]
    sdpa_kernel = None  # type: ignore[assignment]

__all__ = [
    "CrossAttention",
    "Downsample",
    "MATH_KERNEL_MAX_LEN",
    "ResBlock",
    "SelfAttention",
    "Upsample",
    "attention",
    "is_channels_last",
    "merge_heads",
    "split_heads",
    "zero_init",
]


def is_channels_last(x: Tensor) -> bool:
    """True if the 4-D ``x`` is stored NHWC (and not also NCHW-contiguous, as 1x1 maps are)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


# Longest sequence (max of query and key lengths) for which CPU training in bf16/fp16 uses the
# math kernel; see :func:`attention`.
MATH_KERNEL_MAX_LEN = 128


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Multi-head attention, (B, heads, Lq, d), (B, heads, Lk, d) x2 -> (B, heads, Lq, d).

    SDPA chooses the kernel, except for CPU training in bf16/fp16 (autograd recording, input
    on CPU in reduced precision) on short sequences (Lq and Lk at most
    ``MATH_KERNEL_MAX_LEN`` = 128), where the math kernel is forced. Measured with torch 2.13,
    forward + backward in bf16, one thread: on a 2-core AMD EPYC (Zen 4, AVX-512 BF16) the fused
    CPU kernel took 2.8x the math kernel's time at L = 49 (the 7x7 maps of the Fashion-MNIST
    U-Net), 2.9x at L = 64, 1.8x at L = 100, but 0.6x at L = 196 and 256 and 0.25x at L = 1024
    (where the math kernel also materialises the L x L matrix); on the 2-core AVX-512/AMX Xeon
    this rule was first measured on, the fused bf16 backward at L = 49 was ~2x slower too. The
    fused kernel's forward alone (sampling) was 2-7x faster at every length, fp32 included,
    hence the narrow rule. The two compute the same function; only speed differs.
    """
    reduced = q.dtype in (torch.bfloat16, torch.float16)
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    short = max(q.shape[-2], k.shape[-2]) <= MATH_KERNEL_MAX_LEN
    use_math = q.device.type == "cpu" and reduced and training and short and sdpa_kernel is not None
    ctx = sdpa_kernel(SDPBackend.MATH) if use_math else contextlib.nullcontext()
    with ctx:
        return F.scaled_dot_product_attention(q, k, v)


def split_heads(t: Tensor, head_dim: int) -> Tensor:
    """(B, n * d, H, W) -> (B, n, H * W, d) with the last dimension contiguous.

    A view for an NHWC-stored map; one copy for NCHW.
    """
    b, nc, h, w = t.shape
    out = t.reshape(b, nc // head_dim, head_dim, h * w).transpose(-1, -2)
    return out if out.stride(-1) == 1 else out.contiguous()


def merge_heads(out: Tensor, like: Tensor) -> Tensor:
    """(B, heads, H * W, d) -> (B, heads * d, H, W), stored in the memory format of ``like``."""
    b, _, h, w = like.shape
    c = out.shape[1] * out.shape[3]
    if is_channels_last(like):
        return out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
    return out.transpose(-1, -2).reshape(b, c, h, w)


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
    """x + proj(MHA(GN(x))) over the H*W positions; proj zero-initialised (starts as identity)."""

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {channels}")
        self.head_dim = channels // num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        qkv = split_heads(self.qkv(self.norm(x)), self.head_dim)  # (B, 3 * heads, HW, d)
        q, k, v = qkv.chunk(3, dim=1)
        return x + self.proj(merge_heads(attention(q, k, v), x))


class CrossAttention(nn.Module):
    """x + proj(MHA(q = GN(x), k = v = tokens)); pixels attend to condition tokens (B, L, D)."""

    def __init__(self, channels: int, cond_dim: int, num_heads: int, groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {channels}")
        self.heads, self.head_dim = num_heads, channels // num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(cond_dim, 2 * channels)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        q = split_heads(self.q(self.norm(x)), self.head_dim)  # (B, heads, HW, d)
        b, length, _ = tokens.shape
        kv = self.kv(tokens).to(q.dtype)  # (B, L, 2C); same dtype as q outside autocast too
        k, v = kv.reshape(b, length, 2 * self.heads, self.head_dim).transpose(1, 2).chunk(2, 1)
        return x + self.proj(merge_heads(attention(q, k, v), x))


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
