"""The evaluation report: what each number is, what it depends on, JSON and a readable table.

A report is a plain JSON-able dict (see ``ddpm eval``); this module holds the one-line
definitions of every metric (:data:`METRIC_INFO`), the "depends on" sentence that travels with
the numbers, the atomic JSON writer and the text table printed to stdout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ddpmkit.io import atomic_write_text

__all__ = ["METRIC_INFO", "depends_on", "format_table", "write_json"]

METRIC_INFO: dict[str, str] = {
    "fd": (
        "Frechet distance |mu_s - mu_r|^2 + tr(C_s + C_r - 2 (C_s C_r)^1/2) between Gaussians "
        "fitted to sample and reference features (the FID formula; lower is better; biased "
        "upward at small N, compare at equal --num)"
    ),
    "fd_real_floor": (
        "the same Frechet distance for as many real training images as samples: what a "
        "perfect model would score at this N"
    ),
    "inception_score": (
        "exp(E_x KL(p(y|x) || p(y))) with the dataset classifier's softmax (Inception-Score "
        "analogue, Salimans et al. 2016; 1 to K, higher is better)"
    ),
    "precision": (
        "share of samples inside the k-NN manifold (k=3) of reference features (Kynkaanniemi "
        "et al. 2019; fidelity, higher is better)"
    ),
    "recall": (
        "share of reference images inside the k-NN manifold (k=3) of sample features "
        "(Kynkaanniemi et al. 2019; coverage, higher is better)"
    ),
    "class_accuracy": (
        "share of samples the dataset classifier assigns to the class they were drawn for"
    ),
    "sliced_wasserstein": (
        "sliced Wasserstein-2 distance between samples and fresh data (256 random "
        "directions; lower is better)"
    ),
    "sliced_wasserstein_data_floor": (
        "the same distance between two independent draws of fresh data of the same sizes"
    ),
    "mmd2": (
        "unbiased MMD^2 between samples and fresh data, RBF kernels at 0.5, 1, 2 x the median "
        "distance (Gretton et al. 2012; ~0 when equal)"
    ),
    "mmd2_data_floor": "the same MMD^2 between two independent draws of fresh data",
    "nll_bpd": (
        "negative log-likelihood upper bound in bits/dim: the variational bound (Ho et al. "
        "2020, Eq. 5) on real images, mean over images (lower is better)"
    ),
    "nn_pixel_median": (
        "median over samples of the L2 distance to the nearest training image, pixels in [0, 1]"
    ),
    "nn_feature_median": (
        "median over samples of the L2 distance to the nearest training image in feature space"
    ),
    "nn_pixel_median_test": (
        "the same median for real test images (not trained on): the scale of a non-copy"
    ),
    "nn_feature_median_test": "the same feature-space median for real test images",
    "exact_copies": "number of samples identical to some training image (pixel distance 0)",
    "closer_than_any_test": (
        "number of samples closer (pixels) to a training image than any test image is"
    ),
}


def depends_on(report: dict[str, Any]) -> str:
    """One sentence naming everything the numbers depend on (samples, weights, sampler,
    reference set and size, extractor)."""
    s = report["samples"]
    parts = [f"{s['num']} samples"]
    if s.get("weights"):
        parts.append(f"{s['weights']} weights")
    else:
        parts.append("weights and sampler unknown (samples given as a file)")
    if s.get("sampler"):
        if s.get("schedule_file"):
            grid = f"timesteps from {s['schedule_file']}"
        elif s.get("timesteps"):
            grid = "given timesteps"
        else:
            grid = f"{s['spacing']} spacing"
        sp = f"{s['sampler']} sampler, {s['steps']} steps ({grid})"
        if s.get("guidance", 1.0) != 1.0:
            sp += f", guidance {s['guidance']}"
            if s.get("guidance_interval"):
                lo, hi = s["guidance_interval"]
                sp += f" at sigma in ({lo:g}, {hi:g}]"
        if s.get("variance"):
            sp += f", variance {s['variance']}"
        if s.get("final_step", "denoise") != "denoise":
            sp += f", {s['final_step']} final step"
        parts.append(sp)
    ref = report.get("reference")
    if ref and "seed" in ref:
        parts.append(f"reference: {ref['size']} fresh {ref['dataset']} points (seed {ref['seed']})")
    elif ref:
        parts.append(f"reference: {ref['size']} {ref['dataset']} images ({ref['split']} split)")
    if report.get("extractor"):
        parts.append(f"features: {report['extractor']}")
    return "; ".join(parts)


def write_json(path: Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as indented JSON, atomically (temporary file + fsync + rename).

    Non-finite numbers become ``null``.
    """
    text = json.dumps(_finite(report), indent=1, allow_nan=False, default=_json_default)
    return atomic_write_text(path, text + "\n")


def _finite(obj: Any) -> Any:
    """The report with NaN/inf floats as None (JSON has no NaN), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        a = abs(v)
        if a != 0 and (a < 1e-3 or a >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4f}"
    return str(v)


def format_table(report: dict[str, Any], width: int = 100) -> str:
    """The report as aligned text: header lines, then ``metric  value  what it is`` rows."""
    lines = [f"ddpm eval: {report['source']['path']} ({report['source']['kind']})"]
    lines.append(f"depends on: {report['depends_on']}")
    if report.get("reference_cache") not in (None, "n/a"):
        lines.append(f"reference statistics: cache {report['reference_cache']}")
    rows: list[tuple[str, str, str]] = []
    for name, value in report.get("metrics", {}).items():
        rows.append((name, _fmt(value), report.get("metric_info", {}).get(name, "")))
    like = report.get("likelihood")
    if like:
        rows.append(
            (
                "nll_bpd",
                f"{_fmt(like['bpd'])} +- {_fmt(like['bpd_stderr'])}",
                f"{METRIC_INFO['nll_bpd']}; {like['images']}, {like['timesteps']}",
            )
        )
    mem = report.get("memorisation")
    if mem:
        for name in (
            "nn_pixel_median",
            "nn_pixel_median_test",
            "nn_feature_median",
            "nn_feature_median_test",
            "exact_copies",
            "closer_than_any_test",
        ):
            if mem.get(name) is not None:
                rows.append((name, _fmt(mem[name]), METRIC_INFO[name]))
    if rows:
        w0 = max(len("metric"), *(len(r[0]) for r in rows))
        w1 = max(len("value"), *(len(r[1]) for r in rows))
        lines.append("")
        lines.append(f"{'metric':<{w0}}  {'value':>{w1}}  what it is")
        lines.append(f"{'-' * w0}  {'-' * w1}  {'-' * 10}")
        room = max(20, width - w0 - w1 - 4)
        for name, val, info in rows:
            wrapped = _wrap(info, room)
            lines.append(f"{name:<{w0}}  {val:>{w1}}  {wrapped[0]}")
            lines.extend(f"{'':<{w0}}  {'':>{w1}}  {more}" for more in wrapped[1:])
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    words, out, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            out.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    out.append(cur)
    return out
