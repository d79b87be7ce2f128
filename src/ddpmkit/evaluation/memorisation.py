"""Memorisation check: how close is each generated sample to its nearest training image?

A model that copies its training set produces samples at (near) zero distance from some
training image; a model that generalises produces samples about as far from the training set as
unseen test images are. :func:`nearest_neighbours` is the exact Euclidean nearest-neighbour
search behind both numbers, in memory-bounded blocks (60,000 training images x 1,000 samples
never materialise more than ``block x block`` distances at a time).

Two spaces are used by ``ddpm eval``:

* pixels: L2 distance between the images with pixel values scaled to [0, 1], i.e.
  ``||a / 255 - b / 255||_2``. Computed on the integer pixel values in float64, where every
  product and sum is exact, so an exact copy has distance exactly 0;
* features: L2 distance between the feature vectors of the evaluation's feature extractor
  (the dataset classifier's penultimate layer, or the generic random-feature network).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Memorisation", "check_memorisation", "nearest_neighbours", "summarise_distances"]


def _flat(x: Tensor, name: str) -> Tensor:
    if x.ndim < 1:
        raise ValueError(f"{name} must have a leading batch dimension, got a scalar")
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


@torch.no_grad()
def nearest_neighbours(
    samples: Tensor,
    train: Tensor,
    *,
    block: int = 2048,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Euclidean nearest neighbour in ``train`` (M, ...) of every row of ``samples`` (N, ...).

    Returns ``(dist, index)``: float64 (N,) distances ``min_j ||samples_i - train_j||_2`` and
    int64 (N,) indices into ``train`` (the smallest index among exact ties). Trailing dimensions
    are flattened; both inputs are cast to ``dtype`` one block at a time, so uint8 images stay
    uint8 in memory and at most ``block x block`` distances (plus two ``block x D`` slices) exist
    at once. Squared distances come from ``|a|^2 + |b|^2 - 2 a.b`` (clamped at 0); with
    integer-valued inputs (pixels) in float64 this is exact, so a copied sample has distance 0.
    """
    a = _flat(samples, "samples")
    b = _flat(train, "train")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"samples and train differ in size: {tuple(samples.shape[1:])} vs "
            f"{tuple(train.shape[1:])}"
        )
    if b.shape[0] == 0:
        raise ValueError("nearest_neighbours needs at least one training item")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    n = a.shape[0]
    best = torch.full((n,), float("inf"), dtype=torch.float64)
    best_idx = torch.zeros(n, dtype=torch.int64)
    for i in range(0, n, block):
        ai = a[i : i + block].to(dtype)
        a2 = ai.pow(2).sum(dim=1, keepdim=True)
        run_d = torch.full((ai.shape[0],), float("inf"), dtype=torch.float64)
        run_i = torch.zeros(ai.shape[0], dtype=torch.int64)
        for j in range(0, b.shape[0], block):
            bj = b[j : j + block].to(dtype=dtype, device=ai.device)
            d2 = (a2 + bj.pow(2).sum(dim=1)[None, :] - 2.0 * (ai @ bj.T)).clamp_min(0)
            vals, idx = d2.min(dim=1)
            vals = vals.double().cpu()
            better = vals < run_d  # strict: an earlier block keeps ties (smallest index)
            run_d = torch.where(better, vals, run_d)
            run_i = torch.where(better, idx.cpu() + j, run_i)
        best[i : i + ai.shape[0]] = run_d
        best_idx[i : i + ai.shape[0]] = run_i
    return best.sqrt(), best_idx


@dataclass
class Memorisation:
    """Nearest training image of every sample, in pixels and (optionally) in features."""

    pixel_dist: Tensor  # float64 (N,): L2 with pixels in [0, 1]
    pixel_index: Tensor  # int64 (N,): index into the training set
    feature_dist: Tensor | None  # float64 (N,): L2 between feature vectors
    feature_index: Tensor | None  # int64 (N,)

    def closest(self, k: int) -> Tensor:
        """Indices of the k samples closest (in pixels) to a training image, closest first."""
        k = min(k, int(self.pixel_dist.shape[0]))
        return torch.argsort(self.pixel_dist, stable=True)[:k]


def check_memorisation(
    samples_u8: Tensor,
    train_u8: Tensor,
    *,
    sample_features: Tensor | None = None,
    train_features: Tensor | None = None,
    block: int = 2048,
) -> Memorisation:
    """Nearest training image of every sample: uint8 images (N, C, H, W) and (M, C, H, W).

    Pixel distances are ``||a / 255 - b / 255||_2`` (exact on the integer values, then divided
    by 255). With both feature tensors (N, D) and (M, D), also the nearest neighbour in features.
    """
    if samples_u8.dtype != torch.uint8 or train_u8.dtype != torch.uint8:
        raise ValueError(
            f"check_memorisation expects uint8 images, got {samples_u8.dtype}, {train_u8.dtype}"
        )
    d, i = nearest_neighbours(samples_u8, train_u8, block=block)
    fd: Tensor | None = None
    fi: Tensor | None = None
    if sample_features is not None and train_features is not None:
        fd, fi = nearest_neighbours(sample_features, train_features, block=block)
    return Memorisation(d / 255.0, i, fd, fi)


def summarise_distances(dist: Tensor) -> dict[str, Any]:
    """min, 1st percentile, median, mean and max of a (N,) distance vector, as floats."""
    d = dist.double()
    return {
        "min": float(d.min()),
        "p01": float(torch.quantile(d, 0.01)),
        "median": float(torch.quantile(d, 0.5)),
        "mean": float(d.mean()),
        "max": float(d.max()),
    }
