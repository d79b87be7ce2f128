"""U-Net building blocks: ResBlock with time conditioning, self- and cross-attention, resampling.

Following Ho et al. 2020 (Appendix B) and improved-diffusion (scale-shift norm): GroupNorm,
SiLU, 3x3 convs, zero-initialised last layers so every residual block starts as the identity.

Attention is ``softmax(q k^T / sqrt(d)) v`` (Vaswani et al. 2017, Eq. 1) through
``torch.nn.functional.scaled_dot_product_attention``, with q, k, v laid out (B, heads, L, d),
last dimension contiguous, *whatever the memory format of the feature map*: SDPA picks its kernel
from the strides, and a layout-dependent choice would make NCHW and channels_last different
programs (see :func:`attention` for the one exception made on purpose, by dtype and sequence
length: bf16 on a CPU at up to 256 positions runs as two matmuls and a softmax, measured 2-6x
faster there). Outputs are returned in the memory format of the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpmkit.nn.embeddings import sinusoidal_embedding
from ddpmkit.nn.groupnorm import group_norm_act

__all__ = [
    "CrossAttention",
    "Downsample",
    "TokenRefiner",
    "PLAIN_ATTENTION_MAX_LEN",
    "ResBlock",
    "SelfAttention",
    "Upsample",
    "attention",
    "is_channels_last",
    "merge_heads",
    "plain_attention",
    "position_grid",
    "split_heads",
    "zero_init",
]


def is_channels_last(x: Tensor) -> bool:
    """True if the 4-D ``x`` is stored NHWC (and not also NCHW-contiguous, as 1x1 maps are)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


# Longest sequence (max of query and key lengths) for which bf16 attention on a CPU runs as two
# matmuls and a softmax instead of SDPA; see :func:`attention`.
PLAIN_ATTENTION_MAX_LEN = 256


