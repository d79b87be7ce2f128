"""Embeddings of the timestep and of the class label.

* :func:`sinusoidal_embedding`: the Transformer position encoding applied to t (Vaswani et al.
  2017, Sec. 3.5; used for t by Ho et al. 2020, Appendix B), [cos | sin] halves.
* :class:`TimeEmbedding`: sinusoidal -> Linear -> SiLU -> Linear (seed 003).
* :class:`LabelEmbedding`: one vector per class plus a learned *null class* (index
  ``num_classes``) for classifier-free guidance; any negative label (``NULL_LABEL = -1``) maps to
  it.
* :class:`LabelTokens`: a label as a sequence of ``num_tokens`` condition tokens for
  cross-attention. With a single token the attention softmax is identically 1 and
  cross-attention degenerates to adding one vector per class (what seed 000's reference code
  does); several tokens give the block something to attend over, and are the interface text
  conditioning needs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "LabelEmbedding",
    "LabelTokens",
    "TimeEmbedding",
    "null_to_index",
    "sinusoidal_embedding",
]


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(B,) timesteps (long or float) -> (B, dim) float32: [cos(t w_i) | sin(t w_i)].

    w_i = max_period^(-i / half), i = 0 .. half - 1, half = dim // 2 (Vaswani et al. 2017,
    Sec. 3.5, with the halves concatenated rather than interleaved, as in Ho et al.'s and
    improved-diffusion's code). Odd ``dim`` is padded with one zero column. Computed in float32
    whatever the autocast state, so t = 998 and t = 999 stay distinct.
    """
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class TimeEmbedding(nn.Module):
    """t (B,) -> (B, out_dim) via sinusoidal(base_dim) -> Linear -> SiLU -> Linear."""

    def __init__(self, base_dim: int, out_dim: int):
        super().__init__()
        self.base_dim = base_dim
        self.mlp = nn.Sequential(
            nn.Linear(base_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, t: Tensor) -> Tensor:
        """(B,) timestep indices -> (B, out_dim)."""
        return self.mlp(sinusoidal_embedding(t, self.base_dim))


def null_to_index(y: Tensor, num_classes: int) -> Tensor:
    """Map every negative label (``NULL_LABEL = -1`` and any other) to the null index."""
    return torch.where(y < 0, torch.full_like(y, num_classes), y)


class LabelEmbedding(nn.Module):
    """y (B,) long -> (B, dim); every label < 0 gets the learned null-class embedding.

    Labels >= num_classes are the caller's error: they index out of range (an IndexError on
    CPU, a device-side assert on CUDA). They are not checked here because a data-dependent
    check would cost a host-device synchronisation on every call.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Tensor) -> Tensor:
        """(B,) labels -> (B, dim)."""
        return self.table(null_to_index(y, self.num_classes))


class LabelTokens(nn.Module):
    """y (B,) long -> (B, num_tokens, dim) condition tokens, with a learned position embedding.

    One row of a (num_classes + 1, num_tokens * dim) table per label, reshaped, plus a position
    embedding shared by all labels. Null handling and range as in :class:`LabelEmbedding`.
    """

    def __init__(self, num_classes: int, dim: int, num_tokens: int = 4):
        super().__init__()
        self.num_classes, self.dim, self.num_tokens = num_classes, dim, num_tokens
        self.table = nn.Embedding(num_classes + 1, num_tokens * dim)
        self.pos = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)

    def forward(self, y: Tensor) -> Tensor:
        """(B,) labels -> (B, num_tokens, dim)."""
        tok = self.table(null_to_index(y, self.num_classes))
        return tok.view(-1, self.num_tokens, self.dim) + self.pos
