"""FD against steps on the trained default model, guided as its preset samples (issue 16).

    .venv/bin/python benchmarks/fd_frontier_trained.py RUN --num 1000 --reference ode:100 \\
        --guidance 3 --guidance-interval 0.28,5.42 --threads 2 --budget-min 45

For ddpmkit's ODE solvers (``--samplers``, log-SNR spacing unless ``--spacing``) at each of
``--steps``, diffusers' schedulers (``--diffusers-kinds``) at ``--diffusers-steps`` driving the
same network through the same guided call, and a reference, draw ``--num`` class-balanced
samples (sample i has class i mod 10 and the initial noise of seed i in every configuration)
and score them with the shipped Fashion-MNIST classifier's features against the 10,000 test
images, as ``fd_vs_steps.py`` does (FD; k-NN precision/recall, k = 3; class accuracy), plus
``fd_vs_ref``: the FD of the row's features against the reference samples' own features.

Guidance: w = ``--guidance`` only where sigma_t = sqrt((1 - abar_t) / abar_t) is in
``--guidance-interval`` LO,HI (``ddpmkit.sampling.Guidance``; default: the run's ``[sample]``
section), w = 1 (the conditional model alone, one evaluation) elsewhere; so a guided step costs
2 model evaluations and an unguided one 1. ``evals`` in every row is counted, not assumed:
images through the network divided by ``--num``.

The reference (``--reference``): ``ode:STEPS`` is the probability-flow ODE solved by
DPM-Solver++(2M) on STEPS log-SNR steps (the converged ODE); ``ddpm:STEPS`` ancestral DDPM
(all T steps: 1,000). With ``--check N`` (default 100) the ODE reference is checked on the
first N samples: pixel RMSE (model range [-1, 1]) of DPM-Solver++ on 2 x STEPS steps and of
UniPC on STEPS steps against it, next to every row's RMSE to it on the same N (a 10-step
row's RMSE is the error the reference must be far below). ``--check-ddim STEPS:N`` adds DDIM
on STEPS trailing steps on the first N samples (DDIM-1000: the ODE's first-order solver on
every timestep).

Rows run in order of priority (reference, its check, then the step counts in the order given,
ddpmkit's solvers before diffusers' at each, then ``--optimised``); with ``--budget-min`` a
row whose cost, projected from the model evaluations per second measured so far, would end
past the budget is skipped (``skipped`` in the JSON). The JSON is rewritten after every row;
samples are cached in ``--cache`` so a rerun with ``--resume`` rescores instead of redrawing.
Only the numerics path of ``ddpmkit.load`` is used (fp32 on a CPU without native bf16).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from cpu_label import cpu_label
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
from ddpmkit.sample_settings import draw
from ddpmkit.sampling import NULL_LABEL, Guidance, initial_noise, sampling_timesteps
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.trained import TrainedModel, load
from ddpmkit.training.build import x0_clip_from_meta

RESULTS = Path(__file__).resolve().parent / "results" / "fd_frontier_trained_default_avx2.json"
Row = dict[str, Any]

# diffusers configurations: name -> (scheduler class name, kwargs). All get this model's betas,
# T, v-prediction, and x_0 clipped to [-1, 1] through dynamic thresholding with ratio 1 and
# sample_max_value 1 (threshold clamp(max |x_0|, 1, 1) = 1: exactly a clip, as ddpmkit's).
CLIP = {"thresholding": True, "dynamic_thresholding_ratio": 1.0, "sample_max_value": 1.0}
DIFFUSERS: dict[str, tuple[str, dict[str, Any]]] = {
    # DPM-Solver++(2M), steps uniform in lambda (Lu et al.), diffusers' cosine-schedule advice
    "diffusers-dpmpp-lu": (
        "DPMSolverMultistepScheduler",
        {
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "use_lu_lambdas": True,
            "lambda_min_clipped": -5.1,
            **CLIP,
        },
    ),
    # UniPC (bh2, order 2, the default), its default linspace spacing
    "diffusers-unipc": ("UniPCMultistepScheduler", {"solver_order": 2, **CLIP}),
    # UniPC with sigmas uniform in log sigma (= uniform in lambda), the closest to our logsnr
    "diffusers-unipc-exp": (
        "UniPCMultistepScheduler",
        {"solver_order": 2, "use_exponential_sigmas": True, **CLIP},
    ),
}


class Counting:
    """The network, counting the images it is called on (a guided call counts its 2 halves)."""

    def __init__(self, net: Callable[..., Tensor]):
        self.net, self.images = net, 0

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        self.images += int(x.shape[0])
        return self.net(x, t) if y is None else self.net(x, t, y)


def guided_output(
    net: Callable[..., Tensor], sched: NoiseSchedule, y: Tensor, g: Guidance
) -> Callable[[Tensor, int], Tensor]:
    """The raw (v) output at integer timestep t, guided exactly as ddpmkit's samplers guide:
    out_u + w (out_c - out_u) with w = g.at(schedule, t); the conditional call alone at w = 1."""

    def f(x: Tensor, t: int) -> Tensor:
        b = x.shape[0]
        tt = torch.full((b,), t, dtype=torch.long)
        w = g.at(sched, t)
        if w == 1.0:
            return net(x, tt, y[:b]).float()
        null = torch.full_like(y[:b], NULL_LABEL)
        both = net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y[:b], null])).float()
        return both[b:] + w * (both[:b] - both[b:])

    return f


def diffusers_scheduler(kind: str, sched: NoiseSchedule, prediction: str) -> Any:
    import diffusers

    cls_name, kw = DIFFUSERS[kind]
    pred = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[prediction]
    cls = getattr(diffusers, cls_name)
    return cls(
        num_train_timesteps=sched.num_steps,
        trained_betas=sched.betas.double().numpy(),
        prediction_type=pred,
        **kw,
    )


def diffusers_timesteps(kind: str, sched: NoiseSchedule, prediction: str, steps: int) -> list[int]:
    s = diffusers_scheduler(kind, sched, prediction)
    s.set_timesteps(steps)
    return [int(t) for t in s.timesteps]


def diffusers_draw(
    m: TrainedModel,
    net: Callable[..., Tensor],
    kind: str,
    steps: int,
    y: Tensor,
    g: Guidance,
    seeds: list[int],
    batch: int,
) -> Tensor:
    """diffusers' step loop around the same network, guidance and initial noise."""
    sched, shape = m.schedule, m.sample_shape
    out = []
    for lo in range(0, len(seeds), batch):
        sl = slice(lo, lo + batch)
        x = initial_noise((len(seeds[sl]), *shape), seeds=seeds[sl])
        f = guided_output(net, sched, y[sl], g)
        s = diffusers_scheduler(kind, sched, m.config.diffusion.prediction)
        s.set_timesteps(steps)
        # Start at index 0: with a repeated first timestep (use_lu_lambdas on this cosine
        # schedule gives 999, 999, ...) diffusers' own lookup starts at the second entry and
        # runs off the end of its sigmas (IndexError); pipelines' set_begin_index avoids it.
        s.set_begin_index(0)
        x = x * float(s.init_noise_sigma)
        with torch.inference_mode():
            for t in s.timesteps:
                x = s.step(f(s.scale_model_input(x, t), int(t)), t, x).prev_sample
        out.append(x.float())
    return torch.cat(out)