def plain_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v as two batched matmuls and one softmax (Vaswani et al. 2017,
    eq. 1); the L x L weights are materialised. Same shapes and ``mask`` as :func:`attention`."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    if mask is not None:  # masked keys get weight exp(-inf) = 0 exactly
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.matmul(scores.softmax(-1), v)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Multi-head attention, (B, heads, Lq, d), (B, heads, Lk, d) x2 -> (B, heads, Lq, d).

    ``mask``: optional bool (B, Lk), True for the keys each query may attend to (padding of
    text tokens is False). Every row needs at least one True (a fully masked row is 0/0, NaN);
    the U-Net guarantees it with its learned null token.

    SDPA chooses the kernel, except for bf16 on a CPU with sequences (Lq and Lk) of at most
    ``PLAIN_ATTENTION_MAX_LEN`` = 256, which run as :func:`plain_attention`. Measured with torch
    2.13 on a 2-core AMD EPYC (Zen 4, AVX-512 BF16), one thread, 4 heads of 32, ms per call
    (``benchmarks/bench_attention.py``; ``benchmarks/results/attention_1thread.json``):

    ====================  ============================  ==========================
    L (batch)             forward + backward            forward only (sampling)
                          fused / math SDPA / plain     fused / math / plain
    ====================  ============================  ==========================
    49 (128, 7x7 maps)    83.2 / 30.8 / **12.1**        6.3 / 12.4 / **4.5**
    64 (128)              81.0 / 42.6 / **18.9**        8.1 / 20.2 / **4.8**
    196 (32)              65.8 / 76.6 / **28.5**        13.0 / 30.4 / **10.8**
    256 (32, 16x16 maps)  113.2 / 156.7 / **42.3**      23.0 / 69.6 / **15.0**
    1024 (8)              **233.2** / 644.1 / 308.8     **69.5** / 351.2 / 134.4
    ====================  ============================  ==========================

    In fp32 the fused kernel was as fast or faster from L = 64 on (plain 18.8 vs fused 20.6 at
    L = 49 in training, 131.3 vs 62.6 at 256), so fp32 and other devices keep SDPA's choice.
    The two paths compute the same function (tested against a float64 reference); only speed
    differs.
    """
    short = max(q.shape[-2], k.shape[-2]) <= PLAIN_ATTENTION_MAX_LEN
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and short:
        return plain_attention(q, k, v, mask)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])


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
        h = self.conv1(group_norm_act(self.norm1, x))
        e = self.emb(F.silu(emb))[:, :, None, None]  # (B, C or 2C, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = group_norm_act(self.norm2, h, scale, shift)
        else:
            h = group_norm_act(self.norm2, h + e)
        h = self.conv2(self.dropout(h))
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
        h = group_norm_act(self.norm, x, act=False)
        qkv = split_heads(self.qkv(h), self.head_dim)  # (B, 3 * heads, HW, d)
        q, k, v = qkv.chunk(3, dim=1)
        return x + self.proj(merge_heads(attention(q, k, v), x))


def position_grid(channels: int, h: int, w: int, device: torch.device | None = None) -> Tensor:
    """(1, channels, h, w) fixed 2-D sin-cos position code (MAE / DiT): the first half of the
    channels encodes the row, the second half the column, each the Transformer encoding of its
    index (:func:`~ddpmkit.nn.embeddings.sinusoidal_embedding`); ``channels`` divisible by 4."""
    rows = sinusoidal_embedding(torch.arange(h, device=device), channels // 2)  # (h, C/2)
    cols = sinusoidal_embedding(torch.arange(w, device=device), channels // 2)  # (w, C/2)
    grid = torch.cat(
        [rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)], dim=-1
    )  # (h, w, C)
    return grid.permute(2, 0, 1)[None]


class CrossAttention(nn.Module):
    """x + proj(MHA(q = GN(x) [+ P], k = v = tokens)); pixels attend to condition tokens (B, L, D).

    ``mask`` (B, L) bool, True for real tokens: padding (False) takes no part, so appending
    padding tokens of any value leaves the output unchanged. Each row needs one real token.
    With ``positions`` the queries are computed from GN(x) + P, P the fixed 2-D sin-cos code of
    each pixel's (row, column) (:func:`position_grid`): the query then says *where* the pixel is,
    so a head can fetch "the garment named on the left" for the left half. Without it a pixel
    knows its place only through the convolutions' zero padding.
    """

    def __init__(
        self, channels: int, cond_dim: int, num_heads: int, groups: int, positions: bool = False
    ):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {channels}")
        if positions and channels % 4:
            raise ValueError(f"query positions need a channel count divisible by 4, got {channels}")
        self.heads, self.head_dim = num_heads, channels // num_heads
        self.positions = positions
        self._grid: Tensor | None = None  # position_grid of the last map size, device, dtype
        self.norm = nn.GroupNorm(groups, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(cond_dim, 2 * channels)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        h = group_norm_act(self.norm, x, act=False)
        if self.positions:
            h = h + self._position_grid(h)
        q = split_heads(self.q(h), self.head_dim)  # (B, heads, HW, d)
        b, length, _ = tokens.shape
        kv = self.kv(tokens).to(q.dtype)  # (B, L, 2C); same dtype as q outside autocast too
        k, v = kv.reshape(b, length, 2 * self.heads, self.head_dim).transpose(1, 2).chunk(2, 1)
        return x + self.proj(merge_heads(attention(q, k, v, mask), x))

    def _position_grid(self, h: Tensor) -> Tensor:
        """:func:`position_grid` for h's size, device and dtype, built once, not every step."""
        _, c, hh, ww = h.shape
        g = self._grid
        if g is None or g.shape[-2:] != (hh, ww) or g.device != h.device or g.dtype != h.dtype:
            g = self._grid = position_grid(c, hh, ww, h.device).to(h.dtype)
        return g


