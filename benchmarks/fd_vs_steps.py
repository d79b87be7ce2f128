"""Sample quality versus steps on a trained Fashion-MNIST model: the docs' second sampler table.

    .venv/bin/python benchmarks/fd_vs_steps.py runs/fashion_mnist            # print the table
    .venv/bin/python benchmarks/fd_vs_steps.py runs/fashion_mnist --write-docs --diffusers

For each sampler of ``ddpmkit.sampling`` (DDPM ancestral, DDIM, DPM-Solver++(2M)) at 5, 10, 20
and 50 steps, and DDPM at all T steps (the reference), draw ``--num`` class-balanced samples
(EMA weights, per-sample seeds: row i starts from the same x_T in every configuration) and score
them with the shipped Fashion-MNIST classifier's penultimate features against the 10,000 test
images: Frechet distance (FD); k-NN precision and recall (k = 3, against a seeded subset of
the test set of the same size); the share of samples the classifier puts in the requested
class. ``--diffusers`` adds diffusers' ``DDIMScheduler`` and
``DPMSolverMultistepScheduler`` driving the same network through the same guided eps function,
and measures each step loop's own overhead with a zero network.

FD at a few hundred samples is biased upwards (it shrinks as N grows), so compare rows only at
the same ``--num``; the reference row carries the same bias.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ddpmkit.data.images import from_model_range
from ddpmkit.data.registry import load_dataset
from ddpmkit.evaluation.classifier import extract
from ddpmkit.evaluation.metrics import (
    class_accuracy,
    feature_statistics,
    frechet_distance,
    precision_recall,
)
from ddpmkit.sampling import NULL_LABEL, SAMPLERS, initial_noise
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.trained import load

DOC = Path(__file__).resolve().parents[1] / "docs" / "samplers.md"
BEGIN, END = "<!-- fashion-table:begin -->", "<!-- fashion-table:end -->"
RESULTS = Path(__file__).resolve().parent / "results" / "fd_vs_steps_fashion_mnist.json"
STEPS = (5, 10, 20, 50)
DEFAULT_SPACING = {
    "ddpm": "trailing",
    "ddim": "trailing",
    "dpmpp": "logsnr",
    "dpmpp-sde": "logsnr",
    "dpmpp-noclip": "logsnr",
}
# Rows that are a sampler of ddpmkit.sampling with options: name -> (sampler, extra kwargs).
# dpmpp-sde: SDE-DPM-Solver++(2M) (eta = 1); dpmpp-noclip: without clipping x_0 to [-1, 1], to
# isolate what clipping is worth (diffusers' DPM-Solver++ does not clip unless thresholding).
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "dpmpp-sde": ("dpmpp", {"eta": 1.0}),
    "dpmpp-noclip": ("dpmpp", {"clip_x0": None}),
}

Row = dict[str, object]


def guided_eps(
    model: Callable[..., Tensor], y: Tensor, w: float
) -> Callable[[Tensor, Tensor], Tensor]:
    """eps(x_t, t) with classifier-free guidance: eps_u + w (eps_c - eps_u) (Ho & Salimans)."""

    def f(x: Tensor, t: Tensor) -> Tensor:
        b = x.shape[0]
        if w == 1.0:
            return model(x, t, y[:b]).float()
        null = torch.full_like(y[:b], NULL_LABEL)
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y[:b], null])).float()
        return both[b:] + w * (both[:b] - both[b:])

    return f


def diffusers_sample(
    kind: str,
    eps_fn: Callable[[Tensor, Tensor], Tensor],
    sched: NoiseSchedule,
    x_T: Tensor,
    steps: int,
) -> Tensor:
    """Sample with a diffusers scheduler configured to our schedule (same betas, same T).

    Both use ``trained_betas`` = our betas, epsilon prediction and x_0 clipping to [-1, 1]
    (DDIM ``clip_sample``; DPM-Solver++ has no clipping switch without thresholding, so none).
    Spacing: diffusers' defaults (DDIM "leading", DPM-Solver "linspace") and, as ``-trailing``,
    the "trailing" spacing; ``diffusers-dpmpp-clipped`` sets ``lambda_min_clipped = -5.1``, the
    value diffusers recommends for cosine schedules (without it, its DPM-Solver++ fails on this
    schedule's last step, abar = 2.4e-9); ``diffusers-dpmpp-clipx0`` adds x_0 clipping to
    [-1, 1] through its thresholding switch, which isolates what clipping is worth.
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    betas = sched.betas.double().numpy()
    spacing = "trailing" if kind.endswith("-trailing") else None
    common: dict[str, object] = {
        "num_train_timesteps": sched.num_steps,
        "trained_betas": betas,
        "prediction_type": "epsilon",
    }
    if spacing:
        common["timestep_spacing"] = spacing
    s: DDIMScheduler | DPMSolverMultistepScheduler
    if kind.startswith("diffusers-ddim"):
        s = DDIMScheduler(**common, clip_sample=True, set_alpha_to_one=False)
    else:
        extra: dict[str, object] = {}
        if kind.endswith("-clipped") or kind.endswith("-clipx0"):  # advice for cosine schedules
            extra["lambda_min_clipped"] = -5.1
        if kind.endswith("-clipx0"):
            # Dynamic thresholding with ratio 1 and sample_max_value 1: the threshold is
            # clamp(max |x_0|, 1, 1) = 1, i.e. x_0 clipped to [-1, 1] exactly as ours.
            extra.update(thresholding=True, dynamic_thresholding_ratio=1.0, sample_max_value=1.0)
        s = DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=2, **extra
        )
    s.set_timesteps(steps)
    x = x_T * s.init_noise_sigma
    for t in s.timesteps:
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long)
        x = s.step(eps_fn(x, tt), t, x).prev_sample
    return x


