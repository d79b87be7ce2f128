"""The memorisation part of an image ``ddpm eval``: nearest training images and their figure.

:func:`memorisation_check` finds every sample's nearest training image in pixels and in
features (:func:`ddpmkit.evaluation.memorisation.check_memorisation`), with the same distances of
held-out test images as the baseline where the dataset has a separate test split (and then the
FD floor between real training and reference features). :func:`write_memorisation` writes
``nearest.png`` (the closest pairs) and ``nearest.npz`` (all distances and indices).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ddpmkit.data.images import ImageData
from ddpmkit.evaluation.extractor import Features
from ddpmkit.evaluation.plan import SINGLE_SPLIT, Plan, load_split, seeded_indices, split_name

if TYPE_CHECKING:
    from ddpmkit.evaluation.options import EvalOptions

__all__ = ["memorisation_check", "write_memorisation"]


def memorisation_check(
    samples: Tensor,
    sample_feats: Tensor,
    plan: Plan,
    opts: EvalOptions,
    ref: ImageData,
    ref_stats: Any,
    feats: Features,
    cache: Path | None,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, Any], float | None]:
    """(report section, what :func:`write_memorisation` needs, FD floor or None)."""
    from ddpmkit.evaluation.memorisation import check_memorisation, summarise_distances
    from ddpmkit.evaluation.metrics import feature_statistics, frechet_distance

    train = load_split(plan, "train", log)
    train_desc = f"{plan.dataset} {split_name(plan, 'train')}: {train.source}"
    train_stats, train_cache, _ = feats.statistics(train, train_desc, cache, log)
    log(f"nearest training image of {samples.shape[0]} samples among {len(train)}")
    m = check_memorisation(
        samples, train.images, sample_features=sample_feats, train_features=train_stats.features
    )
    assert m.feature_dist is not None and m.feature_index is not None
    n = int(samples.shape[0])
    distinct = plan.dataset not in SINGLE_SPLIT and opts.ref_split == "test"
    info: dict[str, Any] = {
        "train_set": {
            "dataset": plan.dataset,
            "split": split_name(plan, "train"),
            "size": len(train),
            "fingerprint": train_stats.info["fingerprint"],
            "features_cache": train_cache,
        },
        "pixel_distance": "L2 between images with pixel values in [0, 1]",
        "feature_distance": f"L2 between features of the {feats.name}",
        "samples_pixel": summarise_distances(m.pixel_dist),
        "samples_feature": summarise_distances(m.feature_dist),
        "nn_pixel_median": float(torch.quantile(m.pixel_dist, 0.5)),
        "nn_feature_median": float(torch.quantile(m.feature_dist, 0.5)),
        "exact_copies": int((m.pixel_dist == 0).sum()),
    }
    floor = None
    if distinct:
        k = min(n, len(ref))
        idx = seeded_indices(len(ref), k)
        base = check_memorisation(
            ref.images[idx],
            train.images,
            sample_features=ref_stats.features[idx],
            train_features=train_stats.features,
        )
        assert base.feature_dist is not None
        info["test_images"] = k
        info["test_pixel"] = summarise_distances(base.pixel_dist)
        info["test_feature"] = summarise_distances(base.feature_dist)
        info["nn_pixel_median_test"] = float(torch.quantile(base.pixel_dist, 0.5))
        info["nn_feature_median_test"] = float(torch.quantile(base.feature_dist, 0.5))
        info["closer_than_any_test"] = int((m.pixel_dist < base.pixel_dist.min()).sum())
        real = train_stats.features[seeded_indices(len(train), min(n, len(train)), seed=1)]
        mu, cov = feature_statistics(real)
        floor = frechet_distance(mu, cov, ref_stats.mu, ref_stats.cov)
    else:
        info["test_images"] = 0
        info["note"] = (
            "no held-out split (the reference is the training set): no test-image baseline"
        )
    order = m.closest(opts.memorisation)
    info["closest"] = [
        {
            "sample": int(i),
            "train": int(m.pixel_index[i]),
            "pixel_distance": float(m.pixel_dist[i]),
            "train_by_feature": int(m.feature_index[i]),
            "feature_distance": float(m.feature_dist[i]),
        }
        for i in order
    ]
    info["figure"] = "nearest.png: each row a sample and its nearest training image, closest first"
    extra = {"m": m, "order": order, "train_images": train.images}
    return info, extra, floor


def write_memorisation(out: Path, samples: Tensor, extra: dict[str, Any]) -> list[Path]:
    """Write ``out/nearest.png`` and ``out/nearest.npz``; returns their paths."""
    from ddpmkit.viz.grid import atomic_save, grid_with_row_labels

    m, order, train_images = extra["m"], extra["order"], extra["train_images"]
    pairs = torch.stack([samples[order], train_images[m.pixel_index[order]]], dim=1)
    pairs = pairs.reshape(-1, *samples.shape[1:])
    labels = [
        f"sample {int(i)} | train {int(m.pixel_index[i])}: {float(m.pixel_dist[i]):.3f}"
        for i in order
    ]
    upscale = max(1, 64 // int(samples.shape[2]))
    png = grid_with_row_labels(pairs, 2, labels, out / "nearest.png", upscale=upscale)

    def write_npz(f: Any) -> None:
        np.savez_compressed(
            f,
            pixel_distance=m.pixel_dist.numpy(),
            pixel_index=m.pixel_index.numpy(),
            feature_distance=m.feature_dist.numpy(),
            feature_index=m.feature_index.numpy(),
        )

    npz = atomic_save(out / "nearest.npz", write_npz)
    return [png, npz]
