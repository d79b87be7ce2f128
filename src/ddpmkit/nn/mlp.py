"""Noise-prediction MLPs for 2-D toy data (seed 002).

``StepEmbedMLP`` is seed 002's network: Linear layers with a learned per-step embedding
(``nn.Embedding(T, hidden)``) *added* after each hidden Linear, before the ReLU.
``SinusoidalMLP`` replaces the lookup table with a sinusoidal embedding + MLP, so it does not
depend on T and generalises between neighbouring steps.

Both follow the model contract ``model(x_t, t) -> eps`` with t a LongTensor of indices in [0, T);
``out_dim`` (default: data_dim) widens the output, e.g. 2 data_dim for learned variances.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ddpmkit.nn.embeddings import sinusoidal_embedding

__all__ = ["SinusoidalMLP", "StepEmbedMLP"]


class StepEmbedMLP(nn.Module):
    """Seed 002's MLP: x -> [Linear, + embed_i(t), ReLU] x depth -> Linear."""

    def __init__(
        self,
        num_steps: int,
        data_dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        out_dim: int | None = None,
    ):
        super().__init__()
        dims = [data_dim] + [hidden] * depth
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.step_embeddings = nn.ModuleList(nn.Embedding(num_steps, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, out_dim or data_dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """(B, D), (B,) long -> (B, out_dim)."""
        h = x
        for lin, emb in zip(self.linears, self.step_embeddings):
            h = torch.relu(lin(h) + emb(t))
        return self.out(h)


class SinusoidalMLP(nn.Module):
    """MLP with a sinusoidal time embedding projected and added after each hidden layer (SiLU)."""

    def __init__(
        self,
        data_dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        out_dim: int | None = None,
    ):
        super().__init__()
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        dims = [data_dim] + [hidden] * depth
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.time_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, out_dim or data_dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """(B, D), (B,) long -> (B, out_dim)."""
        temb = self.time_mlp(sinusoidal_embedding(t, self.emb_dim))
        h = x
        for lin, proj in zip(self.linears, self.time_proj):
            h = nn.functional.silu(lin(h) + proj(temb))
        return self.out(h)
