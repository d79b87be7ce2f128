"""``ddpm sample``: load a model (EMA weights by default) and write grid, PNGs and ``.npz``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ddpmkit.nn.compute_path import ComputePath, choose_path
from ddpmkit.sampling import SAMPLERS, SPACINGS, initial_noise
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.training.build import load_weights, model_from_meta, x0_clip_from_meta
from ddpmkit.training.checkpoint import CheckpointError, _read_tensors, resolve_model_path
from ddpmkit.training.config import ConfigError, RunConfig

__all__ = ["check_eta", "load_model", "run_sample", "sampling_path"]


def load_model(
    path: Path, *, raw: bool = False
) -> tuple[nn.Module, NoiseSchedule, RunConfig, dict[str, Any]]:
    """(network in eval mode, schedule, config, metadata) from a run/checkpoint/export folder."""
    meta, folder = resolve_model_path(Path(path))
    if "config" not in meta or "data" not in meta:
        raise CheckpointError(f"{folder}: metadata has no config/data section; not a ddpmkit model")
    try:
        model, sched, cfg = model_from_meta(meta)
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder}: its config cannot be used ({e})") from None
    if (folder / "ema.safetensors").is_file():
        name = "model" if raw else "ema"
    else:
        if raw:
            raise CheckpointError(f"{folder}: an exported model holds only EMA weights; drop --raw")
        name = "model"
    sha = meta.get("sha256", {}).get(name)
    weights = _read_tensors(folder / f"{name}.safetensors", sha)
    load_weights(model, weights, str(folder / f"{name}.safetensors"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if sampling_path(meta, device).channels_last:
        # NHWC: 1.2-1.3x faster sampling on a bf16 CPU (nn/groupnorm.py); same function
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model.eval(), sched, cfg, meta


def sampling_path(meta: dict[str, Any], device: torch.device) -> ComputePath:
    """The path a loaded model samples in on ``device`` (:func:`ddpmkit.nn.compute_path.
    choose_path`): bf16 only for a model trained in bf16 on a device with native bf16, so a
    bf16-trained model is not sampled in emulated bf16 (10-25x slower) on an AVX2 CPU."""
    kind = meta.get("config", {}).get("model", {}).get("kind", "unet")
    return choose_path(device, images=kind == "unet", trained_bf16=meta.get("precision") == "bf16")


def check_eta(eta: float, sampler: str) -> None:
    """``--eta`` of ``ddpm sample`` and ``ddpm eval``: in [0, 1], and only for ddim/dpmpp."""
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"--eta: must be in [0, 1], got {eta}")
    if eta != 0.0 and sampler == "ddpm":
        raise ConfigError(
            "--eta: applies to --sampler ddim or dpmpp; ddpm's noise is set by its variance"
        )


def run_sample(args: argparse.Namespace, log: Callable[[str], None] = print) -> list[Path]:
    model, sched, cfg, meta = load_model(Path(args.checkpoint), raw=args.raw)
    data = meta["data"]
    shape = tuple(int(v) for v in data["sample_shape"])
    num_classes = int(data["num_classes"])
    names = list(data.get("class_names", []))
    if args.num < 1:
        raise ConfigError(f"--num: must be >= 1, got {args.num}")
    steps = args.steps
    if steps is None:
        default = {"ddpm": sched.num_steps, "ddim": 50, "dpmpp": 20}[args.sampler]
        steps = min(default, sched.num_steps)
    if not 1 <= steps <= sched.num_steps:
        raise ConfigError(f"--steps: must be in [1, {sched.num_steps}], got {steps}")
    spacing = args.spacing or ("logsnr" if args.sampler == "dpmpp" else "trailing")
    if spacing not in SPACINGS:
        raise ConfigError(
            f"--spacing: {spacing!r} is not allowed; expected one of {list(SPACINGS)}"
        )
    check_eta(args.eta, args.sampler)
    labels = args.label
    if (labels or args.grid_by_class or args.guidance != 1.0) and not num_classes:
        raise ConfigError("--label/--grid-by-class/--guidance need a class-conditional model")
    for lab in labels or []:
        if not 0 <= lab < num_classes:
            raise ConfigError(f"--label: {lab} is not a class of this model (0..{num_classes - 1})")
    y = None
    nrow = max(1, int(round(args.num**0.5)))
    if num_classes:
        classes = labels or list(range(num_classes))
        if args.grid_by_class:
            y = torch.tensor(classes).repeat_interleave(args.num)
            nrow = args.num
        else:
            y = torch.tensor([classes[i % len(classes)] for i in range(args.num)])
    n = int(y.shape[0]) if y is not None else args.num
    out = Path(args.out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    bf16 = sampling_path(meta, device).bf16
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    sampler = SAMPLERS[args.sampler]
    extra: dict[str, Any] = {}
    if args.sampler in ("ddim", "dpmpp"):
        extra["eta"] = args.eta  # dpmpp: eta > 0 is SDE-DPM-Solver++(2M)
    clip = x0_clip_from_meta(data)  # images: [-1, 1]; toys: the training data's range
    if clip is not None:
        extra["clip_x0"] = clip
    chunks = []
    for lo in range(0, n, args.batch_size):
        hi = min(n, lo + args.batch_size)
        seeds = [args.seed + i for i in range(lo, hi)]  # sample i is the same whatever the batch
        x_T = initial_noise((hi - lo, *shape), seeds=seeds).to(device)
        with autocast:
            x = sampler(
                model,
                sched.to(device),
                x_T,
                num_steps=steps,
                y=None if y is None else y[lo:hi].to(device),
                guidance_scale=args.guidance,
                seeds=seeds if args.sampler != "dpmpp" else None,
                prediction=cfg.diffusion.prediction,
                spacing=spacing,
                **extra,
            )
        chunks.append(x.float().cpu())
        log(f"sampled {hi}/{n}")
    x = torch.cat(chunks)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    label_arr = y.numpy() if y is not None else np.full(n, -1, dtype=np.int64)
    if len(shape) == 3:
        from ddpmkit.viz.grid import grid_with_row_labels, save_grid, save_images, to_uint8

        u8 = to_uint8(x)
        grid = out / "grid.png"
        upscale = max(1, 64 // shape[1])
        if args.grid_by_class and y is not None:
            row_names = [
                names[c] if c < len(names) else str(c) for c in (labels or range(num_classes))
            ]
            grid_with_row_labels(u8, nrow, row_names, grid, upscale=upscale)
        else:
            save_grid(u8, grid, nrow, upscale=upscale)
        written.append(grid)
        save_images(u8, out / "images", prefix="sample_")
        written.append(out / "images")
        _save_npz(out / "samples.npz", images=u8.numpy(), labels=label_arr)
    else:
        from ddpmkit.viz.scatter import plot_points

        plot_points(x, out / "samples.png", title=f"{n} samples ({args.sampler}, {steps} steps)")
        written.append(out / "samples.png")
        _save_npz(out / "samples.npz", points=x.numpy(), labels=label_arr)
    written.append(out / "samples.npz")
    return written


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    try:
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
