"""Sample-quality metrics on point sets or feature vectors (pure functions, float64 inside).

* sliced Wasserstein-2 (Rabin et al. 2011; Bonneel et al. 2015) and MMD^2 with RBF kernels
  (Gretton et al. 2012) for 2-D data;
* Frechet distance between Gaussians fitted to features (Heusel et al. 2017, the "FID" formula),
  k-NN precision and recall (Kynkaanniemi et al. 2019), an Inception-Score analogue
  (Salimans et al. 2016) and conditional accuracy, for images through a feature extractor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "class_accuracy",
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "median_heuristic",
    "mmd_rbf",
    "precision_recall",
    "sliced_wasserstein",
]


def _w2_squared_1d(px: Tensor, py: Tensor) -> Tensor:
    """Exact squared W2 between the empirical measures of the columns of px (N, P), py (M, P).

    In 1-D the optimal plan matches quantiles: W2^2 = int_0^1 (F_x^-1(u) - F_y^-1(u))^2 du. Both
    empirical quantile functions are step functions (steps at i/N and j/M), so the integral is
    a finite sum over the merged breakpoints; for N = M it is the mean squared difference of the
    sorted values. Returns (P,).
    """
    xs, _ = torch.sort(px, dim=0)
    ys, _ = torch.sort(py, dim=0)
    n, m = xs.shape[0], ys.shape[0]
    if n == m:
        return ((xs - ys) ** 2).mean(dim=0)
    levels = torch.cat(
        [
            torch.arange(n + 1, dtype=torch.float64) / n,
            torch.arange(m + 1, dtype=torch.float64) / m,
        ]
    ).unique()  # sorted, 0 ... 1
    widths = levels[1:] - levels[:-1]
    mid = 0.5 * (levels[1:] + levels[:-1])
    i = (mid * n).floor().long().clamp(max=n - 1)
    j = (mid * m).floor().long().clamp(max=m - 1)
    return (widths[:, None] * (xs[i] - ys[j]) ** 2).sum(dim=0)


def sliced_wasserstein(
    x: Tensor, y: Tensor, num_projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced W2: sqrt(E_theta W2^2(<theta, x>, <theta, y>)), theta uniform on the sphere.

    Shapes: x (N, D), y (M, D) (trailing dimensions are flattened). Each 1-D W2^2 is computed
    exactly between the two empirical distributions (sorted projections, i.e. quantile
    functions; unequal sizes by integrating the two step quantile functions over their merged
    breakpoints), and the expectation over directions by ``num_projections`` random directions
    drawn from ``generator``. In 1-D it is the exact W2 of the two samples. float64 inside.
    """
    x, y = x.double().reshape(x.shape[0], -1), y.double().reshape(y.shape[0], -1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"point sets have different dimensions: {x.shape[1]} and {y.shape[1]}")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("sliced_wasserstein needs at least one point in each set")
    theta = torch.randn(x.shape[1], num_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    return float(_w2_squared_1d(x @ theta, y @ theta).mean().sqrt())


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    return torch.cdist(a, b).pow(2)


def median_heuristic(x: Tensor, y: Tensor, max_points: int = 1000) -> float:
    """Median distance between distinct points of the pooled sample (x and y together).

    Sets larger than ``max_points`` are thinned to ``max_points`` evenly strided rows first
    (deterministic; the median of ~10^6 distances is then estimated to well under 1%).
    """
    x, y = x.double().reshape(x.shape[0], -1), y.double().reshape(y.shape[0], -1)
    if x.shape[0] > max_points:
        x = x[torch.linspace(0, x.shape[0] - 1, max_points).long()]
    if y.shape[0] > max_points:
        y = y[torch.linspace(0, y.shape[0] - 1, max_points).long()]
    iu_x = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    iu_y = torch.triu_indices(y.shape[0], y.shape[0], offset=1)
    d = torch.cat(
        [
            torch.cdist(x, x)[iu_x[0], iu_x[1]],
            torch.cdist(y, y)[iu_y[0], iu_y[1]],
            torch.cdist(x, y).flatten(),
        ]
    )
    return float(d.median())


def mmd_rbf(x: Tensor, y: Tensor, bandwidths: tuple[float, ...] | None = None) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, Eq. 3) with k = sum_s exp(-|a - b|^2 / (2 s^2)).

    MMD^2_u = 1/(n(n-1)) sum_{i!=j} k(x_i, x_j) + 1/(m(m-1)) sum_{i!=j} k(y_i, y_j)
              - 2/(nm) sum_{i,j} k(x_i, y_j)
    can be slightly negative when the distributions are equal. Default bandwidths: 0.5, 1 and 2
    times the median pairwise distance of the pooled sample (:func:`median_heuristic`).
    Shapes: x (N, D), y (M, D) with N, M >= 2; memory O((N + M)^2).
    """
    x, y = x.double().reshape(x.shape[0], -1), y.double().reshape(y.shape[0], -1)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError("the unbiased MMD needs at least 2 points in each set")
    if bandwidths is None:
        med = max(median_heuristic(x, y), 1e-12)
        bandwidths = (0.5 * med, med, 2 * med)
    dxx, dyy, dxy = _sq_dists(x, x), _sq_dists(y, y), _sq_dists(x, y)
    total = 0.0
    for s in bandwidths:
        kxx, kyy, kxy = (torch.exp(-d / (2 * s * s)) for d in (dxx, dyy, dxy))
        total += float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)))
        total += float((kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)))
        total -= 2 * float(kxy.mean())
    return total


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), float64."""
    f = features.double().reshape(features.shape[0], -1)
    mu = f.mean(dim=0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2)  (Dowson & Landau 1982).

    The matrix square root is taken of the symmetric PSD matrix C1^1/2 C2 C1^1/2 by
    eigendecomposition (stable, no complex parts), in float64.
    """
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))

    def psd_sqrt(a: Tensor) -> Tensor:
        w, v = torch.linalg.eigh((a + a.T) / 2)
        return (v * w.clamp_min(0).sqrt()) @ v.T

    s1 = psd_sqrt(cov1)
    cross = psd_sqrt(s1 @ cov2 @ s1)
    value = float(
        (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * torch.trace(cross)
    )
    return max(value, 0.0)


def _kth_nn_radius(f: Tensor, k: int, batch: int = 2048) -> Tensor:
    """Distance from each row of f to its k-th nearest other row."""
    radii = []
    for i in range(0, f.shape[0], batch):
        d = torch.cdist(f[i : i + batch], f)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself at distance 0
    return torch.cat(radii)


def _covered(query: Tensor, ref: Tensor, radii: Tensor, batch: int = 2048) -> Tensor:
    """For each query row: is it inside some ball (ref_j, radii_j)?"""
    out = []
    for i in range(0, query.shape[0], batch):
        d = torch.cdist(query[i : i + batch], ref)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """k-NN precision and recall (Kynkaanniemi et al. 2019).

    precision: share of fake samples inside the real manifold (union of balls around each real
    point with radius its k-th NN distance); recall: share of real samples inside the fake one.
    """
    r, f = real.double().reshape(real.shape[0], -1), fake.double().reshape(fake.shape[0], -1)
    if min(r.shape[0], f.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples in each set")
    precision = float(_covered(f, r, _kth_nn_radius(r, k)).double().mean())
    recall = float(_covered(r, f, _kth_nn_radius(f, k)).double().mean())
    return precision, recall


def inception_score(probs: Tensor, splits: int = 1) -> float:
    """exp(E_x KL(p(y|x) || p(y))) over class probabilities (N, K); mean over ``splits`` parts."""
    p = probs.double().clamp_min(1e-12)
    scores = []
    for part in p.chunk(splits):
        py = part.mean(dim=0, keepdim=True)
        kl = (part * (part.log() - py.log())).sum(dim=1).mean()
        scores.append(math.exp(float(kl)))
    return sum(scores) / len(scores)


def class_accuracy(probs: Tensor, requested: Tensor) -> float:
    """Share of samples whose predicted class is the requested label."""
    return float((probs.argmax(dim=1) == requested.to(probs.device)).double().mean())
