"""``ddpm schedule``: optimise a trained model's timesteps for one solver and step count.

    ddpm schedule RUN [--sampler unipc] [--steps 10] [--batch 64] [--out RUN/steps_10.json]
    ddpm sample RUN --schedule-from RUN/steps_10.json

A thin layer over :func:`ddpmkit.step_schedule.optimise_timesteps`: the model is loaded as
``ddpm sample`` loads it (EMA weights, the run's numeric path), sampled as its ``[sample]``
section says (guidance in its noise interval, classes in turn, the data's x_0 clipping, the
final step), from ``--batch`` initial
noises seeded ``--seed + i`` (default 10,000: not the noises of ``ddpm sample``'s default
seeds 0, 1, ...). The grid, its objective and that of the best fixed spacing are written as JSON
(:func:`ddpmkit.step_schedule.save_schedule`). A bad input is one line and nothing is written.
The run's ``[sample]`` section is not changed: a grid is used where ``--schedule-from`` names
it, or where the run's ``[sample] schedule_file`` does; for such a run the default ``--out``
is that file (its sampler and steps are not read: the section's are the defaults here).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ddpmkit.errors import SettingsError
from ddpmkit.sampling import DEFAULT_STEPS, Guidance, initial_noise
from ddpmkit.step_schedule import ODE_SAMPLERS, optimise_timesteps, save_schedule
from ddpmkit.trained import load
from ddpmkit.training.build import x0_clip_from_meta

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``schedule`` subcommand to ``sub``."""
    p = sub.add_parser(
        "schedule",
        help="optimise the timesteps of a few-step solver for a trained model",
        description="Minimise the mean squared distance between the few-step samples and a "
        "many-step reference from the same noise (docs/samplers.md).",
    )
    p.add_argument("checkpoint", help="run folder, checkpoint folder or exported model folder")
    p.add_argument(
        "--sampler",
        default=None,
        choices=list(ODE_SAMPLERS),
        help="solver to optimise for (default: the run's [sample] sampler if it is one of "
        "these, else unipc)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timesteps of the grid (model evaluations; heun: time points, 2n-1 evaluations); "
        "default: the run's, else the sampler's default",
    )
    p.add_argument("--batch", type=int, default=64, help="initial noises measured (default 64)")
    p.add_argument(
        "--reference-steps",
        type=int,
        default=100,
        help="log-SNR steps of the unipc reference solution (default 100)",
    )
    p.add_argument(
        "--max-evals",
        type=int,
        default=40,
        help="few-step runs on the batch at most, the fixed spacings' included (default 40)",
    )
    p.add_argument(
        "--starts",
        type=int,
        default=1,
        help="descents, from the best fixed spacings in turn (default 1: at 40 evaluations one "
        "descent gets two sweeps; the frontier of docs/samplers.md used 3 with 300)",
    )
    p.add_argument("--seed", type=int, default=10_000, help="noise i of the batch uses seed + i")
    p.add_argument(
        "--free-end",
        action="store_true",
        help="optimise the last timestep too (default: it stays at 0, where the x_0 estimate "
        "is least blurred; docs/samplers.md)",
    )
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument(
        "--out",
        default=None,
        help="JSON file to write (default: the run's [sample] schedule_file if it names one, "
        "else CHECKPOINT/steps_<N>.json)",
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    for flag, value, low in (
        ("batch", args.batch, 1),
        ("reference_steps", args.reference_steps, 2),
        ("max_evals", args.max_evals, 1),
        ("starts", args.starts, 1),
    ):
        if value < low:
            raise SettingsError(flag, f"must be >= {low}, got {value}")
    model = load(Path(args.checkpoint), raw=args.raw)
    own = model.run_settings(schedule_file=False)  # the file may not exist yet: we write it
    sampler = args.sampler or (own.sampler if own.sampler in ODE_SAMPLERS else "unipc")
    if args.steps is not None:
        steps = args.steps
    elif own.sampler == sampler and own.steps:
        steps = own.steps
    else:
        steps = DEFAULT_STEPS[sampler] or 10
    if args.out:
        out = Path(args.out)
    else:
        out = model.schedule_file or Path(args.checkpoint) / f"steps_{steps}.json"
    T = model.schedule.num_steps
    if not 1 <= steps < T:
        raise SettingsError("steps", f"must be in [1, {T - 1}] for this model, got {steps}")
    if not steps < args.reference_steps <= T:
        raise SettingsError(
            "reference_steps", f"must be in [{steps + 1}, {T}] here, got {args.reference_steps}"
        )
    conditional = model.num_classes > 0 or model.is_text
    y = model.prompts_for(args.batch) if model.is_text else model.labels_for(args.batch)
    # the run's guidance as it samples: w, and only in its noise interval if it has one
    guided = own.guidance_scale() if conditional else 1.0
    kwargs: dict[str, Any] = {
        "y": None if y is None else y.to(model.device),
        "guidance_scale": guided,
        "prediction": model.config.diffusion.prediction,
        "clip_x0": x0_clip_from_meta(model.meta["data"]),
    }
    if own.final_step != "denoise":  # the grid must suit the run's last step (t = 0 for ode)
        if args.free_end:
            raise SettingsError(
                "free_end",
                f"the run samples with final_step {own.final_step!r}, whose grid "
                "must end at t = 0; leave --free-end out",
            )
        kwargs["final_step"] = own.final_step
    seeds = [args.seed + i for i in range(args.batch)]
    x_T = initial_noise((args.batch, *model.sample_shape), seeds=seeds).to(model.device)
    log(
        f"optimising {steps} {sampler} timesteps on {args.batch} noises (seeds {args.seed}..), "
        f"{guidance_words(guided)}, reference unipc {args.reference_steps} steps"
    )
    dev = model.device.type
    autocast = torch.autocast(dev, dtype=torch.bfloat16) if model.compute.bf16 else nullcontext()
    with autocast:
        result = optimise_timesteps(
            model.network,
            model.schedule.to(model.device),
            x_T,
            sampler,
            steps,
            reference_steps=args.reference_steps,
            max_evals=args.max_evals,
            starts=args.starts,
            end_at_zero=not args.free_end,
            sampler_kwargs=kwargs,
            log=log,
        )
    reference = {**result.reference, "guidance": own.guidance if conditional else 1.0}
    if isinstance(guided, Guidance):
        reference["guidance_interval"] = [guided.sigma_lo, guided.sigma_hi]
    if own.final_step != "denoise":
        reference["final_step"] = own.final_step
    result = replace(result, seed=args.seed, source=str(model.path), reference=reference)
    save_schedule(out, result)
    log(
        f"J = {result.objective:.4g} (best fixed spacing, {result.start_spacing}: "
        f"{result.baseline:.4g}); timesteps {list(result.timesteps)}"
    )
    if model.schedule_file is not None and out.resolve() == model.schedule_file.resolve():
        log(f"wrote {out}, the run's [sample] schedule_file: ddpm sample and eval use it")
    else:
        log(f"wrote {out}; use it with: ddpm sample {args.checkpoint} --schedule-from {out}")
    return 0


def guidance_words(g: float | Guidance) -> str:
    """ "guidance 3 at sigma in (0.28, 5.42]" / "guidance 1" for the log line."""
    if isinstance(g, Guidance):
        return f"guidance {g.scale:g} at sigma in ({g.sigma_lo:g}, {g.sigma_hi:g}]"
    return f"guidance {g:g}"
