"""2-D toy datasets, seeded pure functions returning float32 tensors of shape (N, 2).

``s_curve`` is seed 002's dataset: ``sklearn.datasets.make_s_curve(n, noise=0.1)``, columns 0 and
2, divided by 10 (so it lies in about [-0.1, 0.1] x [-0.2, 0.2]). The others are scaled to roughly
unit spread, the scale DDPM's N(0, I) prior suits best.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "TOY_DATASETS",
    "TOY_NAMES",
    "ToyName",
    "eight_gaussians",
    "make_toy",
    "s_curve",
    "swiss_roll",
    "two_moons",
]


def s_curve(n: int, seed: int = 0) -> Tensor:
    """Seed 002's S-curve: make_s_curve(n, noise=0.1)[:, [0, 2]] / 10."""
    from sklearn.datasets import make_s_curve

    x, _ = make_s_curve(n, noise=0.1, random_state=seed)
    return torch.from_numpy(x[:, [0, 2]] / 10.0).float()


def swiss_roll(n: int, seed: int = 0) -> Tensor:
    """2-D swiss roll: make_swiss_roll(n, noise=0.5)[:, [0, 2]] / 5 (spread about 2)."""
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(n, noise=0.5, random_state=seed)
    return torch.from_numpy(x[:, [0, 2]] / 5.0).float()


def two_moons(n: int, seed: int = 0) -> Tensor:
    """Two moons: make_moons(n, noise=0.05), centred and scaled to unit-ish spread."""
    from sklearn.datasets import make_moons

    x, _ = make_moons(n, noise=0.05, random_state=seed)
    x = (x - np.array([0.5, 0.25])) / np.array([0.87, 0.5])
    return torch.from_numpy(x).float()


def eight_gaussians(n: int, seed: int = 0, radius: float = 2.0, std: float = 0.1) -> Tensor:
    """Eight Gaussians of std ``std`` centred on a ring of radius ``radius``, equal weights."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.double() * (2 * math.pi / 8)
    centres = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) * radius
    return (centres + std * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


# the 2-D toys: the one list of their names (config, build and evaluation import it)
ToyName = Literal["s_curve", "swiss_roll", "moons", "eight_gaussians"]
TOY_NAMES: tuple[ToyName, ...] = get_args(ToyName)

TOY_DATASETS: dict[ToyName, Callable[..., Tensor]] = {
    "s_curve": s_curve,
    "swiss_roll": swiss_roll,
    "moons": two_moons,
    "eight_gaussians": eight_gaussians,
}


def make_toy(name: str, n: int, seed: int = 0) -> Tensor:
    """The named toy dataset (one of ``TOY_DATASETS``), shape (n, 2), float32."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; expected one of {sorted(TOY_DATASETS)}")
    if n < 1:
        raise ValueError(f"number of points must be >= 1, got {n}")
    return TOY_DATASETS[name](n, seed=seed)
