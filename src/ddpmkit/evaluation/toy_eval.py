"""``ddpm eval`` of 2-D toy samples: sliced Wasserstein distance and MMD against fresh data.

The reference is a fresh draw of the toy (seed = training seed + :data:`TOY_REF_SEED_OFFSET`,
never the training set); a second independent draw gives each metric's data floor. Writes
``OUT/eval.json``; 2-D data get no likelihood and no memorisation check.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ddpmkit.errors import DatasetError
from ddpmkit.evaluation.plan import MIN_SAMPLES, Plan
from ddpmkit.evaluation.samples import draw_samples
from ddpmkit.evaluation.sources import Source

if TYPE_CHECKING:
    from ddpmkit.evaluation.options import EvalOptions

__all__ = ["MMD_MAX_POINTS", "TOY_REF_SEED_OFFSET", "evaluate_toy"]

TOY_REF_SEED_OFFSET = 7919  # fresh 2-D data: seed = training seed + this (never the train set)
MMD_MAX_POINTS = 2000  # MMD memory is O((N + M)^2): at most this many points per set


def evaluate_toy(
    src: Source,
    opts: EvalOptions,
    plan: Plan,
    report: dict[str, Any],
    notes: list[str],
    log: Callable[[str], None],
) -> list[Path]:
    """Fill ``report`` with the 2-D metrics, write ``eval.json``; returns the files written."""
    from ddpmkit.data.toy2d import make_toy
    from ddpmkit.evaluation.metrics import mmd_rbf, sliced_wasserstein
    from ddpmkit.evaluation.report import METRIC_INFO, depends_on, write_json

    if src.kind == "model":
        num = opts.num if opts.num is not None else 1000
        x, _, sinfo = draw_samples(src, opts, plan, num, log)
    else:
        assert src.points is not None
        x = src.points[: opts.num] if opts.num is not None else src.points
        if x.shape[0] < MIN_SAMPLES:
            raise DatasetError(f"{src.path}: {x.shape[0]} samples; need at least {MIN_SAMPLES}")
        sinfo = {"num": int(x.shape[0]), "shape": list(x.shape[1:]), "weights": None}
    n = int(x.shape[0])
    m = opts.ref_num if opts.ref_num is not None else n
    seed = plan.train_seed + TOY_REF_SEED_OFFSET
    ref = make_toy(plan.dataset, m, seed=seed)
    other = make_toy(plan.dataset, n, seed=seed + 1)
    x = x.double()
    log(f"comparing {n} samples with {m} fresh {plan.dataset} points")
    mmd_n, mmd_m = min(n, MMD_MAX_POINTS), min(m, MMD_MAX_POINTS)
    metrics = {
        "sliced_wasserstein": sliced_wasserstein(
            x, ref, generator=torch.Generator().manual_seed(0)
        ),
        "sliced_wasserstein_data_floor": sliced_wasserstein(
            other, ref, generator=torch.Generator().manual_seed(0)
        ),
        "mmd2": mmd_rbf(x[:mmd_n], ref[:mmd_m]),
        "mmd2_data_floor": mmd_rbf(other[:mmd_n], ref[:mmd_m]),
    }
    if mmd_n < n or mmd_m < m:
        notes.append(f"MMD^2 on the first {mmd_n} samples and {mmd_m} reference points")
    notes.append(
        "2-D data: no likelihood (the bound's decoder is for 8-bit images) and no memorisation "
        "check"
    )
    report["samples"] = sinfo
    report["reference"] = {
        "dataset": plan.dataset,
        "split": "fresh draw",
        "seed": seed,
        "floor_seed": seed + 1,
        "size": m,
        "description": f"make_toy({plan.dataset!r}, {m}, seed={seed})",
    }
    report["reference_cache"] = "n/a"
    report["extractor"] = None
    report["metrics"] = metrics
    report["metric_info"] = {k: METRIC_INFO[k] for k in metrics}
    report["likelihood"] = None
    report["memorisation"] = None
    report["depends_on"] = depends_on(report)
    report["notes"] = notes
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    return [write_json(out / "eval.json", report)]