def ddpmkit_draw(
    m: TrainedModel,
    net: Callable[..., Tensor],
    sampler: str,
    y: Tensor,
    g: Guidance,
    seeds: list[int],
    batch: int,
    *,
    steps: int | None = None,
    spacing: str | None = None,
    timesteps: Sequence[int] | None = None,
) -> Tensor:
    """The library's own sampling path (``ddpmkit.sample_settings.draw``, what
    ``TrainedModel.sample`` runs), through the counting network; sample i seeded seeds[0] + i."""
    interval = "all" if math.isinf(g.sigma_hi) and g.sigma_lo == 0 else (g.sigma_lo, g.sigma_hi)
    settings = m.resolve_settings(
        sampler=sampler,
        steps=None if timesteps is not None else steps,
        spacing=None if timesteps is not None else spacing,
        timesteps=timesteps,
        guidance=g.scale,
        guidance_interval=interval,
        eta=0.0 if sampler in ("ddim", "dpmpp", "dpmpp3m") else None,
    )
    with torch.inference_mode():
        return draw(
            net,
            m.schedule,
            settings,
            shape=m.sample_shape,
            num=len(seeds),
            labels=y[: len(seeds)],
            seed=seeds[0],
            prediction=m.config.diffusion.prediction,
            clip_x0=x0_clip_from_meta(m.meta["data"]),
            bf16=m.compute.bf16,
            device=m.device,
            batch_size=batch,
        )


