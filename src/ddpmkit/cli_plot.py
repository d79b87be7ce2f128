"""``ddpm plot ...``: the seeds' pictures from your own data and models.

ddpm plot schedules --out schedules.png
ddpm plot forward (--image FILE | --dataset NAME [--index I]) [--schedule S ...] --out F.png
ddpm plot reverse RUN_OR_CHECKPOINT --out strip.png [--gif anim.gif] [--sampler ddim --steps 50]
ddpm plot loss RUN_DIR --out loss.png
ddpm plot grids RUN_DIR --out sheet.png
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ddpmkit.training.config import ConfigError

__all__ = ["register"]

TOYS = ("s_curve", "swiss_roll", "moons", "eight_gaussians")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="figures: schedules, forward/reverse process, loss, grids")
    kinds = p.add_subparsers(dest="plot_kind", required=True)

    s = kinds.add_parser("schedules", help="alpha_bar, beta and log-SNR of the named schedules")
    s.add_argument("--out", required=True)
    s.add_argument("--steps", type=int, default=1000)

    f = kinds.add_parser("forward", help="one image (or a 2-D dataset) noised at 10 timesteps")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="an image file")
    src.add_argument("--dataset", help="fashion_mnist, mnist, digits or a 2-D toy name")
    f.add_argument("--index", type=int, default=0, help="which dataset image")
    f.add_argument("--schedule", action="append", default=None, help="repeatable; default linear")
    f.add_argument("--steps", type=int, default=1000)
    f.add_argument("--size", type=int, default=64, help="side of an --image after centre crop")
    f.add_argument("--out", required=True)

    r = kinds.add_parser("reverse", help="x_t and predicted x_0 along sampling (PNG strip + GIF)")
    r.add_argument("checkpoint")
    r.add_argument("--out", required=True)
    r.add_argument("--gif", default=None)
    r.add_argument("--sampler", default=None, choices=["ddpm", "ddim", "dpmpp"])
    r.add_argument("--steps", type=int, default=None)
    r.add_argument("--num", type=int, default=8, help="images per snapshot (2-D: points)")
    r.add_argument("--label", type=int, default=None)
    r.add_argument("--guidance", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)

    lo = kinds.add_parser("loss", help="training loss (raw and smoothed) from metrics.jsonl")
    lo.add_argument("run")
    lo.add_argument("--out", required=True)

    g = kinds.add_parser("grids", help="sample grids over training as one contact sheet")
    g.add_argument("run")
    g.add_argument("--out", required=True)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    handler = {
        "schedules": _schedules,
        "forward": _forward,
        "reverse": _reverse,
        "loss": _loss,
        "grids": _grids,
    }[args.plot_kind]
    out = handler(args)
    print(f"wrote {out}")
    return 0


def _schedules(args: argparse.Namespace) -> Path:
    from ddpmkit.viz.schedules import plot_schedules

    if args.steps < 1:
        raise ConfigError(f"--steps: must be >= 1, got {args.steps}")
    return plot_schedules(args.out, num_steps=args.steps)


def _read_image(path: str, size: int) -> torch.Tensor:
    from ddpmkit.data.folder import load_image_file
    from ddpmkit.data.images import DatasetError, to_model_range

    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"--image: {path!r} does not exist")
    try:
        hwc = load_image_file(p, (size, size), channels=None)  # (H, W) or (H, W, 3)
    except Exception as e:  # Pillow raises many kinds for a file that is not an image
        raise DatasetError(f"--image: {path!r} cannot be read as an image ({e})") from None
    u8 = torch.from_numpy(np.array(hwc, dtype=np.uint8))
    chw = u8[None] if u8.ndim == 2 else u8.permute(2, 0, 1)
    return to_model_range(chw.contiguous())


def _forward(args: argparse.Namespace) -> Path:
    from ddpmkit.viz.forward import plot_forward_2d, plot_forward_process

    names = args.schedule or ["linear"]
    from ddpmkit.schedule import SCHEDULES

    for n in names:
        if n not in SCHEDULES:
            raise ConfigError(f"--schedule: {n!r} is not one of {sorted(SCHEDULES)}")
    if args.dataset in TOYS:
        from ddpmkit.data.toy2d import make_toy

        return plot_forward_2d(
            make_toy(args.dataset, 2000), args.out, schedule=names[0], num_steps=args.steps
        )
    if args.image:
        img = _read_image(args.image, args.size)
    else:
        from ddpmkit.data import load_dataset, to_model_range

        data = load_dataset(args.dataset)
        if not 0 <= args.index < data.images.shape[0]:
            raise ConfigError(f"--index: {args.index} is outside 0..{data.images.shape[0] - 1}")
        img = to_model_range(data.images[args.index])
    return plot_forward_process(
        img, args.out, schedule_names=tuple(names), num_steps=args.steps,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


def _reverse(args: argparse.Namespace) -> Path:
    from ddpmkit.sampling import SAMPLERS, initial_noise
    from ddpmkit.training.sample_cmd import load_model
    from ddpmkit.viz.trajectory import TrajectoryRecorder, plot_reverse_process, save_reverse_gif

    model, sched, cfg, meta = load_model(Path(args.checkpoint))
    shape = tuple(int(v) for v in meta["data"]["sample_shape"])
    num_classes = int(meta["data"]["num_classes"])
    is_toy = len(shape) == 1
    sampler = args.sampler or ("ddpm" if is_toy else "ddim")
    steps = args.steps or (sched.num_steps if sampler == "ddpm" else min(50, sched.num_steps))
    if not 1 <= steps <= sched.num_steps:
        raise ConfigError(f"--steps: must be in [1, {sched.num_steps}], got {steps}")
    n = 2000 if is_toy and args.num == 8 else args.num
    y = None
    if num_classes:
        if args.label is not None and not 0 <= args.label < num_classes:
            raise ConfigError(
                f"--label: {args.label} is not a class of this model (0..{num_classes - 1})"
            )
        y = (
            torch.full((n,), args.label, dtype=torch.long)
            if args.label is not None
            else torch.arange(n) % num_classes
        )
    rec = TrajectoryRecorder(num_snapshots=10, max_items=n)
    x_T = initial_noise((n, *shape), seeds=[args.seed + i for i in range(n)])
    bf16 = meta.get("precision") == "bf16"
    extra = {} if is_toy else {"clip_x0": 1.0}
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
        SAMPLERS[sampler](
            model, sched, x_T, num_steps=steps, y=y, guidance_scale=args.guidance,
            generator=torch.Generator().manual_seed(args.seed), prediction=cfg.diffusion.prediction,
            callback=rec, **extra,
        )  # fmt: skip
    kind: Literal["image", "scatter"] = "scatter" if is_toy else "image"
    out = plot_reverse_process(rec, args.out, kind=kind)
    if args.gif:
        save_reverse_gif(rec, args.gif, kind=kind)
    return out


def _loss(args: argparse.Namespace) -> Path:
    from ddpmkit.viz.training import plot_loss_curve

    path = Path(args.run) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{args.run}: no metrics.jsonl; is this a ddpmkit run folder?")
    return plot_loss_curve(path, args.out)


def _grids(args: argparse.Namespace) -> Path:
    from ddpmkit.viz.training import contact_sheet

    grids = sorted((Path(args.run) / "samples").glob("step_*.png"))
    if not grids:
        raise ConfigError(
            f"{args.run}: no sample grids (samples/step_*.png); is this a run folder?"
        )
    if len(grids) > 8:  # keep the sheet readable: 8 evenly spaced grids, always the last
        idx = sorted({round(i * (len(grids) - 1) / 7) for i in range(8)})
        grids = [grids[i] for i in idx]
    labels = [f"step {int(p.stem.split('_')[1])}" for p in grids]
    return contact_sheet(grids, args.out, labels=labels)
