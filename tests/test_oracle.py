"""Exact predictors against independent computations: Gaussian conditioning and Tweedie."""

from __future__ import annotations

import math

import pytest
import torch

from ddpmkit.evaluation.oracle import (
    GaussianOracle,
    MixtureOracle,
    chi_quantile,
    mixture_sample,
    mode_stats,
    ring_means,
)
from ddpmkit.schedule import NoiseSchedule


def conditional_eps_mean(
    abar: float, mu: torch.Tensor, std: torch.Tensor, x_t: torch.Tensor
) -> torch.Tensor:
    """E[eps | x_t] by conditioning the joint Gaussian of (x_t, eps), written out generically.

    z = (x_0, eps) ~ N((mu, 0), blockdiag(diag(std^2), I)); (x_t, eps) = A z with
    A = [[a I, b I], [0, I]]. Then E[eps | x_t] = S_ex S_xx^-1 (x_t - m_x).
    """
    d = mu.numel()
    a, b = math.sqrt(abar), math.sqrt(1 - abar)
    eye = torch.eye(d, dtype=torch.float64)
    cov_z = torch.block_diag(torch.diag(std.double() ** 2), eye)
    mean_z = torch.cat([mu.double(), torch.zeros(d, dtype=torch.float64)])
    A = torch.cat([torch.cat([a * eye, b * eye], dim=1), torch.cat([0 * eye, eye], dim=1)], dim=0)
    cov, mean = A @ cov_z @ A.T, A @ mean_z
    s_xx, s_ex = cov[:d, :d], cov[d:, :d]
    centred = x_t.double() - mean[:d]  # (B, D)
    return (s_ex @ torch.linalg.solve(s_xx, centred.T)).T


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_gaussian_oracle_equals_gaussian_conditioning(name: str) -> None:
    s = NoiseSchedule.from_name(name, 100)
    mu = torch.tensor([0.7, -1.2, 0.0])
    std = torch.tensor([0.4, 1.0, 2.5])
    oracle = GaussianOracle(s, mu, std)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(5, 3, generator=g)
    for t in (0, 1, 30, 70, 99):
        got = oracle(x, torch.full((5,), t, dtype=torch.long))
        assert got.dtype == torch.float32 and got.shape == x.shape
        want = conditional_eps_mean(float(s.alphas_bar.double()[t]), mu, std, x)
        # float32 output of a float64 computation: relative 1e-6.
        assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-6), (t, got, want)
    # Scalars broadcast; mixed t in one batch.
    t = torch.tensor([0, 50, 99, 10, 10])
    scalar = GaussianOracle(s, 0.3, 0.5)(x, t)
    for i in range(5):
        want = conditional_eps_mean(
            float(s.alphas_bar.double()[t[i]]),
            torch.full((3,), 0.3),
            torch.full((3,), 0.5),
            x[i : i + 1],
        )
        assert torch.allclose(scalar[i].double(), want[0], rtol=1e-6, atol=1e-6)


def test_mixture_with_one_component_is_the_gaussian() -> None:
    s = NoiseSchedule.from_name("cosine", 50)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, generator=g)
    t = torch.randint(0, 50, (16,), generator=g)
    m = MixtureOracle(s, torch.tensor([[0.3, -0.2]]), 0.5)(x, t)
    gauss = GaussianOracle(s, torch.tensor([0.3, -0.2]), 0.5)(x, t)
    assert torch.allclose(m, gauss, atol=1e-6)


def test_mixture_oracle_is_tweedie_score() -> None:
    # E[eps | x_t] = -sqrt(1 - abar) grad_x log q_t(x), with q_t the mixture of
    # N(sqrt(abar) m_k, (abar s^2 + 1 - abar) I): log-density written out, gradient by autograd.
    s = NoiseSchedule.from_name("linear", 1000)
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]], dtype=torch.float64)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    std = 0.3
    oracle = MixtureOracle(s, means.float(), std, w.float() * 7)  # weights need not sum to 1
    g = torch.Generator().manual_seed(1)
    x = 1.5 * torch.randn(64, 2, generator=g, dtype=torch.float64)
    for t in (0, 20, 200, 600, 999):
        ab = float(s.alphas_bar.double()[t])
        xr = x.clone().requires_grad_(True)
        var = ab * std**2 + 1 - ab
        comp = [
            math.log(float(w[k]))
            - ((xr - math.sqrt(ab) * means[k]) ** 2).sum(1) / (2 * var)
            - math.log(2 * math.pi * var)
            for k in range(3)
        ]
        logq = torch.logsumexp(torch.stack(comp, dim=1), dim=1)
        (grad,) = torch.autograd.grad(logq.sum(), xr)
        want = -math.sqrt(1 - ab) * grad
        got = oracle(x.float(), torch.full((64,), t, dtype=torch.long)).double()
        # x is rounded to float32 on input: the sharp t = 0 case amplifies that by 1/var ~ 11.
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (t, (got - want).abs().max())
        r = oracle.responsibilities(x.float(), torch.full((64,), t, dtype=torch.long))
        assert torch.allclose(r.sum(1), torch.ones(64, dtype=torch.float64))


def test_mixture_sample_moments() -> None:
    means = torch.tensor([[1.0, 0.0], [-3.0, 2.0]])
    w = torch.tensor([0.25, 0.75])
    x = mixture_sample(40_000, means, 0.5, w, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == (40_000, 2)
    want_mean = (w[:, None] * means).sum(0)
    # Component variance 0.25 + between-component spread: sd of the mean < 0.02; 5 sd.
    assert torch.allclose(x.mean(0), want_mean, atol=0.06)
    assert mode_stats(x, means, 0.5, w)["weight_tv"] < 0.01


def test_chi_quantile() -> None:
    assert chi_quantile(2, 0.999) == pytest.approx(math.sqrt(-2 * math.log(1e-3)), rel=1e-10)
    assert chi_quantile(1, 0.95) == pytest.approx(1.959963984540054, rel=1e-9)


def test_mode_stats_of_true_and_degenerate_samples() -> None:
    means = ring_means(8, 2.0)
    x = mixture_sample(8000, means, 0.05, generator=torch.Generator().manual_seed(0))
    st = mode_stats(x, means, 0.05)
    # 99.9% coverage; truncation makes the RMS ratio 0.997; 8000 draws: sd ~0.01 of the ratio.
    assert st["share_in_mode"] > 0.995 and abs(st["within_mode_std"] - 1.0) < 0.03
    assert st["modes_hit"] == 8 and st["weight_tv"] < 0.04
    g = torch.Generator().manual_seed(1)
    narrow = means.float().repeat(100, 1) + 0.01 * torch.randn(800, 2, generator=g)
    assert mode_stats(narrow, means, 0.05)["within_mode_std"] < 0.3
    one_mode = means[:1].float() + 0.05 * torch.randn(800, 2, generator=g)
    st = mode_stats(one_mode, means, 0.05)
    assert st["modes_hit"] == 1 and st["weight_tv"] == pytest.approx(7 / 8)
