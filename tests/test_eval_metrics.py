"""Metrics against closed forms and independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from ddpmkit.evaluation.metrics import (
    class_accuracy,
    feature_statistics,
    frechet_distance,
    inception_score,
    mmd_rbf,
    precision_recall,
    sliced_wasserstein,
)


def test_sliced_w2_in_1d_is_the_gaussian_w2() -> None:
    # W2(N(m1, s1^2), N(m2, s2^2)) = sqrt((m1 - m2)^2 + (s1 - s2)^2); in 1-D slicing is exact.
    g = torch.Generator().manual_seed(0)
    n = 50_000
    x = 1.0 + 2.0 * torch.randn(n, 1, generator=g)
    y = -0.5 + 0.5 * torch.randn(n, 1, generator=g)
    expected = math.sqrt(1.5**2 + 1.5**2)
    # Quantile estimates of 200k draws: relative error well under 1%.
    assert sliced_wasserstein(x, y, num_projections=4, generator=g) == pytest.approx(
        expected, rel=0.01
    )
    assert sliced_wasserstein(x, x, num_projections=8, generator=g) == 0.0
    # Unequal sizes work (quantile interpolation).
    assert sliced_wasserstein(x[:1000], y, num_projections=4, generator=g) == pytest.approx(
        expected, rel=0.05
    )


def test_sliced_w2_isotropic_shift() -> None:
    # For a shift d of an isotropic cloud in D dims, E_theta <theta, d>^2 = |d|^2 / D.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5_000, 2, generator=g)
    d = torch.tensor([3.0, 4.0])
    got = sliced_wasserstein(x, x + d, num_projections=2000, generator=g)
    assert got == pytest.approx(5.0 / math.sqrt(2), rel=0.03)


def test_mmd() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    same = mmd_rbf(a, b)
    shifted = mmd_rbf(a, b + 1.0)
    assert abs(same) < 0.01 and shifted > 0.1


def test_frechet_distance_closed_forms() -> None:
    mu = torch.tensor([1.0, 2.0, 3.0])
    cov = torch.diag(torch.tensor([1.0, 4.0, 9.0]))
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    # Diagonal covariances: |mu1-mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    cov2 = torch.diag(torch.tensor([4.0, 1.0, 9.0]))
    mu2 = mu + torch.tensor([1.0, 0.0, -2.0])
    expected = 1 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0
    assert frechet_distance(mu, cov, mu2, cov2) == pytest.approx(expected)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
    one = frechet_distance(
        torch.tensor([0.5]), torch.tensor([[4.0]]), torch.tensor([-1.0]), torch.tensor([[0.25]])
    )
    assert one == pytest.approx(1.5**2 + 1.5**2)
    # A rotated (non-diagonal) covariance against itself is 0; statistics from samples.
    g = torch.Generator().manual_seed(0)
    f = torch.randn(5000, 3, generator=g) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 2.0]]
    )
    m, c = feature_statistics(f)
    assert frechet_distance(m, c, m, c) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(c, torch.cov(f.double().T), atol=1e-10)


def test_precision_recall() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1000, 2, generator=g)
    p, r = precision_recall(a, a.clone())
    assert p == 1.0 and r == 1.0
    far = torch.randn(1000, 2, generator=g) + 100
    assert precision_recall(a, far) == (0.0, 0.0)
    # Real data: two modes; fake covers one -> high precision, recall about one half.
    two = torch.cat(
        [torch.randn(500, 2, generator=g) * 0.1 - 5, torch.randn(500, 2, generator=g) * 0.1 + 5]
    )
    one = torch.randn(1000, 2, generator=g) * 0.1 - 5
    p, r = precision_recall(two, one)
    assert p > 0.95 and 0.4 < r < 0.6


def test_inception_score_and_accuracy() -> None:
    confident = torch.eye(10).repeat(10, 1)  # balanced, certain
    assert inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    assert inception_score(torch.full((50, 10), 0.1)) == pytest.approx(1.0)
    assert class_accuracy(confident, torch.arange(10).repeat(10)) == 1.0
    assert class_accuracy(confident, torch.zeros(100, dtype=torch.long)) == pytest.approx(0.1)
