"""Exact noise predictors (no training) for Gaussian and Gaussian-mixture data.

They follow the sampler contract ``model(x_t, t[, y]) -> eps`` and let samplers be tested and
compared independently of any network. With x_t = a x_0 + b eps, a = sqrt(abar_t),
b = sqrt(1 - abar_t):

* x_0 ~ N(mu, diag(s^2)): x_t ~ N(a mu, a^2 s^2 + b^2) and, by Gaussian conditioning,
  E[eps | x_t] = Cov(eps, x_t) / Var(x_t) (x_t - a mu) = b (x_t - a mu) / (a^2 s^2 + b^2).
* x_0 ~ sum_k w_k N(m_k, s^2 I): each component gives the Gaussian answer above and the
  posterior responsibilities r_k(x_t) proportional to w_k N(x_t; a m_k, (a^2 s^2 + b^2) I), so
  E[eps | x_t] = sum_k r_k(x_t) b (x_t - a m_k) / (a^2 s^2 + b^2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ddpmkit.schedule import NoiseSchedule

__all__ = ["GaussianOracle", "MixtureOracle", "mixture_sample", "mode_stats", "ring_means"]


class GaussianOracle:
    """E[eps | x_t] for x_0 ~ N(mean, diag(std^2)); float64 inside, float32 out."""

    def __init__(self, schedule: NoiseSchedule, mean: Tensor | float, std: Tensor | float):
        self.abar = schedule.alphas_bar.double()
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64)

    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        ab = self.abar.to(x_t.device)[t].reshape(-1, *([1] * (x_t.ndim - 1)))
        a, b2 = ab.sqrt(), 1 - ab
        var = ab * self.std.to(x_t.device) ** 2 + b2
        return (b2.sqrt() * (x_t.double() - a * self.mean.to(x_t.device)) / var).float()


class MixtureOracle:
    """E[eps | x_t] for an isotropic Gaussian mixture: means (K, D), one std, weights (K,)."""

    def __init__(
        self, schedule: NoiseSchedule, means: Tensor, std: float, weights: Tensor | None = None
    ):
        self.abar = schedule.alphas_bar.double()
        self.means = means.double()  # (K, D)
        self.std = float(std)
        k = means.shape[0]
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else weights.double()
        self.log_w = (w / w.sum()).log()

    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        x = x_t.double().reshape(x_t.shape[0], -1)  # (B, D)
        ab = self.abar.to(x.device)[t][:, None]  # (B, 1)
        a, b2 = ab.sqrt(), 1 - ab
        var = ab * self.std**2 + b2  # (B, 1)
        centred = x[:, None, :] - a[:, :, None] * self.means[None]  # (B, K, D)
        logits = self.log_w[None] - 0.5 * centred.pow(2).sum(-1) / var  # (B, K)
        r = torch.softmax(logits, dim=1)
        eps_k = b2.sqrt()[:, :, None] * centred / var[:, :, None]  # (B, K, D)
        return (r[:, :, None] * eps_k).sum(1).reshape(x_t.shape).float()


def ring_means(k: int = 8, radius: float = 2.0) -> Tensor:
    """k means evenly spaced on a circle of ``radius``, shape (k, 2)."""
    ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    return torch.stack([ang.cos(), ang.sin()], dim=1) * radius


def mixture_sample(
    n: int,
    means: Tensor,
    std: float,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """n draws (float32) from the isotropic mixture."""
    k = means.shape[0]
    w = torch.full((k,), 1.0 / k) if weights is None else weights.float()
    idx = torch.multinomial(w, n, replacement=True, generator=generator)
    noise = torch.randn(n, means.shape[1], generator=generator, dtype=torch.float64)
    return (means.double()[idx] + std * noise).float()


def mode_stats(samples: Tensor, means: Tensor, std: float) -> dict[str, float]:
    """How well samples reproduce the modes of an isotropic mixture.

    share_in_mode: fraction of samples within the 99.9% radius of their nearest mode (a sample
    from the mixture itself scores 0.999); within_mode_std: root-mean-square distance of the
    in-mode samples to their mean per dimension, averaged over modes, divided by the true std
    (1.0 is right; < 1: modes too narrow, > 1: too wide); modes_hit: modes with > 10 samples.
    """
    x = samples.double()
    d = torch.cdist(x, means.double())  # (N, K)
    dist, k = d.min(dim=1)
    dim = x.shape[1]
    # For an isotropic Gaussian in D dims, |x - m| / std is chi-distributed with D dof; use the
    # 99.9% radius of chi_2 (sqrt(-2 ln 0.001) = 3.72) for D = 2, generic sqrt(D) + 3 otherwise.
    r = std * (math.sqrt(-2 * math.log(1e-3)) if dim == 2 else math.sqrt(dim) + 3)
    inside = dist <= r
    spreads = []
    for j in range(means.shape[0]):
        sel = x[(k == j) & inside]
        if sel.shape[0] > 10:
            spreads.append(float((sel - means[j].double()).pow(2).sum(1).mean().div(dim).sqrt()))
    return {
        "share_in_mode": float(inside.double().mean()),
        "within_mode_std": (sum(spreads) / len(spreads) / std) if spreads else float("nan"),
        "modes_hit": float(len(spreads)),
    }
