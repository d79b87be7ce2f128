"""``ddpm eval`` of images: FD, Inception Score, precision/recall, class accuracy, bits/dim.

:func:`evaluate_images` loads the reference split, chooses the feature extractor
(:mod:`ddpmkit.evaluation.extractor`), draws or reads the samples and compares their features
with the (cached, :mod:`ddpmkit.evaluation.reference`) reference statistics. Models of images
also get the NLL bound in bits/dim on real images (:func:`_likelihood`), and every image
evaluation the memorisation check (:mod:`ddpmkit.evaluation.memorisation_eval`). Every check of
the input happens before sampling and before anything is written; writes ``OUT/eval.json`` and,
with the memorisation check, ``OUT/nearest.png`` and ``OUT/nearest.npz``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ddpmkit.data.images import DatasetError, ImageData
from ddpmkit.evaluation.extractor import choose_extractor
from ddpmkit.evaluation.memorisation_eval import memorisation_check, write_memorisation
from ddpmkit.evaluation.plan import (
    MIN_SAMPLES,
    PR_K,
    Plan,
    load_split,
    seeded_indices,
    shape_str,
    split_name,
    subset,
)
from ddpmkit.evaluation.samples import draw_samples
from ddpmkit.evaluation.sources import Source

if TYPE_CHECKING:
    from ddpmkit.evaluation.options import EvalOptions

__all__ = ["evaluate_images"]


def _cache_folder(opts: EvalOptions) -> Path | None:
    """The reference statistics cache of ``--cache-dir``/``--no-cache``, or the default."""
    from ddpmkit.evaluation.reference import default_cache_dir

    if opts.no_cache:
        return None
    return Path(opts.cache_dir).expanduser() if opts.cache_dir else default_cache_dir()


def evaluate_images(
    src: Source,
    opts: EvalOptions,
    plan: Plan,
    report: dict[str, Any],
    notes: list[str],
    log: Callable[[str], None],
) -> list[Path]:
    """Fill ``report`` with the image metrics and write the files; returns the files written."""
    from ddpmkit.evaluation.metrics import (
        class_accuracy,
        feature_statistics,
        frechet_distance,
        inception_score,
        precision_recall,
    )
    from ddpmkit.evaluation.report import METRIC_INFO, depends_on

    # Everything that can fail on bad input happens before sampling and before any write.
    full_ref = load_split(plan, opts.ref_split, log)
    ref_shape = tuple(int(s) for s in full_ref.images.shape[1:])
    if ref_shape != plan.sample_shape:
        what = "the model makes" if src.kind == "model" else f"{src.path} holds"
        raise DatasetError(
            f"{what} {shape_str(plan.sample_shape)} samples but {plan.dataset} images load as "
            f"{shape_str(ref_shape)}; evaluate against the data the samples were made for"
        )
    if plan.dataset == "folder" and src.kind != "model":
        notes.append(
            f"reference folder images brought to the samples' shape {shape_str(ref_shape)} "
            "(scaled to cover, centre-cropped; channels converted)"
        )
    ref = subset(full_ref, opts.ref_num, "--ref-num")
    if len(ref) <= PR_K:
        raise DatasetError(f"the reference set has {len(ref)} images; need more than {PR_K}")
    feats = choose_extractor(plan, opts.batch_size, notes)  # before sampling: fail early
    if src.kind == "model":
        num = opts.num if opts.num is not None else 1000
        samples, labels, sinfo = draw_samples(src, opts, plan, num, log)
    else:
        assert src.images is not None
        samples = src.images[: opts.num] if opts.num is not None else src.images
        labels = src.labels[: samples.shape[0]] if src.labels is not None else None
        if samples.shape[0] < MIN_SAMPLES:
            raise DatasetError(
                f"{src.path}: {samples.shape[0]} samples; need at least {MIN_SAMPLES}"
            )
        if labels is not None and bool((labels < 0).any()):
            labels = None  # "-1 = no label" (unconditional samples)
        if labels is not None and plan.num_classes and int(labels.max()) >= plan.num_classes:
            raise DatasetError(
                f"{src.path}: labels go up to {int(labels.max())}, but {plan.dataset} has "
                f"{plan.num_classes} classes"
            )
        sinfo = {
            "num": int(samples.shape[0]),
            "shape": list(samples.shape[1:]),
            "weights": None,
            "labels": "from the file" if labels is not None else "none",
        }
    n = int(samples.shape[0])
    cache = _cache_folder(opts)
    ref_desc = f"{plan.dataset} {split_name(plan, opts.ref_split)}: {ref.source}"
    ref_stats, cache_state, key = feats.statistics(ref, ref_desc, cache, log)
    log(f"extracting features of {n} samples")
    ex = feats.extract(samples)
    mu, cov = feature_statistics(ex.features)
    metrics: dict[str, float] = {"fd": frechet_distance(mu, cov, ref_stats.mu, ref_stats.cov)}
    pr_n = min(n, ref_stats.size)
    real_pr = ref_stats.features[seeded_indices(ref_stats.size, pr_n)]
    metrics["precision"], metrics["recall"] = precision_recall(real_pr, ex.features, k=PR_K)
    if ex.probs is not None:
        metrics["inception_score"] = inception_score(ex.probs)
        if labels is not None:
            metrics["class_accuracy"] = class_accuracy(ex.probs, labels)
    report["samples"] = sinfo
    report["reference"] = {
        "dataset": plan.dataset,
        "split": split_name(plan, opts.ref_split),
        "size": len(ref),
        "description": ref.source,
        "fingerprint": ref_stats.info["fingerprint"],
        "precision_recall_size": pr_n,
        "cache_key": key,
    }
    report["reference_cache"] = cache_state
    report["extractor"] = feats.name
    report["extractor_id"] = feats.identity

    files: list[Path] = []
    like = None
    bpd_n = opts.bpd_images if opts.bpd_images is not None else 100
    if src.kind == "model" and bpd_n > 0:
        like = _likelihood(src, opts, plan, full_ref, bpd_n, log)
    report["likelihood"] = like

    mem: dict[str, Any] | None = None
    mem_files: dict[str, Any] = {}
    floor: float | None = None
    if opts.memorisation > 0:
        mem, mem_files, floor = memorisation_check(
            samples, ex.features, plan, opts, ref, ref_stats, feats, cache, log
        )
    if floor is not None:
        metrics["fd_real_floor"] = floor
    report["metrics"] = metrics
    report["metric_info"] = {k: METRIC_INFO[k] for k in metrics}
    report["memorisation"] = mem
    report["depends_on"] = depends_on(report)
    report["notes"] = notes

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    if mem is not None:
        files += write_memorisation(out, samples, mem_files)
    from ddpmkit.evaluation.report import write_json

    files.insert(0, write_json(out / "eval.json", report))
    return files


def _likelihood(
    src: Source,
    opts: EvalOptions,
    plan: Plan,
    data: ImageData,
    n: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Mean NLL bound (bits/dim) of the model on the first n images of ``data``."""
    from ddpmkit.data.images import to_model_range
    from ddpmkit.evaluation.likelihood import vlb_terms
    from ddpmkit.trained import load
    from ddpmkit.training.build import default_device

    trained = load(src.path, raw=opts.raw, device=default_device())
    model, sched, cfg, device = trained.network, trained.schedule, trained.config, trained.device
    sched_d = sched.to(device)
    n = min(n, len(data))
    strata = opts.bpd_timesteps or None
    conditional = bool(plan.num_classes) and data.labels is not None
    gen = torch.Generator().manual_seed(0)
    totals, parts = [], {"prior_bpd": [], "vb_bpd": [], "decoder_bpd": []}  # type: ignore[var-annotated]
    log(f"NLL bound on {n} images ({strata or 'all'} timestep strata)")
    for lo in range(0, n, opts.batch_size):
        hi = min(n, lo + opts.batch_size)
        x0 = to_model_range(data.images[lo:hi]).to(device)
        y = data.labels[lo:hi].to(device) if conditional and data.labels is not None else None
        terms = vlb_terms(
            model,
            sched_d,
            x0,
            y=y,
            prediction=cfg.diffusion.prediction,
            num_timesteps_eval=strata,
            generator=gen,
        )
        totals.append(terms["total_bpd"].cpu())
        for k in parts:
            parts[k].append(terms[k].cpu())
    total = torch.cat(totals)
    std = float(total.std()) if n > 1 else 0.0
    return {
        "bpd": float(total.mean()),
        "bpd_stderr": std / n**0.5,
        **{k.replace("_bpd", "_bpd_mean"): float(torch.cat(v).mean()) for k, v in parts.items()},
        "num_images": n,
        "split": split_name(plan, opts.ref_split),
        "images": f"the first {n} images of the {plan.dataset} "
        f"{split_name(plan, opts.ref_split)} split",
        "timesteps": f"{strata} stratified timesteps (unbiased estimate of the bound)"
        if strata and strata < plan.num_steps - 1
        else f"all {plan.num_steps - 1} timesteps",
        "conditioning": "each image's true label (log p(x | y))" if conditional else "none",
        "weights": "raw" if opts.raw else "EMA",
        "precision": "fp32",
        "variance": "learned (the model's v)" if cfg.diffusion.learn_sigma else "fixed beta~_t",
    }
