"""Samples of a model SOURCE for ``ddpm eval``, drawn by ``ddpm sample``'s own code.

:func:`sampling_settings` fills in the sampler defaults (the model's own ``[sample]`` settings)
that the report states; :func:`draw_samples` runs
:func:`ddpmkit.training.sample_cmd.run_sample` into a temporary folder (per-sample seeds,
class-balanced labels for conditional models) and reads the samples back.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddpmkit.evaluation.plan import Plan
from ddpmkit.evaluation.sources import Source
from ddpmkit.training.config import ConfigError

__all__ = ["draw_samples", "sampling_settings"]


def sampling_settings(
    args: argparse.Namespace, plan: Plan, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Sampler, steps, spacing, eta, guidance and seed: the arguments, else the model's own
    ``[sample]`` settings (those its training previews used, from ``meta``), else dpmpp with
    20 log-SNR steps and no guidance."""
    own: dict[str, Any] = {}
    if meta is not None and isinstance(meta.get("config", {}).get("sample"), dict):
        own = meta["config"]["sample"]
    sampler = args.sampler or own.get("sampler") or "dpmpp"
    steps = args.steps
    if steps is None:
        default = {"ddpm": plan.num_steps, "ddim": 50, "dpmpp": 20}[sampler]
        if own.get("sampler") == sampler and own.get("steps"):
            default = int(own["steps"])
        steps = min(default, plan.num_steps)
    spacing = args.spacing
    if spacing is None:
        same = own.get("sampler") == sampler and own.get("spacing")
        spacing = own["spacing"] if same else ("logsnr" if sampler == "dpmpp" else "trailing")
    guidance = args.guidance
    if guidance is None:
        guidance = float(own.get("guidance", 1.0)) if plan.num_classes else 1.0
    return {
        "sampler": sampler,
        "steps": int(steps),
        "spacing": spacing,
        "eta": float(args.eta) if args.eta is not None else 0.0,
        "guidance": float(guidance),
        "seed": int(args.seed) if args.seed is not None else 0,
    }


def draw_samples(
    src: Source, args: argparse.Namespace, plan: Plan, num: int, log: Callable[[str], None]
) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
    """Samples from the model through ``ddpm sample``'s own code (into a temporary folder)."""
    from ddpmkit.training.sample_cmd import run_sample

    s = sampling_settings(args, plan, src.meta)
    if s["guidance"] != 1.0 and not plan.num_classes:
        raise ConfigError(f"--guidance: {src.path} is not a class-conditional model")
    ns = argparse.Namespace(
        checkpoint=str(src.path),
        sampler=s["sampler"],
        steps=s["steps"],
        spacing=s["spacing"],
        eta=s["eta"],
        guidance=s["guidance"],
        label=None,  # conditional models: labels i % K, class-balanced
        grid_by_class=False,
        num=num,
        seed=s["seed"],
        raw=args.raw,
        batch_size=args.batch_size,
    )
    with tempfile.TemporaryDirectory(prefix="ddpm-eval-") as tmp:
        ns.out = tmp
        run_sample(ns, log=log)
        with np.load(Path(tmp) / "samples.npz") as z:
            key = "points" if plan.toy else "images"
            x = torch.from_numpy(np.array(z[key]))
            labels = torch.from_numpy(np.array(z["labels"]).astype(np.int64))
    has_labels = bool(plan.num_classes) and bool((labels >= 0).all())
    info = {
        "num": num,
        "shape": list(x.shape[1:]),
        "weights": "raw" if args.raw else "EMA",
        **s,
        "labels": f"class-balanced: sample i has class i mod {plan.num_classes}"
        if has_labels
        else "unconditional",
    }
    if s["sampler"] not in ("ddim", "dpmpp"):
        info.pop("eta")
    return x, labels if has_labels else None, info