def evals_per_image(sched: NoiseSchedule, ts: Sequence[int], g: Guidance) -> int:
    return sum(2 if g.at(sched, int(t)) != 1.0 else 1 for t in ts)


def rmse(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).pow(2).mean().sqrt())


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    ref = meta["reference"]
    ref_row = next(r for r in rows if r.get("role") == "reference")
    ref_fd = float(ref_row["fd"])
    nchk = meta.get("check", 0)
    lines = [
        f"| library | sampler | spacing | steps | evals / image | FD | FD / ref | FD to ref "
        f"samples | RMSE to ref ({nchk}) | precision | recall | class acc. | s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "fd" not in r:
            continue
        lib = "diffusers" if str(r["sampler"]).startswith("diffusers") else "ddpmkit"
        name = str(r["sampler"]).removeprefix("diffusers-")
        if r.get("role") == "reference":
            name = f"**{name} (reference: {ref})**"
        e = r.get("rmse_to_ref")
        lines.append(
            f"| {lib} | {name} | {r['spacing']} | {r['steps']} | {r['evals']:.0f} | "
            f"{r['fd']:.2f} | {r['fd'] / ref_fd:.3f} | {r.get('fd_vs_ref', 0):.2f} | "
            f"{'' if e is None else f'{e:.4f}'} | {r['precision']:.3f} | {r['recall']:.3f} | "
            f"{r['class_acc']:.3f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--guidance", type=float, default=None, help="w (default: the run's)")
    ap.add_argument(
        "--guidance-interval",
        default=None,
        help="LO,HI: guide only where sigma_t is in (LO, HI]; 'all': every step "
        "(default: the run's [sample] guidance_interval)",
    )
    ap.add_argument("--samplers", nargs="*", default=["dpmpp", "unipc", "dpmpp3m", "ddim"])
    ap.add_argument("--spacing", default="logsnr", help="spacing of the ddpmkit rows")
    ap.add_argument("--steps", type=int, nargs="*", default=[10, 5, 20],
                    help="step counts, in order of priority")  # fmt: skip
    ap.add_argument(
        "--diffusers-kinds", nargs="*", default=["diffusers-dpmpp-lu", "diffusers-unipc"]
    )
    ap.add_argument("--diffusers-steps", type=int, nargs="*", default=[10, 5])
    ap.add_argument(
        "--extra",
        nargs="*",
        default=[],
        help="more rows after the others, SAMPLER:STEPS[:SPACING] (diffusers kinds too)",
    )
    ap.add_argument(
        "--optimised",
        nargs="*",
        default=[],
        help="SAMPLER:STEPS rows on a grid from ddpmkit.step_schedule.optimise_timesteps "
        "(optimised on --opt-batch other noises, seeds 10000.., with this guidance), last",
    )
    ap.add_argument("--opt-batch", type=int, default=32)
    ap.add_argument("--opt-max-evals", type=int, default=30)
    ap.add_argument("--reference", default="ode:100", help="ode:STEPS or ddpm:STEPS")
    ap.add_argument("--check", type=int, default=100, help="convergence subset (0: none)")
    ap.add_argument("--check-ddim", default=None, help="STEPS:N, DDIM on the first N")
    ap.add_argument("--budget-min", type=float, default=None)
    ap.add_argument("--json", type=Path, default=RESULTS)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/fd_frontier_cache"))
    ap.add_argument("--resume", action="store_true", help="reuse cached samples")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    m = load(args.run)
    own = m.settings
    w = own.guidance if args.guidance is None else args.guidance
    if args.guidance_interval is None:
        iv = own.guidance_interval
    elif args.guidance_interval.strip().lower() == "all":
        iv = None
    else:
        lo, hi = (float(v) for v in args.guidance_interval.split(","))
        iv = (lo, hi)
    g = Guidance(w, *iv) if iv is not None else Guidance(w)
    sched, pred = m.schedule, m.config.diffusion.prediction
    n = args.num
    y = (torch.arange(n) % m.num_classes).long()
    seeds = list(range(n))
    net = Counting(m.network)

    test = load_dataset("fashion_mnist", split="test", log=lambda s: None)
    ref_ex = extract(test.images, "fashion_mnist")
    ref_mu, ref_cov = feature_statistics(ref_ex.features)
    held = extract(test.images[:n], "fashion_mnist").features
    floor = frechet_distance(*feature_statistics(held), ref_mu, ref_cov)
    g0 = torch.Generator().manual_seed(0)
    pr_ref = ref_ex.features[torch.randperm(len(test), generator=g0)[:n]]

    kind_ref, _, ref_steps_s = args.reference.partition(":")
    ref_steps = int(ref_steps_s)
    # The plan: (name, sampler, spacing, steps, count, role); count = images drawn.
    plan: list[tuple[str, str, str, int, int, str]] = []
    if kind_ref == "ode":
        plan.append((f"dpmpp-{ref_steps}", "dpmpp", "logsnr", ref_steps, n, "reference"))
        if args.check:
            c = args.check
            plan.append(
                (f"check-dpmpp-{2 * ref_steps}", "dpmpp", "logsnr", 2 * ref_steps, c, "check")
            )
            plan.append((f"check-unipc-{ref_steps}", "unipc", "logsnr", ref_steps, c, "check"))
    elif kind_ref == "ddpm":
        sp = "trailing"
        plan.append((f"ddpm-{ref_steps}", "ddpm", sp, ref_steps, n, "reference"))
    else:
        raise SystemExit(f"--reference: ode:STEPS or ddpm:STEPS, got {args.reference!r}")
    if args.check_ddim:
        st, _, cn = args.check_ddim.partition(":")
        plan.append((f"check-ddim-{st}", "ddim", "trailing", int(st), int(cn), "check"))
    for steps in args.steps:
        for s in args.samplers:
            plan.append((f"{s}-{args.spacing}-{steps}", s, args.spacing, steps, n, "row"))
        if steps in args.diffusers_steps:
            for k in args.diffusers_kinds:
                plan.append((f"{k}-{steps}", k, "default", steps, n, "row"))
    for spec in args.extra:
        parts = spec.split(":")
        s, steps = parts[0], int(parts[1])
        sp = parts[2] if len(parts) > 2 else ("default" if s.startswith("diffusers") else "logsnr")
        plan.append((f"{s}-{sp}-{steps}", s, sp, steps, n, "row"))
    for spec in args.optimised:
        s, _, st = spec.partition(":")
        plan.append((f"{s}-optimised-{st}", s, "optimised", int(st), n, "row"))

    def grid_evals(sampler: str, spacing: str, steps: int) -> int:
        if sampler.startswith("diffusers"):
            return evals_per_image(sched, diffusers_timesteps(sampler, sched, pred, steps), g)
        sp = "logsnr" if spacing == "optimised" else spacing
        ts = sampling_timesteps(sched, steps, sp)
        return evals_per_image(sched, ts, g) * (2 if sampler == "heun" else 1)

    meta: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "run": str(args.run),
        "train_steps": m.meta.get("step", "?"),
        "weights": "EMA (the run's model/)",
        "prediction": pred,
        "compute_path": m.compute.describe(),
        "num": n,
        "labels": "class-balanced: sample i has class i mod 10",
        "seeds": "sample i starts from initial_noise(seeds=[i]) in every row",
        "guidance": w,
        "guidance_interval": list(iv) if iv is not None else "all",
        "reference": args.reference,
        "check": args.check,
        "ref_num": len(test),
        "extractor": ref_ex.extractor,
        "floor_fd": floor,
        "threads": args.threads,
        "budget_min": args.budget_min,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        **cpu_label(),
    }
    try:
        import diffusers

        meta["diffusers"] = diffusers.__version__
        meta["diffusers_configs"] = {
            k: v for k, v in DIFFUSERS.items() if k in args.diffusers_kinds
        }
    except ImportError:
        pass
    rows: list[Row] = []
    skipped: list[Row] = []
    samples: dict[str, Tensor] = {}
    ref_feats: Tensor | None = None
    sec_per_eval: float | None = None  # seconds per image evaluation, measured
    spent_draw = [0.0, 0]  # seconds, image evaluations (rows drawn now, not cached)
    args.cache.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        meta["elapsed_min"] = (time.perf_counter() - t_start) / 60
        args.json.parent.mkdir(parents=True, exist_ok=True)
        body = {"meta": meta, "rows": rows, "skipped": skipped}
        args.json.write_text(json.dumps(body, indent=1))

    for name, sampler, spacing, steps, count, role in plan:
        e_img = grid_evals(sampler, spacing, steps)
        cache = args.cache / f"{name}_n{count}_w{w:g}_{meta['guidance_interval']}.pt".replace(
            " ", ""
        )
        cached = args.resume and cache.is_file()
        if args.budget_min is not None and sec_per_eval is not None and not cached:
            extra = (
                args.opt_batch * (129 + args.opt_max_evals * e_img) if spacing == "optimised" else 0
            )
            projected = (e_img * count + extra) * sec_per_eval
            elapsed = time.perf_counter() - t_start
            if elapsed + projected > args.budget_min * 60:
                skipped.append({"name": name, "projected_s": projected, "evals": e_img})
                print(f"skip {name}: projected {projected / 60:.1f} min", flush=True)
                save()
                continue
        row: Row = {"name": name, "sampler": sampler, "spacing": spacing, "steps": steps}
        row["role"], row["num"] = role, count
        t0 = time.perf_counter()
        net.images = 0
        ts_opt: list[int] | None = None
        if cached:
            x = torch.load(cache)
            row["cached"] = True
        else:
            if spacing == "optimised":
                from ddpmkit.step_schedule import optimise_timesteps

                ob = args.opt_batch
                oy = (torch.arange(ob) % m.num_classes).long()
                ox = initial_noise((ob, *m.sample_shape), seeds=[10000 + i for i in range(ob)])
                kw = {"y": oy, "guidance_scale": g, "prediction": pred, "clip_x0": 1.0}
                with torch.inference_mode():
                    res = optimise_timesteps(net, sched, ox, sampler, steps,
                                             max_evals=args.opt_max_evals, starts=1,
                                             sampler_kwargs=kw, log=print)  # fmt: skip
                ts_opt = list(res.timesteps)
                row["optimisation"] = {
                    "timesteps": ts_opt,
                    "objective": res.objective,
                    "baseline": res.baseline,
                    "start_spacing": res.start_spacing,
                    "batch": ob,
                    "seeds": "10000..",
                    "max_evals": args.opt_max_evals,
                    "image_evals": net.images,
                    "seconds": time.perf_counter() - t0,
                }
                net.images = 0
            if sampler.startswith("diffusers"):
                try:
                    x = diffusers_draw(m, net, sampler, steps, y, g, seeds[:count], args.batch)
                except Exception as e:  # a configuration diffusers fails on: recorded
                    skipped.append({"name": name, "error": repr(e)[:300]})
                    print(f"{name}: {e!r}", flush=True)
                    save()
                    continue
            elif ts_opt is not None:
                x = ddpmkit_draw(m, net, sampler, y, g, seeds[:count], args.batch, timesteps=ts_opt)
            else:
                x = ddpmkit_draw(m, net, sampler, y, g, seeds[:count], args.batch,
                                 steps=steps, spacing=spacing)  # fmt: skip
            torch.save(x, cache)
            row["evals"] = net.images / count
            secs = time.perf_counter() - t0
            spent_draw[0] += secs
            spent_draw[1] += net.images + int(row.get("optimisation", {}).get("image_evals", 0))
            sec_per_eval = spent_draw[0] / max(spent_draw[1], 1)
        row.setdefault("evals", e_img)
        row["seconds"] = time.perf_counter() - t0
        if sampler.startswith("diffusers"):
            row["timesteps"] = diffusers_timesteps(sampler, sched, pred, steps)
        elif ts_opt is not None:
            row["timesteps"] = ts_opt
        elif steps <= 50:
            row["timesteps"] = sampling_timesteps(sched, steps, spacing)
        samples[name] = x
        ref_name = plan[0][0]
        if args.check and role != "reference":
            c = min(args.check, count)
            row["rmse_to_ref"] = rmse(x[:c], samples[ref_name][:c])
            row["rmse_to_ref_n"] = c
        if count == n:
            ex = extract(from_model_range(x), "fashion_mnist")
            mu, cov = feature_statistics(ex.features)
            p, r = precision_recall(pr_ref, ex.features, k=3)
            assert ex.probs is not None
            row.update(
                fd=frechet_distance(mu, cov, ref_mu, ref_cov),
                precision=p,
                recall=r,
                class_acc=class_accuracy(ex.probs, y),
            )
            if role == "reference":
                ref_feats = ex.features
            elif ref_feats is not None:
                row["fd_vs_ref"] = frechet_distance(mu, cov, *feature_statistics(ref_feats))
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "timesteps"}), flush=True)
        save()
    meta["seconds_per_image_evaluation"] = sec_per_eval
    save()
    if any(r.get("role") == "reference" and "fd" in r for r in rows):
        print(markdown(rows, meta))


if __name__ == "__main__":
    main()
