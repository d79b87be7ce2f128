"""``ddpm sample``: draw from a trained model through :func:`ddpmkit.load` and write files.

    ddpm sample RUN_OR_CHECKPOINT [--sampler dpmpp] [--steps 20] [--guidance 2] [--num 64] ...

Every setting left out is the run's own (its ``[sample]`` section, the settings its training
previews used); the first log line says which were used. Writes ``grid.png``,
``images/sample_*.png`` and ``samples.npz`` (images uint8 (N, C, H, W) and labels; text models:
also ``prompts``, one str per sample) for image models, ``samples.png`` and ``samples.npz``
(points) for 2-D models.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpmkit.io import atomic_write, read_json_object
from ddpmkit.sampling import SAMPLERS, VARIANCES
from ddpmkit.trained import GRID_KEYS, TrainedModel, load
from ddpmkit.viz.grid import grid_with_row_labels, save_grid, save_images

__all__ = ["add_parser", "check_schedule_from", "parse_timesteps", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="draw samples from a trained model",
        description="Every setting not given is the run's own ([sample] in its config).",
    )
    p.add_argument("checkpoint", help="run folder, checkpoint folder or exported model folder")
    p.add_argument(
        "--sampler",
        default=None,
        choices=list(SAMPLERS),
        help="default: the run's [sample] sampler (dpmpp = DPM-Solver++(2M), docs/samplers.md)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampling steps (default: the run's, else dpmpp 20, ddim 50, ddpm all T)",
    )
    p.add_argument(
        "--spacing",
        default=None,
        help="timestep spacing (default: the run's, else logsnr for dpmpp, trailing otherwise)",
    )
    p.add_argument(
        "--timesteps",
        default=None,
        help="explicit time grid instead of --steps/--spacing: comma-separated decreasing "
        "indices, e.g. 999,750,500,250,0",
    )
    p.add_argument(
        "--schedule-from",
        default=None,
        metavar="FILE",
        help="a grid written by `ddpm schedule` (JSON): its timesteps and its sampler, "
        "instead of --steps/--spacing/--timesteps (default: the run's [sample] schedule_file, "
        "if it names one, unless --steps/--spacing/--timesteps are given)",
    )
    p.add_argument(
        "--eta",
        type=float,
        default=None,
        help="noise in [0, 1]: DDIM eta; for dpmpp, eta > 0 is SDE-DPM-Solver++(2M)",
    )
    p.add_argument(
        "--variance",
        choices=VARIANCES,
        default=None,
        help="DDPM's reverse variance (--sampler ddpm only): beta (Ho et al.), posterior "
        "(beta~: closer to the long chain at 10-20 steps) or learned; default: the model's "
        "learned variances if it has them, else beta",
    )
    p.add_argument(
        "--final-step",
        choices=("denoise", "ode"),
        default=None,
        help="the last step to clean data: denoise = the x_0 estimate (right for 8-bit "
        "images); ode = the trapezoidal probability-flow step, for continuous data such as the "
        "2-D toys (needs a grid ending at t = 0; default: the run's, else denoise)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale w (default: the run's), applied in the run's "
        "--guidance-interval if it has one",
    )
    p.add_argument(
        "--guidance-interval",
        default=None,
        metavar="LO,HI",
        help="guide only at noise levels sigma in (LO, HI] (sigma_t = sqrt((1 - abar_t) / "
        "abar_t); Kynkaanniemi et al. 2024); 'all' = every step (default: the run's)",
    )
    p.add_argument(
        "--label",
        action="append",
        default=None,
        help="class to draw, index or name (repeatable; default: all classes in turn)",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=None,
        help='text models: prompt to draw (repeatable, used in turn); an empty prompt "" samples '
        "the unconditional model; prompts longer than the encoder's limit are truncated "
        "(one warning)",
    )
    p.add_argument("--grid-by-class", action="store_true", help="one grid row per class")
    p.add_argument(
        "--grid-by-prompt", action="store_true", help="text models: one grid row per prompt"
    )
    p.add_argument(
        "--num",
        type=int,
        default=None,
        help="number of samples, per class (prompt) with --grid-by-class (--grid-by-prompt) "
        "(default: the run's)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="sample i uses seed + i: same whatever --num"
    )
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default="samples", help="output folder")


def parse_timesteps(text: str | None) -> list[int] | None:
    """``--timesteps 999,500,0``, or a JSON file holding ``{"timesteps": [999, 500, 0]}``."""
    if text is None:
        return None
    if text.endswith(".json"):
        value = read_json_object(text, missing="give a JSON file or comma-separated indices")
        steps = value.get("timesteps")
        if not isinstance(steps, list) or not all(isinstance(v, int) for v in steps):
            raise ValueError(f'--timesteps: {text} has no "timesteps" list of integers')
        return steps
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"--timesteps: {text!r} is not a comma-separated list of integers"
        ) from None


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> list[Path]:
    """Run ``ddpm sample`` for parsed arguments; returns the paths written."""
    model = load(Path(args.checkpoint), raw=args.raw)
    if model.is_text:
        return _run_text(model, args, log)
    if args.prompt is not None or args.grid_by_prompt:
        raise ValueError(
            "--prompt/--grid-by-prompt: needs a text-conditioned model; this one is not "
            + ("(use --label)" if model.num_classes else "(it is unconditional)")
        )
    num = args.num if args.num is not None else _default_num(model, args.grid_by_class)
    if num < 1:
        raise ValueError(f"--num: must be >= 1, got {num}")
    labels, nrow, n = _labels(model, args.label, num, args.grid_by_class)
    x = _sample(model, args, n, log, labels=labels)
    return _write(model, x, labels, nrow, args, Path(args.out))


def _run_text(
    model: TrainedModel, args: argparse.Namespace, log: Callable[[str], None]
) -> list[Path]:
    """``ddpm sample`` for a text model: ``--prompt`` in turn (default: the empty prompt)."""
    if args.label is not None or args.grid_by_class:
        raise ValueError(
            "--label/--grid-by-class: this model is text-conditioned; use --prompt "
            "(and --grid-by-prompt)"
        )
    prompts = list(args.prompt) if args.prompt else [""]
    by_prompt = bool(args.grid_by_prompt)
    default = int(model.config.sample.num)
    num = (
        args.num
        if args.num is not None
        else (max(1, default // len(prompts)) if by_prompt else default)
    )
    if num < 1:
        raise ValueError(f"--num: must be >= 1, got {num}")
    if by_prompt:
        per_sample = [p for p in prompts for _ in range(num)]
        n, nrow = num * len(prompts), num
    else:
        per_sample = [prompts[i % len(prompts)] for i in range(num)]
        n, nrow = num, max(1, int(round(num**0.5)))
    x = _sample(model, args, n, log, prompts=per_sample)
    from ddpmkit.viz.grid import to_uint8

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    u8 = to_uint8(x)
    grid = out / "grid.png"
    upscale = max(1, 64 // model.sample_shape[1])
    if by_prompt:
        grid_with_row_labels(
            u8, nrow, [p or "(empty prompt)" for p in prompts], grid, upscale=upscale
        )
    else:
        save_grid(u8, grid, nrow, upscale=upscale)
    save_images(u8, out / "images", prefix="sample_")
    _save_npz(
        out / "samples.npz",
        images=u8.numpy(),
        labels=np.full(n, -1, dtype=np.int64),
        prompts=np.array(per_sample, dtype=str),
    )
    return [grid, out / "images", out / "samples.npz"]


def _sample(
    model: TrainedModel,
    args: argparse.Namespace,
    n: int,
    log: Callable[[str], None],
    **condition: Any,
) -> torch.Tensor:
    """``n`` samples with the flags' settings (None = the run's own); ``condition`` is
    ``labels=`` or ``prompts=``."""
    schedule_from = getattr(args, "schedule_from", None)
    if schedule_from is not None:
        check_schedule_from(args)
    x = model.sample(
        n,
        **condition,
        sampler=args.sampler,
        steps=args.steps,
        spacing=args.spacing,
        timesteps=parse_timesteps(args.timesteps),
        schedule_from=schedule_from,
        guidance=args.guidance,
        guidance_interval=args.guidance_interval,
        eta=args.eta,
        final_step=args.final_step,
        variance=getattr(args, "variance", None),
        seed=args.seed,
        batch_size=args.batch_size,
        output="tensor",
        log=log,
    )
    assert isinstance(x, torch.Tensor)
    return x


def check_schedule_from(args: argparse.Namespace) -> None:
    """``--schedule-from`` beside a grid flag is a one-line error naming the flags (the file and
    a sampler that is not its own are checked by :meth:`TrainedModel.resolve_settings`)."""
    from ddpmkit.errors import UsageError

    given = [f"--{k}" for k in GRID_KEYS if getattr(args, k, None) is not None]
    if given:
        raise UsageError(f"--schedule-from: replaces {'/'.join(given)}; give one or the other")


def _default_num(model: TrainedModel, grid_by_class: bool) -> int:
    num = int(model.config.sample.num)
    return max(1, num // model.num_classes) if grid_by_class and model.num_classes else num


def _labels(
    model: TrainedModel, wanted: list[str] | None, num: int, by_class: bool
) -> tuple[torch.Tensor | None, int, int]:
    """(labels, grid row length, number of samples) for ``--label``/``--grid-by-class``."""
    if (wanted or by_class) and not model.num_classes:
        raise ValueError(
            "--label/--grid-by-class: needs a class-conditional model; this one is not"
        )
    nrow = max(1, int(round(num**0.5)))
    if not model.num_classes:
        return None, nrow, num
    if by_class:
        classes = model.labels_for(len(wanted) if wanted else model.num_classes, wanted)
        assert classes is not None
        return classes.repeat_interleave(num), num, num * int(classes.shape[0])
    return model.labels_for(num, wanted), nrow, num


def _write(
    model: TrainedModel,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    nrow: int,
    args: argparse.Namespace,
    out: Path,
) -> list[Path]:
    from ddpmkit.viz.grid import to_uint8

    out.mkdir(parents=True, exist_ok=True)
    n = int(x.shape[0])
    label_arr = labels.numpy() if labels is not None else np.full(n, -1, dtype=np.int64)
    written: list[Path] = []
    if model.is_image:
        u8 = to_uint8(x)
        grid = out / "grid.png"
        upscale = max(1, 64 // model.sample_shape[1])
        if args.grid_by_class and labels is not None:
            rows = [model.class_names[int(c)] for c in labels[::nrow]]
            grid_with_row_labels(u8, nrow, rows, grid, upscale=upscale)
        else:
            save_grid(u8, grid, nrow, upscale=upscale)
        save_images(u8, out / "images", prefix="sample_")
        written += [grid, out / "images"]
        _save_npz(out / "samples.npz", images=u8.numpy(), labels=label_arr)
    else:
        from ddpmkit.viz.scatter import plot_points

        plot_points(x, out / "samples.png", title=f"{n} samples")
        written.append(out / "samples.png")
        _save_npz(out / "samples.npz", points=x.numpy(), labels=label_arr)
    written.append(out / "samples.npz")
    return written


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))  # type: ignore[arg-type]