def draw(
    model: Callable[..., Tensor],
    sched: NoiseSchedule,
    sampler: str,
    steps: int,
    spacing: str,
    y: Tensor,
    guidance: float,
    seeds: list[int],
    batch: int,
) -> Tensor:
    """Samples (N, C, H, W) in [-1, 1], in batches, bf16 autocast, per-sample seeds."""
    out = []
    for i in range(0, len(seeds), batch):  # (the diffusers loop is not under no_grad by itself)
        sl = slice(i, i + batch)
        x_T = initial_noise((len(seeds[sl]), 1, 28, 28), seeds=seeds[sl])
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            if sampler.startswith("diffusers"):
                eps = guided_eps(model, y[sl], guidance)
                x = diffusers_sample(sampler, eps, sched, x_T, steps)
            else:
                base, extra = VARIANTS.get(sampler, (sampler, {}))
                # "all": every timestep, where every spacing is the same (the table's label)
                kwargs: dict[str, object] = {
                    "clip_x0": 1.0,
                    "spacing": "trailing" if spacing == "all" else spacing,
                    **extra,
                }
                if base == "ddpm" or kwargs.get("eta"):
                    kwargs["seeds"] = [s + 10**6 for s in seeds[sl]]
                x = SAMPLERS[base](
                    model, sched, x_T, num_steps=steps, y=y[sl], guidance_scale=guidance, **kwargs
                )
        out.append(x.float())
    return torch.cat(out)


def score(x: Tensor, y: Tensor, ref_mu: Tensor, ref_cov: Tensor, ref_feats: Tensor) -> Row:
    ex = extract(from_model_range(x), "fashion_mnist")
    mu, cov = feature_statistics(ex.features)
    p, r = precision_recall(ref_feats, ex.features, k=3)
    assert ex.probs is not None
    return {
        "fd": frechet_distance(mu, cov, ref_mu, ref_cov),
        "precision": p,
        "recall": r,
        "class_acc": class_accuracy(ex.probs, y),
    }


