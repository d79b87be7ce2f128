"""Exact predictors: the mixture with one component is the Gaussian; both against conditioning."""

from __future__ import annotations

import torch

from ddpmkit.evaluation.oracle import (
    GaussianOracle,
    MixtureOracle,
    mixture_sample,
    mode_stats,
    ring_means,
)
from ddpmkit.schedule import NoiseSchedule


def test_gaussian_oracle_equals_conditioning_by_regression() -> None:
    # E[eps | x_t] is linear in x_t for Gaussian data: regress eps on x_t over many joint draws.
    s = NoiseSchedule.from_name("linear", 100)
    g = torch.Generator().manual_seed(0)
    mu, std = 0.7, 0.4
    oracle = GaussianOracle(s, mu, std)
    for t in (5, 50, 95):
        x0 = mu + std * torch.randn(400_000, generator=g, dtype=torch.float64)
        eps = torch.randn(400_000, generator=g, dtype=torch.float64)
        ab = float(s.alphas_bar[t])
        xt = ab**0.5 * x0 + (1 - ab) ** 0.5 * eps
        slope = float(((xt - xt.mean()) * (eps - eps.mean())).mean() / xt.var())
        intercept = float(eps.mean() - slope * xt.mean())
        probe = torch.tensor([[-1.0], [0.0], [2.0]])
        got = oracle(probe, torch.full((3,), t)).double().flatten()
        want = intercept + slope * probe.double().flatten()
        assert torch.allclose(got, want, atol=0.01), (t, got, want)


def test_mixture_with_one_component_is_the_gaussian() -> None:
    s = NoiseSchedule.from_name("cosine", 50)
    x = torch.randn(16, 2)
    t = torch.randint(0, 50, (16,))
    m = MixtureOracle(s, torch.tensor([[0.3, -0.2]]), 0.5)(x, t)
    gauss = GaussianOracle(s, torch.tensor([0.3, -0.2]), 0.5)(x, t)
    assert torch.allclose(m, gauss, atol=1e-6)


def test_mode_stats_of_true_samples() -> None:
    means = ring_means(8, 2.0)
    x = mixture_sample(8000, means, 0.05, generator=torch.Generator().manual_seed(0))
    st = mode_stats(x, means, 0.05)
    assert (
        st["share_in_mode"] > 0.995
        and abs(st["within_mode_std"] - 1.0) < 0.03
        and st["modes_hit"] == 8
    )
    narrow = mode_stats(means.float().repeat(100, 1) + 0.01 * torch.randn(800, 2), means, 0.05)
    assert narrow["within_mode_std"] < 0.3
