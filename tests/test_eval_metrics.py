"""Metrics against closed forms and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.optimize import linprog

from ddpmkit.evaluation.metrics import (
    class_accuracy,
    feature_statistics,
    frechet_distance,
    inception_score,
    median_heuristic,
    mmd_rbf,
    precision_recall,
    sliced_wasserstein,
)


def test_sliced_w2_in_1d_is_the_gaussian_w2() -> None:
    # W2(N(m1, s1^2), N(m2, s2^2)) = sqrt((m1 - m2)^2 + (s1 - s2)^2); in 1-D slicing is exact
    # (theta = +-1), so this is the W2 of two empirical samples of 50k each. Over 20 seeds the
    # relative error had mean 0.0002 and sd 0.0032 (max 0.007): rel=0.01 is 3 sd. With 3k
    # against 50k points: sd 0.014 (max 0.024), so rel=0.05 is 3.5 sd.
    g = torch.Generator().manual_seed(0)
    n = 50_000
    x = 1.0 + 2.0 * torch.randn(n, 1, generator=g)
    y = -0.5 + 0.5 * torch.randn(n, 1, generator=g)
    expected = math.sqrt(1.5**2 + 1.5**2)
    assert sliced_wasserstein(x, y, num_projections=4, generator=g) == pytest.approx(
        expected, rel=0.01
    )
    assert sliced_wasserstein(x, x, num_projections=8, generator=g) == 0.0
    assert sliced_wasserstein(x[:3000], y, num_projections=4, generator=g) == pytest.approx(
        expected, rel=0.05
    )
    # Same multiset, other order, both dims: 0.
    z = torch.randn(300, 3, generator=g)
    assert sliced_wasserstein(z, z[torch.randperm(300, generator=g)], 16, g) == 0.0


def _w2_1d_by_linear_programming(a: list[float], b: list[float]) -> float:
    """W2 between uniform empirical measures on a and b as an explicit transport LP."""
    n, m = len(a), len(b)
    cost = [(ai - bj) ** 2 for ai in a for bj in b]  # plan P (n, m) flattened row-major
    rows = [[1.0 if k // m == i else 0.0 for k in range(n * m)] for i in range(n)]
    cols = [[1.0 if k % m == j else 0.0 for k in range(n * m)] for j in range(m)]
    res = linprog(
        cost, A_eq=rows + cols, b_eq=[1 / n] * n + [1 / m] * m, bounds=(0, None), method="highs"
    )
    assert res.success
    return math.sqrt(res.fun)


@pytest.mark.parametrize(("n", "m"), [(5, 7), (4, 6), (9, 3), (6, 6)])
def test_sliced_w2_unequal_sizes_is_exact_in_1d(n: int, m: int) -> None:
    # Against optimal transport solved as a linear program (no sorting, no quantiles).
    g = torch.Generator().manual_seed(n * 10 + m)
    a = torch.randn(n, 1, generator=g, dtype=torch.float64)
    b = 0.5 + 2 * torch.randn(m, 1, generator=g, dtype=torch.float64)
    want = _w2_1d_by_linear_programming(a.flatten().tolist(), b.flatten().tolist())
    got = sliced_wasserstein(a, b, num_projections=3, generator=g)
    assert got == pytest.approx(want, rel=1e-7)
    assert sliced_wasserstein(b, a, num_projections=3, generator=g) == pytest.approx(got)


def test_sliced_w2_isotropic_shift() -> None:
    # Shifting a point set by d: the 1-D W2 on direction theta is exactly |<theta, d>|, and
    # E_theta <theta, d>^2 = |d|^2 / D. In 2-D, <theta, d>^2 / |d|^2 = cos^2 has mean 1/2 and sd
    # 0.35, so 2000 directions give the square to 1.6% (1 sd) and the root to 0.8%: rel=0.03.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 2, generator=g)
    d = torch.tensor([3.0, 4.0])
    got = sliced_wasserstein(x, x + d, num_projections=2000, generator=g)
    assert got == pytest.approx(5.0 / math.sqrt(2), rel=0.03)


def _mmd_by_loops(x: list[list[float]], y: list[list[float]], bandwidths: list[float]) -> float:
    def k(a: list[float], b: list[float]) -> float:
        d2 = sum((ai - bi) ** 2 for ai, bi in zip(a, b))
        return sum(math.exp(-d2 / (2 * s * s)) for s in bandwidths)

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(a, b) for a in x for b in y) / (n * m)
    return kxx + kyy - 2 * kxy


def test_mmd_matches_the_definition() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 2, generator=g, dtype=torch.float64)
    y = 0.3 + torch.randn(9, 2, generator=g, dtype=torch.float64)
    bw = (0.4, 1.0, 2.5)
    want = _mmd_by_loops(x.tolist(), y.tolist(), list(bw))
    assert mmd_rbf(x, y, bw) == pytest.approx(want, rel=1e-10)
    # Default bandwidths: 0.5, 1, 2 x the median of the distances between distinct points.
    pooled = x.tolist() + y.tolist()
    dists = sorted(math.dist(pooled[i], pooled[j]) for i in range(21) for j in range(i + 1, 21))
    med = dists[(len(dists) - 1) // 2]  # 210 pairs: torch.median takes the lower middle one
    assert median_heuristic(x, y) == pytest.approx(med)
    want = _mmd_by_loops(x.tolist(), y.tolist(), [0.5 * med, med, 2 * med])
    assert mmd_rbf(x, y) == pytest.approx(want, rel=1e-10)


def test_mmd_same_and_shifted() -> None:
    # Same distribution: the unbiased estimate is centred on 0 with sd O(1/n) (here ~1e-3);
    # a shift of 1 (half the median distance) gives about 0.3.
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    same = mmd_rbf(a, b)
    shifted = mmd_rbf(a, b + 1.0)
    assert abs(same) < 0.01 and shifted > 0.1
    # Identical sets: 2 (mean off-diagonal k - k(x, x)) / n < 0 (the diagonal is left out).
    assert mmd_rbf(a, a.clone()) < 0


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


def test_frechet_distance_full_covariances_against_scipy_sqrtm() -> None:
    # Independent route: scipy's Schur-based sqrtm of the non-symmetric product C1 C2.
    g = torch.Generator().manual_seed(3)
    for d in (2, 5, 16):
        a = torch.randn(d, d, generator=g, dtype=torch.float64)
        b = torch.randn(d, d, generator=g, dtype=torch.float64)
        c1, c2 = a @ a.T + 0.1 * torch.eye(d), b @ b.T / d
        m1 = torch.randn(d, generator=g, dtype=torch.float64)
        m2 = torch.randn(d, generator=g, dtype=torch.float64)
        cross = scipy.linalg.sqrtm(c1.numpy() @ c2.numpy())
        want = float(
            ((m1 - m2) ** 2).sum() + c1.trace() + c2.trace() - 2 * float(np.trace(cross).real)
        )
        assert frechet_distance(m1, c1, m2, c2) == pytest.approx(want, rel=1e-10)
        # Symmetric in its two Gaussians.
        assert frechet_distance(m2, c2, m1, c1) == pytest.approx(want, rel=1e-10)
    # Rank-deficient covariance (fewer samples than dimensions, as with small image sets).
    f = torch.randn(5, 8, generator=g, dtype=torch.float64)
    m, c = feature_statistics(f)
    assert frechet_distance(m, c, m, c) == pytest.approx(0.0, abs=1e-7)


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


def test_precision_recall_against_loops() -> None:
    g = torch.Generator().manual_seed(5)
    real = torch.randn(40, 3, generator=g, dtype=torch.float64)
    fake = 0.7 + 1.3 * torch.randn(30, 3, generator=g, dtype=torch.float64)

    def radius(p: list[float], pts: list[list[float]], k: int) -> float:
        return sorted(math.dist(p, q) for q in pts)[k]  # index 0 is p itself

    def share(query: list[list[float]], ref: list[list[float]], k: int) -> float:
        radii = [radius(p, ref, k) for p in ref]
        inside = [any(math.dist(q, c) <= r for c, r in zip(ref, radii)) for q in query]
        return sum(inside) / len(inside)

    for k in (1, 3, 5):
        want = (share(fake.tolist(), real.tolist(), k), share(real.tolist(), fake.tolist(), k))
        assert precision_recall(real, fake, k=k) == pytest.approx(want)


def test_inception_score_and_accuracy() -> None:
    confident = torch.eye(10).repeat(10, 1)  # balanced, certain
    assert inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    assert inception_score(confident, splits=5) == pytest.approx(10.0, rel=1e-6)
    assert inception_score(torch.full((50, 10), 0.1)) == pytest.approx(1.0)
    # Confident but only 2 of 10 classes used: 2.
    assert inception_score(torch.eye(10)[[0, 1] * 20]) == pytest.approx(2.0, rel=1e-6)
    # A general case against the definition written out in numpy.
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(2 * torch.randn(64, 7, generator=g, dtype=torch.float64), dim=1)
    pn = p.numpy()
    want = float(np.exp(np.mean(np.sum(pn * np.log(pn / pn.mean(axis=0)), axis=1))))
    assert inception_score(p) == pytest.approx(want, rel=1e-10)
    halves = [
        np.exp(np.mean(np.sum(q * np.log(q / q.mean(axis=0)), axis=1))) for q in (pn[:32], pn[32:])
    ]
    assert inception_score(p, splits=2) == pytest.approx(float(np.mean(halves)), rel=1e-10)
    assert class_accuracy(confident, torch.arange(10).repeat(10)) == 1.0
    assert class_accuracy(confident, torch.zeros(100, dtype=torch.long)) == pytest.approx(0.1)