def loop_overhead(sched: NoiseSchedule, steps: int, batch: int) -> dict[str, float]:
    """Seconds per step of each sampler loop around a zero network (the loop's own cost)."""

    def zero(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return torch.zeros_like(x)

    y = torch.zeros(batch, dtype=torch.long)
    x_T = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    res: dict[str, float] = {}
    for name in ("ddim", "dpmpp", "diffusers-ddim", "diffusers-dpmpp"):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            if name.startswith("diffusers"):
                diffusers_sample(name, guided_eps(zero, y, 1.0), sched, x_T, steps)
            else:
                SAMPLERS[name](zero, sched, x_T, num_steps=steps, y=y, clip_x0=1.0)
            best = min(best, time.perf_counter() - t0)
        res[name] = best / steps
    return res


def markdown(rows: list[Row], meta: dict[str, object]) -> str:
    rs = meta["reference_steps"]
    lines = [
        f"{meta['num']} samples per row (class-balanced), guidance w = {meta['guidance']}, EMA "
        f"weights of `{meta['run']}` ({meta['train_steps']} training steps); reference: the "
        f"{meta['ref_num']} Fashion-MNIST test images; features: {meta['extractor']}. "
        f"FD of {meta['num']} held-out test images against the rest (the floor at this N): "
        f"{meta['floor_fd']:.2f}.",
        "",
        f"| sampler | spacing | steps | FD | FD / DDPM-{rs} | precision | recall | class acc. |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ref = next(float(r["fd"]) for r in rows if r["sampler"] == "ddpm" and r["steps"] == rs)  # type: ignore[arg-type]
    for r in rows:
        fd = float(r["fd"])  # type: ignore[arg-type]
        lines.append(
            f"| {r['sampler']} | {r['spacing']} | {r['steps']} | {fd:.2f} | {fd / ref:.2f} | "
            f"{float(r['precision']):.3f} | {float(r['recall']):.3f} | "  # type: ignore[arg-type]
            f"{float(r['class_acc']):.3f} |"  # type: ignore[arg-type]
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--steps", type=int, nargs="*", default=list(STEPS))
    ap.add_argument("--no-reference", action="store_true", help="skip the DDPM reference row")
    ap.add_argument("--reference-steps", type=int, default=None,
                    help="DDPM steps of the reference row (default: all T)")  # fmt: skip
    ap.add_argument("--samplers", nargs="*", default=["ddpm", "ddim", "dpmpp"])
    kinds = ["diffusers-ddim", "diffusers-ddim-trailing", "diffusers-dpmpp"]
    ap.add_argument("--diffusers-kinds", nargs="*", default=kinds)
    ap.add_argument("--diffusers", action="store_true")
    ap.add_argument(
        "--loop-overhead", action="store_true", help="time the step loops (needs diffusers)"
    )
    ap.add_argument("--diffusers-steps", type=int, nargs="*", default=None,
                    help="step counts for the diffusers rows (default: --steps)")  # fmt: skip
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument(
        "--seed-offset", type=int, default=0, help="sample i uses seed OFFSET + i (default 0)"
    )
    ap.add_argument("--json", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--rows-from",
        type=Path,
        default=None,
        help="JSON-lines rows printed by an earlier run with the same model, --num and "
        "--guidance (e.g. one that stopped before its reference row): they come first",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    m = load(args.run)
    model, sched, meta = m.network, m.schedule, m.meta
    test = load_dataset("fashion_mnist", split="test", log=lambda s: None)
    ref = extract(test.images, "fashion_mnist")
    ref_mu, ref_cov = feature_statistics(ref.features)
    n = args.num
    # Floor: n real held-out test images against all test images (same N as every row).
    held = extract(test.images[:n], "fashion_mnist").features
    floor = frechet_distance(*feature_statistics(held), ref_mu, ref_cov)
    # Precision/recall compare sets of equal size (Kynkaanniemi et al.): a seeded subset of n.
    pr_ref = ref.features[torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:n]]
    y = torch.arange(n) % 10
    seeds = list(range(args.seed_offset, args.seed_offset + n))

    configs: list[tuple[str, str, int]] = []
    for sampler in args.samplers:
        for steps in args.steps:
            configs.append((sampler, DEFAULT_SPACING[sampler], steps))
    if args.diffusers:
        for kind in args.diffusers_kinds:
            for steps in args.diffusers_steps or args.steps:
                configs.append((kind, "default" if "trailing" not in kind else "trailing", steps))
    ref_steps = args.reference_steps or sched.num_steps
    if not args.no_reference:
        configs.append(("ddpm", "all" if ref_steps == sched.num_steps else "trailing", ref_steps))
    rows: list[Row] = []
    if args.rows_from is not None:
        for line in args.rows_from.read_text().splitlines():
            if line.startswith("{") and '"fd"' in line:
                rows.append(json.loads(line))
    for sampler, spacing, steps in configs:
        t0 = time.perf_counter()
        x = draw(model, sched, sampler, steps, spacing, y, args.guidance, seeds, args.batch)
        secs = time.perf_counter() - t0
        row: Row = {"sampler": sampler, "spacing": spacing, "steps": steps, "seconds": secs}
        row.update(score(x, y, ref_mu, ref_cov, pr_ref))
        rows.append(row)
        print(json.dumps(row), flush=True)
    info: dict[str, object] = {
        "run": str(args.run),
        "train_steps": meta.get("step", "?"),
        "num": n,
        "guidance": args.guidance,
        "ref_num": len(test),
        "extractor": ref.extractor,
        "floor_fd": floor,
        "reference_steps": ref_steps,
        "threads": args.threads,
        "seed_offset": args.seed_offset,
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.rows_from is not None:
        info["rows_from"] = f"{len(rows) - len(configs)} rows measured earlier ({args.rows_from})"
    if args.diffusers or args.loop_overhead:
        # Repeated, alternating 1 and 2 threads: the loop is a few small ops, noisy to time.
        runs: dict[str, list[float]] = {}
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            for name, sec in loop_overhead(sched, 20, 256).items():
                runs.setdefault(name, []).append(round(sec * 1e3, 3))
        torch.set_num_threads(args.threads)
        info["loop_overhead_ms_per_step_batch256_threads_1_2_1_2"] = runs
        print(json.dumps(runs))
    ref_row = [r for r in rows if r["sampler"] == "ddpm" and r["steps"] == ref_steps]
    if ref_row:
        rows = [r for r in rows if r is not ref_row[0]] + ref_row[:1]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": info, "rows": rows}, indent=1))
    if ref_row:  # measured now or among --rows-from: the table, reference row last
        table = markdown(rows, info)
        print(table)
        if args.write_docs:
            doc = DOC.read_text()
            if BEGIN in doc:
                doc = re.sub(
                    re.escape(BEGIN) + ".*?" + re.escape(END),
                    lambda m: f"{BEGIN}\n{table}\n{END}",
                    doc,
                    flags=re.S,
                )
            else:
                doc += f"\n## A trained model: Fashion-MNIST\n\n{BEGIN}\n{table}\n{END}\n"
            DOC.write_text(doc)


if __name__ == "__main__":
    main()