def attendable(mask: Tensor) -> Tensor:
    """(B, L) bool keys -> the keys attention may use: a row without a real token attends to
    all of its tokens (finite, never 0/0; the caller replaces such a row by its null)."""
    return mask | ~mask.any(dim=1, keepdim=True)


class _RefinerBlock(nn.Module):
    """t + proj(MHA(LN(t))), then t + MLP(LN(t)); both last layers zero-initialised."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.heads, self.dim = num_heads, dim
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = zero_init(nn.Linear(dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), zero_init(nn.Linear(2 * dim, dim))
        )

    def forward(self, t: Tensor, keys: Tensor) -> Tensor:
        b, length, _ = t.shape
        qkv = self.qkv(self.norm1(t))  # (B, L, 3 dim)
        d = self.dim // self.heads
        q, k, v = qkv.view(b, length, 3 * self.heads, d).transpose(1, 2).chunk(3, dim=1)
        a = attention(q, k, v, keys).transpose(1, 2).reshape(b, length, self.dim)
        t = t + self.proj(a)
        return t + self.mlp(self.norm2(t))


class TokenRefiner(nn.Module):
    """A small trainable transformer over the frozen encoder's (projected) tokens.

    ``layers`` pre-LayerNorm blocks t + MHA(LN(t)), t + MLP(LN(t)) (Vaswani et al. 2017 with
    the pre-norm of Xiong et al. 2020), the input first given the Transformer encoding of each
    token's index (:func:`~ddpmkit.nn.embeddings.sinusoidal_embedding`); the last layer of
    every sub-block is zero-initialised, so the refiner starts as the identity (plus
    positions). Padding keys are masked out, so appending padding changes no real token's
    output. The idea (GLIDE trains its text transformer with the image model): a frozen
    sentence encoder's contextual tokens carry word order only weakly for *which garment is
    where*, and a trainable stage can re-read them with the image loss. On the fashion_text
    preset's 30-minute budget it did not improve placement (docs/tour.md, section 9;
    ``benchmarks/text_binding.py`` measures both).
    """

    def __init__(self, dim: int, num_heads: int, layers: int):
        super().__init__()
        if dim % num_heads or dim % 2:
            raise ValueError(f"num_heads={num_heads} must divide the even token width {dim}")
        self.dim = dim
        self.blocks = nn.ModuleList(_RefinerBlock(dim, num_heads) for _ in range(layers))

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """(B, L, dim), (B, L) bool (True = real token) -> (B, L, dim). A row without a real
        token is computed as if all its tokens were real (finite; the caller ignores it)."""
        keys = attendable(mask)
        pos = sinusoidal_embedding(torch.arange(tokens.shape[1], device=tokens.device), self.dim)
        t = tokens + pos.to(tokens.dtype)[None]
        for blk in self.blocks:
            t = blk(t, keys)
        return t


class TokenPool(nn.Module):
    """Attention pooling of tokens into one vector: a learned query q attends to the tokens,
    ``out = W_o sum_l softmax_l(q . W_k t_l / sqrt(dim)) W_v t_l`` over the real tokens only
    (CLIP's attention pool, one head, for text). Unlike the encoder's mean pool it can weight
    tokens by their content and position, so a text side trained for it
    (``ddpmkit.training.text_align``) can put *which garment is where* into one vector."""

    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) * dim**-0.5)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """(B, L, dim), (B, L) bool (True = real) -> (B, dim); a row without a real token
        pools over all its tokens (finite; the caller replaces it with its null)."""
        k, v = self.kv(tokens)[:, None].chunk(2, dim=-1)  # (B, 1 head, L, dim) each
        q = self.query.to(k.dtype).expand(k.shape[0], 1, 1, -1)  # (B, 1, 1 query, dim)
        pooled = attention(q, k, v, attendable(mask))[:, 0, 0]  # (B, dim)
        return self.out(pooled)  # type: ignore[no-any-return]


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
