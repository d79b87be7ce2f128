"""``ddpm plot ...``: the pictures of the process, from your own data and models.

    ddpm plot schedules --out schedules.png [--steps T]
    ddpm plot forward (--image FILE | --dataset NAME [--index I]) [--schedule S ...] --out F.png
    ddpm plot reverse RUN_OR_CHECKPOINT --out strip.png [--gif anim.gif] [--sampler ddim ...]
    ddpm plot loss RUN_DIR --out loss.png
    ddpm plot grids RUN_DIR --out sheet.png
    ddpm plot prompts RUN_OR_CHECKPOINT --prompt "a bag" [--prompt ...] --num 6 --out rows.png

Every figure is written atomically (a temporary file renamed into place), so a failed command
leaves no half-written file. Wrong inputs are one-line errors (``ddpm: error: ...``, exit 2).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ddpmkit.sampling import SAMPLERS
from ddpmkit.training.config import ConfigError

__all__ = ["TOYS", "auto_smoothing", "register"]

TOYS = ("s_curve", "swiss_roll", "moons", "eight_gaussians")
IMAGE_DATASETS = ("fashion_mnist", "mnist", "digits", "folder")
TOY_POINTS = 2000  # points drawn in 2-D figures


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot", help="figures: schedules, forward/reverse process, loss, grids, prompts"
    )
    kinds = p.add_subparsers(dest="plot_kind", required=True, metavar="KIND")

    s = kinds.add_parser("schedules", help="alpha_bar, beta and log-SNR of the four schedules")
    s.add_argument("--out", required=True, help="PNG to write")
    s.add_argument("--steps", type=int, default=1000, help="T (default 1000)")

    f = kinds.add_parser("forward", help="one image (or a 2-D dataset) noised at 10 timesteps")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="an image file (any format Pillow reads)")
    src.add_argument(
        "--dataset", help=f"one of {', '.join(IMAGE_DATASETS)} or a 2-D toy: {', '.join(TOYS)}"
    )
    f.add_argument("--index", type=int, default=0, help="which dataset image (default 0)")
    f.add_argument("--root", default=None, help="dataset folder (needed for --dataset folder)")
    f.add_argument(
        "--schedule",
        action="append",
        default=None,
        help="linear, cosine, quadratic or sigmoid; repeat for one row each (default linear)",
    )
    f.add_argument("--steps", type=int, default=1000, help="T (default 1000)")
    f.add_argument(
        "--size", type=int, default=64, help="side of an --image or folder image (default 64)"
    )
    f.add_argument("--seed", type=int, default=0, help="seed of the noise")
    f.add_argument("--out", required=True, help="PNG to write")

    r = kinds.add_parser("reverse", help="x_t and predicted x_0 along sampling (PNG strip + GIF)")
    r.add_argument("checkpoint", help="run folder, checkpoint folder or exported model folder")
    r.add_argument("--out", required=True, help="PNG strip to write")
    r.add_argument("--gif", default=None, help="also write an animated GIF")
    r.add_argument(
        "--sampler",
        default=None,
        choices=list(SAMPLERS),
        help="default: the run's [sample] sampler, as ddpm sample",
    )
    r.add_argument("--steps", type=int, default=None, help="default: the run's, as ddpm sample")
    r.add_argument(
        "--spacing",
        default=None,
        help="timestep spacing (default: the run's, as ddpm sample)",
    )
    r.add_argument(
        "--num", type=int, default=None, help=f"images per snapshot (8); 2-D: points ({TOY_POINTS})"
    )
    r.add_argument("--label", type=int, default=None, help="class to draw (default: all in turn)")
    r.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance (default: the run's)"
    )
    r.add_argument("--seed", type=int, default=0, help="sample i uses seed + i, as ddpm sample")
    r.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")

    lo = kinds.add_parser("loss", help="training loss (raw and smoothed) from metrics.jsonl")
    lo.add_argument("run", help="run folder (with metrics.jsonl)")
    lo.add_argument("--out", required=True, help="PNG to write")
    lo.add_argument(
        "--smoothing",
        type=float,
        default=None,
        help="EMA factor in [0, 1) of the smoothed curve (default: a window of 5%% of the logs)",
    )

    g = kinds.add_parser("grids", help="sample grids over training as one contact sheet")
    g.add_argument("run", help="run folder (with samples/step_*.png)")
    g.add_argument("--out", required=True, help="PNG to write")
    g.add_argument("--max", type=int, default=8, help="at most this many grids (default 8)")

    pr = kinds.add_parser(
        "prompts",
        help="text models: one row per prompt, the same initial noise in every row",
        description="One row per --prompt, labelled with it; column j of every row starts from "
        "the same noise (seed + j), so rows differ only by their prompt (e.g. its words "
        "swapped).",
    )
    pr.add_argument("checkpoint", help="run folder, checkpoint folder or exported model folder")
    pr.add_argument(
        "--prompt",
        action="append",
        required=True,
        help="a prompt; repeat for one row each ('' = the unconditional model)",
    )
    pr.add_argument("--num", type=int, default=6, help="samples per prompt (default 6)")
    pr.add_argument("--out", required=True, help="PNG to write")
    pr.add_argument("--sampler", default=None, choices=list(SAMPLERS), help="default: the run's")
    pr.add_argument("--steps", type=int, default=None, help="default: the run's")
    pr.add_argument("--spacing", default=None, help="default: the run's")
    pr.add_argument("--guidance", type=float, default=None, help="default: the run's")
    pr.add_argument("--seed", type=int, default=0, help="column j uses seed + j (default 0)")
    pr.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    handler = {
        "schedules": _schedules,
        "forward": _forward,
        "reverse": _reverse,
        "loss": _loss,
        "grids": _grids,
        "prompts": _prompts,
    }[args.plot_kind]
    out = handler(args)
    print(f"wrote {out}")
    return 0


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ConfigError(f"--steps: must be >= 1, got {steps}")


def _schedules(args: argparse.Namespace) -> Path:
    from ddpmkit.viz.schedules import plot_schedules

    _check_steps(args.steps)
    return plot_schedules(args.out, num_steps=args.steps)


def _read_image(path: str, size: int) -> torch.Tensor:
    """An image file as float32 (C, H, W) in [-1, 1] (the model range), centre-cropped."""
    from ddpmkit.data.folder import load_image_file
    from ddpmkit.data.images import DatasetError, to_model_range

    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"--image: {path!r} does not exist")
    try:
        hwc = load_image_file(p, (size, size), channels=None)  # (H, W) or (H, W, 3)
    except Exception as e:  # Pillow raises many kinds for a file that is not an image
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"--image: {path!r} cannot be read as an image ({reason})") from None
    u8 = torch.from_numpy(np.array(hwc, dtype=np.uint8))
    chw = u8[None] if u8.ndim == 2 else u8.permute(2, 0, 1)
    return to_model_range(chw.contiguous())


def _forward(args: argparse.Namespace) -> Path:
    from ddpmkit.schedule import SCHEDULES
    from ddpmkit.viz.forward import plot_forward_process

    names = args.schedule or ["linear"]
    for n in names:
        if n not in SCHEDULES:
            raise ConfigError(f"--schedule: {n!r} is not one of {sorted(SCHEDULES)}")
    _check_steps(args.steps)
    if args.size < 1:
        raise ConfigError(f"--size: must be >= 1, got {args.size}")
    if args.dataset is not None and args.dataset not in (*TOYS, *IMAGE_DATASETS):
        raise ConfigError(
            f"--dataset: {args.dataset!r} is not one of {', '.join((*IMAGE_DATASETS, *TOYS))}"
        )
    if args.dataset in TOYS:
        return _forward_2d(args, names)
    if args.image:
        img = _read_image(args.image, args.size)
    else:
        from ddpmkit.data import load_dataset, to_model_range

        if args.dataset == "folder" and not args.root:
            raise ConfigError("--dataset folder: give the folder with --root DIR")
        size = args.size if args.dataset == "folder" else None
        data = load_dataset(args.dataset, root=args.root, image_size=size, log=lambda s: None)
        count = data.images.shape[0]
        if not 0 <= args.index < count:
            raise ConfigError(f"--index: {args.index} is outside 0..{count - 1}")
        img = to_model_range(data.images[args.index])
    return plot_forward_process(
        img, args.out, schedule_names=tuple(names), num_steps=args.steps,
        generator=torch.Generator().manual_seed(args.seed),
    )  # fmt: skip


def _forward_2d(args: argparse.Namespace, names: list[str]) -> Path:
    """Scatter panels of a 2-D toy noised at 10 timesteps; one row per schedule."""
    from PIL import Image

    from ddpmkit.data.toy2d import make_toy
    from ddpmkit.viz.forward import plot_forward_2d
    from ddpmkit.viz.grid import atomic_save

    points = make_toy(args.dataset, TOY_POINTS)
    if len(names) == 1:
        return plot_forward_2d(
            points, args.out, schedule=names[0], num_steps=args.steps,
            generator=torch.Generator().manual_seed(args.seed),
        )  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            row = plot_forward_2d(
                points, Path(tmp) / f"{i}.png", schedule=name, num_steps=args.steps,
                generator=torch.Generator().manual_seed(args.seed),
            )  # fmt: skip
            with Image.open(row) as im:
                rows.append(im.convert("RGB"))
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    return atomic_save(args.out, lambda f: sheet.save(f, format="PNG", optimize=True))


def _reverse(args: argparse.Namespace) -> Path:
    from ddpmkit.trained import load
    from ddpmkit.viz.trajectory import TrajectoryRecorder, plot_reverse_process, save_reverse_gif

    model = load(Path(args.checkpoint), raw=args.raw)
    n = args.num if args.num is not None else (TOY_POINTS if not model.is_image else 8)
    if n < 1:
        raise ConfigError(f"--num: must be >= 1, got {n}")
    rec = TrajectoryRecorder(num_snapshots=10, max_items=n)
    # One batch, so the recorder sees every item; sample i is ddpm sample's sample i.
    model.sample(
        n,
        labels=None if args.label is None else [args.label],
        sampler=args.sampler,
        steps=args.steps,
        spacing=args.spacing,
        guidance=args.guidance,
        seed=args.seed,
        batch_size=n,
        output="tensor",
        callback=rec,
    )
    kind: Literal["image", "scatter"] = "image" if model.is_image else "scatter"
    out = plot_reverse_process(rec, args.out, kind=kind)
    if args.gif:
        save_reverse_gif(rec, args.gif, kind=kind)
    return out


def _loss(args: argparse.Namespace) -> Path:
    from ddpmkit.viz.training import plot_loss_curve, read_metrics

    path = Path(args.run) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{args.run}: no metrics.jsonl; is this a ddpmkit run folder?")
    n = sum(1 for r in read_metrics(path) if "loss" in r)
    if not n:
        raise ConfigError(f"{path}: no loss logged yet (the first log is at train.log_every)")
    smoothing = args.smoothing if args.smoothing is not None else auto_smoothing(n)
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"--smoothing: must be in [0, 1), got {smoothing}")
    return plot_loss_curve(path, args.out, smoothing=smoothing)


def auto_smoothing(num_logs: int) -> float:
    """EMA factor whose window (1 / (1 - a) logs) is 5% of the run, at most 0.98.

    A fixed 0.98 (window of 50 logs) suits long logs; on a run with 25 logs it would still be
    dominated by the first, high losses and lag far above the raw curve.
    """
    return min(0.98, max(0.0, 1.0 - 20.0 / num_logs))


def _grids(args: argparse.Namespace) -> Path:
    from ddpmkit.viz.training import contact_sheet

    if args.max < 1:
        raise ConfigError(f"--max: must be >= 1, got {args.max}")
    grids = sorted((Path(args.run) / "samples").glob("step_*.png"))
    if not grids:
        raise ConfigError(
            f"{args.run}: no sample grids (samples/step_*.png); is this a run folder?"
        )
    if len(grids) > args.max:  # keep the sheet readable: evenly spaced grids, always the last
        k = args.max
        idx = sorted({round(i * (len(grids) - 1) / max(1, k - 1)) for i in range(k)})
        grids = [grids[i] for i in idx]
    labels = [f"step {int(p.stem.split('_')[1])}" for p in grids]
    return contact_sheet(grids, args.out, labels=labels)


def _prompts(args: argparse.Namespace) -> Path:
    """One labelled row per prompt; column j of every row is drawn with seed + j."""
    from ddpmkit.trained import load
    from ddpmkit.viz.grid import grid_with_row_labels

    if args.num < 1:
        raise ConfigError(f"--num: must be >= 1, got {args.num}")
    model = load(Path(args.checkpoint), raw=args.raw)
    if not model.is_text:
        raise ConfigError(
            f"{args.checkpoint}: --prompt needs a text-conditioned model; this one is not "
            "(ddpm plot reverse --label draws a class)"
        )
    rows = [
        model.sample(
            args.num,
            prompts=[p],
            sampler=args.sampler,
            steps=args.steps,
            spacing=args.spacing,
            guidance=args.guidance,
            seed=args.seed,
        )  # fmt: skip
        for p in args.prompt
    ]
    u8 = np.concatenate(rows)  # (P * num, H, W, C), row r = prompt r
    labels = [p or "(empty prompt)" for p in args.prompt]
    upscale = max(1, 64 // model.sample_shape[1])
    return grid_with_row_labels(u8.transpose(0, 3, 1, 2), args.num, labels, args.out, upscale)
