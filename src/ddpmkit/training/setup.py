"""Everything a run needs before its first step: data, network, EMA, optimizer, resumed state.

:func:`build_run` does the work in a fixed order, because that order is the run's random stream:
the global torch RNG is seeded with ``train.seed + rank``, then the network is initialised, then
one preflight call (dropout draws from the global RNG), then a resumed checkpoint overwrites
weights, optimizer and both RNG states. Changing the order changes every later number.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpmkit.io import atomic_write_text
from ddpmkit.nn.compute_path import ComputePath, choose_path
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.training import checkpoint as ckpt
from ddpmkit.training.batches import Batcher, restore_rng
from ddpmkit.training.build import (
    TrainData,
    build_model,
    build_schedule,
    build_text_model,
    load_train_data,
    load_weights,
)
from ddpmkit.training.config import RunConfig
from ddpmkit.training.distributed import DistInfo, init_distributed
from ddpmkit.training.ema import EMA
from ddpmkit.training.power_ema import PowerEMA
from ddpmkit.version import __version__

__all__ = ["RunSetup", "build_run", "prepare_run_dir"]


@dataclass
class RunSetup:
    """The built parts of a run. ``model`` is the plain module (checkpoints, EMA, previews);
    ``net`` is what the training forward calls (``model``, or it wrapped in DDP / compiled)."""

    cfg: RunConfig
    dist: DistInfo
    data: TrainData
    sched: NoiseSchedule
    sched_dev: NoiseSchedule
    model: nn.Module
    net: nn.Module
    ema: EMA
    opt: torch.optim.Optimizer
    gen: torch.Generator
    cpath: ComputePath
    sync_free: bool
    batcher: Batcher
    meta_base: dict[str, Any]
    start_step: int
    # seconds spent before the first step that train.time_limit_min counts (text alignment)
    pre_seconds: float = 0.0

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir


def compute_path(cfg: RunConfig, device: torch.device, data: TrainData) -> ComputePath:
    """bf16 or fp32, NHWC or NCHW: the fastest measured path on this device unless forced by
    ``train.precision`` / ``train.channels_last`` (the rule: :mod:`ddpmkit.nn.compute_path`)."""
    return choose_path(
        device,
        precision=cfg.train.precision,
        channels_last=cfg.train.channels_last,
        images=data.kind == "image",
    )


def use_sync_free(cfg: RunConfig, device: torch.device) -> bool:
    """Whether the step loop avoids host-device synchronisation (see ``train.sync_free``).

    The synchronous loop reads ``isfinite(grad norm)`` on the host every step to skip a bad
    update, which on a GPU stalls the CPU until the queued kernels have run. The sync-free loop
    keeps that decision on the device: fused AdamW skips its update when its ``found_inf`` flag
    is set (as under ``torch.amp.GradScaler``), the EMA moves by 0, and the consecutive-bad
    counter is a device tensor read at log steps. On a CPU both are the same speed, so "auto"
    keeps the simpler synchronous loop there.
    """
    if cfg.train.sync_free == "on":
        return True
    return cfg.train.sync_free == "auto" and device.type == "cuda"


def check_same_data(state: dict[str, object], cfg: RunConfig, data: TrainData, path: Path) -> None:
    """A checkpoint trained on other data must not be resumed silently on this data."""
    saved_cfg = state.get("config", {})
    saved_data = saved_cfg.get("data", {}) if isinstance(saved_cfg, dict) else {}
    saved_desc = state.get("data", {})
    now = data.describe()
    problems = []
    if isinstance(saved_data, dict) and saved_data.get("name") != cfg.data.name:
        problems.append(f"dataset {saved_data.get('name')!r} there, {cfg.data.name!r} here")
    if isinstance(saved_desc, dict):
        for key in ("sample_shape", "num_classes", "class_names"):
            if key in saved_desc and saved_desc[key] != now[key]:
                problems.append(f"{key} {saved_desc[key]} there, {now[key]} here")
    if problems:
        raise ckpt.CheckpointError(
            f"{path}: trained on other data ({'; '.join(problems)}); resume with the run's own "
            "config (ddpm train --resume --out RUN) or start a new run"
        )


def preflight(
    model: nn.Module, data: TrainData, device: torch.device, learn_sigma: bool = False
) -> None:
    """Call the network once on two items so a shape mismatch is a clear error up front
    (``learn_sigma``: the output has twice the channels, dim 1)."""
    from ddpmkit.training.config import ConfigError

    x = torch.zeros((2, *data.sample_shape), device=device)
    t = torch.zeros(2, dtype=torch.long, device=device)
    try:
        with torch.no_grad():
            out = model(x, t) if data.labels is None else model(x, t, torch.zeros_like(t))
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[0]
        raise ConfigError(
            f"model: the network cannot take data of shape {list(x.shape)}: {msg}"
        ) from None
    if learn_sigma:
        want = [x.shape[0], 2 * x.shape[1], *x.shape[2:]]
        if list(out.shape) != want:
            raise ConfigError(
                f"model: output shape {list(out.shape)} differs from {want}, twice the input's "
                f"channels {list(x.shape)}: with diffusion.learn_sigma the network returns the "
                "prediction and the variance values v"
            )
    elif tuple(out.shape) != tuple(x.shape):
        raise ConfigError(
            f"model: output shape {list(out.shape)} differs from input shape {list(x.shape)}; "
            "the network must return one value per input value"
        )


def _find_resume(run_dir: Path) -> ckpt.LoadedCheckpoint:
    found = ckpt.find_latest(run_dir)
    if found is None:
        raise ckpt.CheckpointError(
            f"{run_dir}: nothing to resume (no complete checkpoint); start without --resume"
        )
    return ckpt.load_checkpoint(found)


def _restore(
    loaded: ckpt.LoadedCheckpoint,
    cfg: RunConfig,
    data: TrainData,
    parts: tuple[nn.Module, EMA, torch.optim.Optimizer, torch.Generator],
    dist: DistInfo,
) -> int:
    """Weights, EMA, optimizer and RNG states from ``loaded``; returns its step."""
    model, ema, opt, gen = parts
    check_same_data(loaded.state, cfg, data, loaded.path)
    load_weights(model, loaded.model, str(loaded.path / "model.safetensors"))
    load_weights(ema.model, loaded.ema, str(loaded.path / "ema.safetensors"))
    ema.num_updates = int(loaded.state["ema_updates"])
    assert loaded.optimizer is not None
    opt.load_state_dict(loaded.optimizer)
    restore_rng(gen, loaded.rng, dist)
    return int(loaded.state["step"])


def _wrap(model: nn.Module, cfg: RunConfig, dist: DistInfo) -> nn.Module:
    """DDP over several processes, then ``torch.compile`` if asked."""
    net: nn.Module = model
    if dist.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=dist.device_ids)
    if cfg.train.compile == "on":
        # Only the training forward/backward; checkpoints, EMA and previews use the plain module
        # (same parameters), so compiled and eager runs write the same files.
        net = torch.compile(net)  # type: ignore[assignment]
    return net


def build_run(cfg: RunConfig, *, resume: bool, log: Callable[[str], None]) -> RunSetup:
    """Build (and with ``resume`` restore) every part of the run, in the order of the module
    docstring."""
    dist = init_distributed()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    loaded = _find_resume(cfg.run_dir) if resume else None
    device = dist.device
    data = load_train_data(cfg, log=log if dist.is_main else (lambda s: None))
    sched = build_schedule(cfg.diffusion)
    torch.manual_seed(cfg.train.seed + dist.rank)
    text_meta: dict[str, Any] | None = None
    align: dict[str, Any] | None = None
    if data.is_text:  # the U-Net behind TextConditioned: y = caption id, -1 = null prompt
        model, text_meta = build_text_model(cfg, data, sched.num_steps, log)
        model = model.to(device)
        align = _align_text(cfg, model, data, fresh=loaded is None, log=log)
    else:
        model = build_model(
            cfg.model,
            data.sample_shape,
            data.num_classes,
            sched.num_steps,
            learn_sigma=cfg.diffusion.learn_sigma,
        )
        model = model.to(device)
    cpath = compute_path(cfg, device, data)
    if cpath.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    preflight(model, data, device, cfg.diffusion.learn_sigma)
    ema: EMA
    if cfg.train.ema_sigma_rel > 0:  # EDM2's power-function average of that relative length
        ema = PowerEMA(model, cfg.train.ema_sigma_rel)
    else:
        ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_warmup)
    sync_free = use_sync_free(cfg, device)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        betas=(0.9, 0.99),
        fused=True if sync_free else None,  # fused AdamW: the only one that takes found_inf
    )
    gen = torch.Generator().manual_seed(cfg.train.seed)
    step = 0
    if loaded is not None:
        step = _restore(loaded, cfg, data, (model, ema, opt, gen), dist)
    meta_base = {
        "config": cfg.to_dict(),
        "data": data.describe(),
        "ddpmkit_version": __version__,
        "precision": "bf16" if cpath.bf16 else "fp32",
    }
    if text_meta is not None:
        meta_base["text_encoder"] = text_meta
    if align is not None:
        meta_base["text_align"] = align
    return RunSetup(
        cfg, dist, data, sched, sched.to(device), model, _wrap(model, cfg, dist), ema, opt, gen,
        cpath, sync_free, Batcher(data, cfg, sched, dist), meta_base, step,
        align["seconds"] if align is not None else 0.0,
    )  # fmt: skip


def _align_text(
    cfg: RunConfig, model: nn.Module, data: TrainData, *, fresh: bool, log: Callable[[str], None]
) -> dict[str, Any] | None:
    """``text.align_steps`` of contrastive pre-training of the text side
    (``ddpmkit.training.text_align``) on a fresh run; on a resumed one only the freeze (the
    checkpoint has the weights). Every rank runs the same steps from the same seed, so the
    ranks agree."""
    t = cfg.text
    if not t.align_steps:
        return None
    from ddpmkit.training.text_align import align_text_side, text_side_parameters

    if not fresh:
        if t.align_freeze:
            for p in text_side_parameters(model.net):  # type: ignore[arg-type]
                p.requires_grad_(False)
        return None
    assert data.labels is not None
    stats, _ = align_text_side(
        model, data.x, data.labels, steps=t.align_steps, batch_size=t.align_batch,
        lr=t.align_lr, seed=cfg.train.seed, freeze=t.align_freeze, log=log,
    )  # fmt: skip
    said = []
    if "mirror_accuracy" in stats:
        said.append(
            f"caption prefers its image to the mirror in {100 * stats['mirror_accuracy']:.0f}%"
        )
    if "region_accuracy" in stats:
        share = 100 * stats["region_accuracy"]
        said.append(f"every cell's text prefers its cell to the mirror's in {share:.0f}%")
    log(
        f"text alignment: {stats['steps']} steps in {stats['seconds']:.0f} s, loss "
        f"{stats['loss']:.3f}, {' and '.join(said)} of rows"
    )
    return stats


def prepare_run_dir(run: RunSetup, log: Callable[[str], None]) -> None:
    """Main rank: the run folder, no crash leftovers, ``config.json``, the run's first line."""
    if not run.dist.is_main:
        return
    cfg, run_dir = run.cfg, run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    n_tmp = ckpt.clean_temporaries(run_dir)
    if n_tmp:
        log(f"removed {n_tmp} incomplete checkpoint temporaries from an earlier crash")
    atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=1))
    n_params = sum(p.numel() for p in run.model.parameters())
    log(
        f"training {cfg.model.kind} ({n_params / 1e6:.2f}M parameters) on {run.data.source}, "
        f"{run.cpath.describe()}"
        f"{', sync-free step loop (fused AdamW)' if run.sync_free else ''}"
        f"{', torch.compile' if cfg.train.compile == 'on' else ''}, "
        f"{run.dist.world_size} process(es), "
        f"run folder {run_dir}"
    )
