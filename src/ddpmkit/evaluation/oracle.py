"""Exact noise predictors (no training) for Gaussian and Gaussian-mixture data.

They follow the sampler contract ``model(x_t, t[, y]) -> eps`` (t a LongTensor (B,) of indices in
[0, T); y ignored), take and return float32 and compute in float64, so samplers can be tested
and compared with no network error at all. With x_t = a x_0 + b eps, a = sqrt(abar_t),
b = sqrt(1 - abar_t), eps ~ N(0, I) independent of x_0:

* x_0 ~ N(mu, diag(s^2)): (x_t, eps) is jointly Gaussian, per coordinate
  Var(x_t) = a^2 s^2 + b^2, Cov(eps, x_t) = b, so by Gaussian conditioning
      E[eps | x_t] = Cov(eps, x_t) Var(x_t)^-1 (x_t - E x_t)
                   = b (x_t - a mu) / (a^2 s^2 + b^2)
                   = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar).
* x_0 ~ sum_k w_k N(m_k, s^2 I): given the component k, the Gaussian answer above holds with
  mu = m_k; the component given x_t has the posterior responsibilities
      r_k(x_t) = w_k N(x_t; a m_k, (a^2 s^2 + b^2) I) / sum_j w_j N(x_t; a m_j, (a^2 s^2 + b^2) I),
  so E[eps | x_t] = sum_k r_k(x_t) b (x_t - a m_k) / (a^2 s^2 + b^2)
  (equivalently -b grad log q(x_t), Tweedie's formula; the tests check both routes).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ddpmkit.schedule import NoiseSchedule

__all__ = [
    "GaussianOracle",
    "MixtureOracle",
    "chi_quantile",
    "mixture_sample",
    "mode_stats",
    "ring_means",
]


class GaussianOracle:
    """E[eps | x_t] for x_0 ~ N(mean, diag(std^2)) (see the module docstring).

    ``mean`` and ``std`` are scalars or tensors broadcasting against one sample (x_t[0]).
    """

    def __init__(self, schedule: NoiseSchedule, mean: Tensor | float, std: Tensor | float):
        self.abar = schedule.alphas_bar.double()
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64)
        if (self.std <= 0).any():
            raise ValueError("std must be positive")

    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        dev = x_t.device
        ab = self.abar.to(dev)[t.to(dev)].reshape(-1, *([1] * (x_t.ndim - 1)))
        var = ab * self.std.to(dev) ** 2 + (1 - ab)
        eps = (1 - ab).sqrt() * (x_t.double() - ab.sqrt() * self.mean.to(dev)) / var
        return eps.float()


class MixtureOracle:
    """E[eps | x_t] for an isotropic Gaussian mixture (see the module docstring).

    means (K, D) (samples x_t of shape (B, D), or (B, *S) with prod(S) = D), one ``std`` for
    every component and dimension, ``weights`` (K,) (normalised here; uniform if None).
    """

    def __init__(
        self, schedule: NoiseSchedule, means: Tensor, std: float, weights: Tensor | None = None
    ):
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        if std <= 0:
            raise ValueError("std must be positive")
        self.abar = schedule.alphas_bar.double()
        self.means = means.double()  # (K, D)
        self.std = float(std)
        k = means.shape[0]
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else weights.double()
        if w.shape != (k,) or (w < 0).any() or float(w.sum()) <= 0:
            raise ValueError("weights must be K non-negative numbers with a positive sum")
        self.log_w = (w / w.sum()).log()

    def responsibilities(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Posterior probabilities of the components given x_t, shape (B, K)."""
        return torch.softmax(self._logits_and_centred(x_t, t)[0], dim=1)

    def _logits_and_centred(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dev = x_t.device
        x = x_t.double().reshape(x_t.shape[0], -1)  # (B, D)
        ab = self.abar.to(dev)[t.to(dev)][:, None]  # (B, 1)
        var = ab * self.std**2 + (1 - ab)  # (B, 1)
        centred = x[:, None, :] - ab.sqrt()[:, :, None] * self.means.to(dev)[None]  # (B, K, D)
        logits = self.log_w.to(dev)[None] - 0.5 * centred.pow(2).sum(-1) / var  # (B, K)
        return logits, centred, ab

    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        logits, centred, ab = self._logits_and_centred(x_t, t)
        r = torch.softmax(logits, dim=1)  # (B, K)
        var = ab * self.std**2 + (1 - ab)
        eps_k = (1 - ab).sqrt()[:, :, None] * centred / var[:, :, None]  # (B, K, D)
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
    """n draws (float32, shape (n, D)) from the isotropic mixture sum_k w_k N(means_k, std^2 I).

    Components by ``torch.multinomial`` (weights need not sum to 1; uniform if None), then
    Gaussian noise, both from ``generator``.
    """
    k = means.shape[0]
    w = torch.full((k,), 1.0 / k) if weights is None else weights.double()
    idx = torch.multinomial(w, n, replacement=True, generator=generator)
    noise = torch.randn(n, means.shape[1], generator=generator, dtype=torch.float64)
    return (means.double()[idx] + std * noise).float()


def chi_quantile(dim: int, q: float) -> float:
    """q-quantile of the chi distribution with ``dim`` degrees of freedom (|z| for z ~ N(0, I_D)).

    Solved by bisection on P(|z|^2 <= r^2) = gammainc(D/2, r^2/2) = q.
    """
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    a = torch.tensor(dim / 2, dtype=torch.float64)
    lo, hi = 0.0, math.sqrt(dim) + 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float(torch.special.gammainc(a, torch.tensor(mid * mid / 2, dtype=torch.float64))) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mode_stats(
    samples: Tensor,
    means: Tensor,
    std: float,
    weights: Tensor | None = None,
    coverage: float = 0.999,
) -> dict[str, float]:
    """How well samples (N, D) reproduce the modes of an isotropic mixture (means (K, D), std).

    Each sample is assigned to its nearest mean. Returns:

    * share_in_mode: fraction of samples within the ``coverage`` radius of their nearest mode,
      std * chi_D^-1(coverage) (3.72 std in 2-D): a sample of the mixture itself scores
      ``coverage`` (0.999) when the modes are well separated;
    * within_mode_std: per mode, the root-mean-square distance per dimension of its in-mode
      samples to the true mean, averaged over modes with > 10 such samples, divided by the true
      std (1.0 is right, or 0.997 after the truncation at 99.9%; < 1: modes too narrow; > 1: too
      wide or off-centre; capped near 2.6 in 2-D by the truncation). NaN if no mode qualifies;
    * modes_hit: the number of modes with > 10 in-mode samples;
    * weight_tv: total variation 0.5 sum_k |share of samples nearest to mode k - w_k| (weights
      uniform if None); for N exact draws it is O(sqrt(K / N)), about 0.017 for K = 8, N = 4000.
    """
    x = samples.double().reshape(samples.shape[0], -1)
    m = means.double()
    kk, dim = m.shape
    if x.shape[1] != dim:
        raise ValueError(f"samples have dimension {x.shape[1]} but means {dim}")
    dist, k = torch.cdist(x, m).min(dim=1)  # (N,)
    r = std * chi_quantile(dim, coverage)
    inside = dist <= r
    spreads = []
    for j in range(kk):
        sel = x[(k == j) & inside]
        if sel.shape[0] > 10:
            spreads.append(float((sel - m[j]).pow(2).sum(1).mean().div(dim).sqrt()))
    w = torch.full((kk,), 1.0 / kk, dtype=torch.float64) if weights is None else weights.double()
    share = torch.bincount(k, minlength=kk).double() / x.shape[0]
    return {
        "share_in_mode": float(inside.double().mean()),
        "within_mode_std": (sum(spreads) / len(spreads) / std) if spreads else float("nan"),
        "modes_hit": float(len(spreads)),
        "weight_tv": float(0.5 * (share - w / w.sum()).abs().sum()),
    }
