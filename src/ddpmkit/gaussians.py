"""Closed forms of diagonal Gaussians: the KL divergence, the density, the discretised likelihood.

Pure elementwise tensor functions (broadcasting, in nats), with no schedule and no model: the
variational bound's terms in :mod:`ddpmkit.diffusion` (the hybrid loss of learned variances)
and :mod:`ddpmkit.evaluation.likelihood` (bits/dim) are built from them. They sit at layer 0 so
that both layers can use the one copy (Ho et al. 2020, Sec. 3.3; Nichol & Dhariwal 2021, Sec. 3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "gaussian_log_density",
    "normal_kl",
]


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise (broadcasting), in nats,

    KL = 1/2 (logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^-logvar2 - 1)
    """
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1.0
    )


def gaussian_log_density(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(x; mean, e^logvar) elementwise, in nats:
    -1/2 (log 2 pi + logvar + (x - mean)^2 e^-logvar) (the decoder term of continuous data)."""
    return -0.5 * (math.log(2.0 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Standard normal CDF, exact: 0.5 erfc(-x / sqrt 2), accurate far into the lower tail
    (where 1 + erf(x / sqrt 2) cancels). The name follows improved-diffusion's function."""
    return 0.5 * torch.special.erfc(-x / math.sqrt(2.0))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log P(bin of x) under N(means, exp(log_scales)^2), elementwise, in nats, float64
    (Ho et al. 2020, Eq. 13).

    x must lie on the 256 levels of [-1, 1] (k / 127.5 - 1). Bin of x: [x - 1/255, x + 1/255],
    except the lowest (x = -1), which extends to -inf, and the highest (x = 1), to +inf, so the
    256 probabilities sum to 1. Differences of CDFs that are tiny in the far tail are floored at
    1e-12 (improved-diffusion's clamp) before the log. Differentiable in means and log_scales.
    """
    x, means, log_scales = x.double(), means.double(), log_scales.double()
    centred = x - means
    inv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv * (centred + 1.0 / 255))
    cdf_min = approx_standard_normal_cdf(inv * (centred - 1.0 / 255))
    # Upper tail through the symmetric lower one: 1 - Phi(z) = Phi(-z) without cancellation.
    sf_min = approx_standard_normal_cdf(-inv * (centred - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_sf_min = torch.log(sf_min.clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_sf_min, log_delta))
