"""The training loop: ``train(cfg)`` -> RunResult. One process, or one rank of torchrun/DDP.

Randomness: every step's global batch comes from one generator seeded from ``train.seed``, each
rank taking its slice (:mod:`ddpmkit.training.batches`), so N ranks at batch B see exactly the
samples one process sees at batch N*B, and a resumed run continues the same stream. The global
torch RNG (dropout) is seeded with seed + rank and checkpointed per run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from ddpmkit import __version__
from ddpmkit.diffusion import diffusion_loss_per_sample
from ddpmkit.nn.compute_path import ComputePath, choose_path
from ddpmkit.training import checkpoint as ckpt
from ddpmkit.training.batches import Batcher, restore_rng, rng_state
from ddpmkit.training.build import (
    TrainData,
    build_model,
    build_schedule,
    load_train_data,
    load_weights,
)
from ddpmkit.training.config import RunConfig
from ddpmkit.training.distributed import init_distributed
from ddpmkit.training.ema import EMA
from ddpmkit.training.metrics_log import MetricLogger
from ddpmkit.training.previews import PreviewClock, write_preview

__all__ = ["RunResult", "TrainingError", "train"]


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. the loss stayed non-finite); a checkpoint was written."""


@dataclass
class RunResult:
    run_dir: Path
    step: int
    last_loss: float
    interrupted: bool = False
    files: list[Path] = field(default_factory=list)


def _compute_path(cfg: RunConfig, device: torch.device, data: TrainData) -> ComputePath:
    """bf16 or fp32, NHWC or NCHW: the fastest measured path on this device unless forced by
    ``train.precision`` / ``train.channels_last`` (the rule: :mod:`ddpmkit.nn.compute_path`)."""
    return choose_path(
        device,
        precision=cfg.train.precision,
        channels_last=cfg.train.channels_last,
        images=data.kind == "image",
    )


def _use_sync_free(cfg: RunConfig, device: torch.device) -> bool:
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


def _lr_at(cfg: RunConfig, step: int) -> float:
    """Linear warm-up to train.lr over warmup_steps, then constant or cosine decay to 0."""
    tr = cfg.train
    lr = tr.lr * min(1.0, (step + 1) / tr.warmup_steps) if tr.warmup_steps > 0 else tr.lr
    if tr.lr_decay == "cosine" and step >= tr.warmup_steps:
        span = max(1, tr.steps - tr.warmup_steps)
        lr *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - tr.warmup_steps) / span)))
    return lr


def _check_same_data(state: dict[str, object], cfg: RunConfig, data: TrainData, path: Path) -> None:
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


def _preflight(model: nn.Module, data: TrainData, device: torch.device) -> None:
    """Call the network once on two items so a shape mismatch is a clear error up front."""
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
    if tuple(out.shape) != tuple(x.shape):
        raise ConfigError(
            f"model: output shape {list(out.shape)} differs from input shape {list(x.shape)}; "
            "the network must return one value per input value"
        )


def train(
    cfg: RunConfig,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
    stop_after: int | None = None,
) -> RunResult:
    """Train per ``cfg``; with ``resume`` continue from the run folder's latest checkpoint.

    ``stop_after`` ends the run (with a checkpoint) after that many steps of this call, for tests
    of resumption.
    """
    dist = init_distributed()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    run_dir = cfg.run_dir
    loaded = None
    if resume:
        found = ckpt.find_latest(run_dir)
        if found is None:
            raise ckpt.CheckpointError(
                f"{run_dir}: nothing to resume (no complete checkpoint); start without --resume"
            )
        loaded = ckpt.load_checkpoint(found)
    device = dist.device
    data = load_train_data(cfg, log=log if dist.is_main else (lambda s: None))
    sched = build_schedule(cfg.diffusion)
    torch.manual_seed(cfg.train.seed + dist.rank)
    model = build_model(cfg.model, data.sample_shape, data.num_classes, sched.num_steps).to(device)
    cpath = _compute_path(cfg, device, data)
    bf16, channels_last = cpath.bf16, cpath.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    _preflight(model, data, device)
    ema = EMA(model, cfg.train.ema_decay, cfg.train.ema_warmup)
    sync_free = _use_sync_free(cfg, device)
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
        _check_same_data(loaded.state, cfg, data, loaded.path)
        load_weights(model, loaded.model, str(loaded.path / "model.safetensors"))
        load_weights(ema.model, loaded.ema, str(loaded.path / "ema.safetensors"))
        ema.num_updates = int(loaded.state["ema_updates"])
        assert loaded.optimizer is not None
        opt.load_state_dict(loaded.optimizer)
        restore_rng(gen, loaded.rng, dist)
        step = int(loaded.state["step"])
    net: nn.Module = model
    if dist.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=dist.device_ids)
    if cfg.train.compile == "on":
        # Only the training forward/backward; checkpoints, EMA and previews use the plain module
        # (same parameters), so compiled and eager runs write the same files.
        net = torch.compile(net)  # type: ignore[assignment]
    sched_dev = sched.to(device)
    batcher = Batcher(data, cfg, sched, dist)
    meta_base = {
        "config": cfg.to_dict(),
        "data": data.describe(),
        "ddpmkit_version": __version__,
        "precision": "bf16" if bf16 else "fp32",
    }
    logger = MetricLogger(run_dir, enabled=dist.is_main, tensorboard=True)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        n_tmp = ckpt.clean_temporaries(run_dir)
        if n_tmp:
            log(f"removed {n_tmp} incomplete checkpoint temporaries from an earlier crash")
        ckpt.atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=1))
        n_params = sum(p.numel() for p in model.parameters())
        log(
            f"training {cfg.model.kind} ({n_params / 1e6:.2f}M parameters) on {data.source}, "
            f"{cpath.describe()}"
            f"{', sync-free step loop (fused AdamW)' if sync_free else ''}"
            f"{', torch.compile' if cfg.train.compile == 'on' else ''}, "
            f"{dist.world_size} process(es), "
            f"run folder {run_dir}"
        )

    def save(at_step: int) -> None:
        rng = rng_state(gen, dist)  # collective: every rank takes part
        if not dist.is_main:
            return
        meta = {**meta_base, "ema_updates": ema.num_updates, "world_size": dist.world_size}
        try:
            ckpt.save_checkpoint(
                run_dir,
                at_step,
                model=model.state_dict(),
                ema=ema.state_dict(),
                optimizer=opt.state_dict(),
                rng=rng,
                meta=meta,
                keep=cfg.train.keep_checkpoints,
            )
        except (OSError, SafetensorError) as e:  # disk full, quota, permissions
            # stop, keeping the previous checkpoint
            prev = ckpt.find_latest(run_dir)
            kept = f"the previous checkpoint {prev} is intact" if prev else "no earlier checkpoint"
            raise TrainingError(
                f"could not write the checkpoint of step {at_step} in {run_dir / 'checkpoints'}: "
                f"{getattr(e, 'strerror', None) or e}; {kept}; free space and resume with --resume"
            ) from None

    def weights_finite() -> bool:
        norms = torch._foreach_norm([p.detach() for p in model.parameters()])
        return bool(torch.isfinite(torch.stack(norms)).all())

    total = cfg.train.steps
    start_step, t0 = step, time.perf_counter()
    deadline = t0 + 60 * cfg.train.time_limit_min if cfg.train.time_limit_min > 0 else math.inf
    bar = None
    if progress and dist.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)
    acc_loss = torch.zeros((), device=device)
    q_sum = torch.zeros(4, device=device)
    q_cnt = torch.zeros(4, device=device)
    n_acc, bad_steps, last_loss, interrupted = 0, 0, float("nan"), False
    # sync-free loop: device counters (consecutive bad steps, bad and good steps since the log)
    bad_run = torch.zeros((), dtype=torch.long, device=device)
    bad_since_log = torch.zeros((), dtype=torch.long, device=device)
    good_since_log = torch.zeros((), device=device)

    @torch.no_grad()
    def add_loss_by_quarter(per_t: list[tuple[Tensor, Tensor]], keep: Tensor | None) -> None:
        """Per-sample losses into the sums by quarter of t; ``keep`` (0-d bool) masks a
        skipped step on the device (sync-free loop), None counts every sample."""
        for per_c, t_c in per_t:
            q = (t_c * 4 // sched.num_steps).clamp(max=3)
            if keep is None:
                q_sum.index_add_(0, q, per_c)
                q_cnt.index_add_(0, q, torch.ones_like(per_c))
            else:
                q_sum.index_add_(0, q, torch.where(keep, per_c, 0.0))
                q_cnt.index_add_(0, q, keep.float().expand_as(per_c))

    def safe_to_save() -> bool:
        """Sync-free loop: the stop rule, then whether the weights are finite (a bad streak
        shorter than max_bad_steps may follow an update that made them infinite). The
        synchronous loop never reaches a save with bad weights."""
        if not sync_free:
            return True
        stop_on_bad(int(bad_run), step)
        return weights_finite()

    def stop_on_bad(n_bad: int, at_step: int) -> None:
        """After ``train.max_bad_steps`` non-finite steps in a row: keep the last good state."""
        if n_bad < cfg.train.max_bad_steps:
            return
        # Skipped steps never changed the weights; if they are still finite they are the last
        # good state, else the newest checkpoint on disk is.
        if weights_finite():
            save(at_step)
        last = ckpt.find_latest(run_dir)
        where = f"last good checkpoint: {last}" if last else "no good checkpoint"
        raise TrainingError(
            f"the loss was non-finite for {n_bad} consecutive steps at step "
            f"{at_step}; stopped ({where}); lower train.lr or check the data"
        )

    previews = PreviewClock(t0, 60 * cfg.train.preview_every_min, deadline)
    t_log = time.perf_counter()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    try:
        while step < total:
            if stop_after is not None and step - start_step >= stop_after:
                break
            if time.perf_counter() > deadline:
                log(f"time limit of {cfg.train.time_limit_min} min reached at step {step}")
                break
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, step)
            x, y, t, noise = batcher.draw(gen, device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
                noise = noise.contiguous(memory_format=torch.channels_last)
            micro = cfg.train.grad_accum
            chunks = list(zip(x.chunk(micro), t.chunk(micro), noise.chunk(micro)))
            y_chunks = y.chunk(micro) if y is not None else [None] * len(chunks)
            opt.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=device)
            per_t: list[tuple[Tensor, Tensor]] = []
            for i, ((xc, tc, nc), yc) in enumerate(zip(chunks, y_chunks)):
                sync = nullcontext()
                if dist.world_size > 1 and i < len(chunks) - 1:
                    sync = net.no_sync()  # type: ignore[operator]
                with sync, autocast:
                    per, _ = diffusion_loss_per_sample(
                        net,
                        sched_dev,
                        xc,
                        y=yc,
                        t=tc,
                        noise=nc,
                        prediction=cfg.diffusion.prediction,
                        loss_type=cfg.diffusion.loss,  # type: ignore[arg-type]
                        min_snr_gamma=cfg.diffusion.min_snr_gamma or None,
                    )
                    loss = per.mean() * (xc.shape[0] / x.shape[0])
                loss.backward()
                step_loss += loss.detach()
                per_t.append((per.detach().float(), tc))
            # Gradients are identical on every rank after DDP's all-reduce, so this decision is
            # too: a non-finite loss on any rank makes the global gradient norm non-finite.
            max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else math.inf
            gnorm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            if sync_free:
                # The same decision without reading it: a bad step leaves weights, optimizer
                # state and EMA unchanged on the device, and is counted; it still takes a step
                # number (the host cannot know which steps were bad without synchronising).
                with torch.no_grad():
                    ok = torch.isfinite(gnorm) & torch.isfinite(step_loss)
                    ok_f = ok.float()
                    bad_run.copy_(torch.where(ok, 0, bad_run + 1))
                    bad_since_log.add_((~ok).long())
                    good_since_log.add_(ok_f)
                    opt.found_inf = 1.0 - ok_f  # type: ignore[attr-defined]
                    add_loss_by_quarter(per_t, ok)
                    acc_loss += torch.where(ok, step_loss, 0.0)
                opt.step()
                ema.update(model, weight=ok_f)
            else:
                if not (torch.isfinite(gnorm) and torch.isfinite(step_loss)):
                    bad_steps += 1
                    opt.zero_grad(set_to_none=True)
                    log(f"step {step}: non-finite loss, step skipped ({bad_steps} in a row)")
                    stop_on_bad(bad_steps, step)
                    continue
                bad_steps = 0
                add_loss_by_quarter(per_t, None)
                opt.step()
                ema.update(model)
                acc_loss += step_loss
            step += 1
            n_acc += 1
            now = time.perf_counter()  # one clock read per step: the bar and timed previews
            if bar is not None:
                bar.update(1)
                if math.isfinite(deadline) and step - start_step >= 3:
                    # The time limit ends the run: the bar's total is the step it will reach,
                    # from the rate so far (previews included), re-estimated every step.
                    rate = (step - start_step) / max(now - t0, 1e-9)
                    bar.total = max(step, min(total, step + int(rate * max(deadline - now, 0))))
            if step % cfg.train.log_every == 0 or step == total:
                now = time.perf_counter()
                if dist.world_size > 1:  # report the global batch's numbers, not rank 0's
                    dist.all_reduce_mean(acc_loss)
                    dist.all_reduce_sum(q_sum)
                    dist.all_reduce_sum(q_cnt)
                n_good = n_acc
                if sync_free:  # the one synchronisation: at log steps
                    n_good = int(good_since_log)
                    n_bad = int(bad_since_log)
                    if n_bad:
                        log(f"steps {step - n_acc}-{step - 1}: {n_bad} non-finite, skipped")
                    stop_on_bad(int(bad_run), step)
                    bad_since_log.zero_()
                    good_since_log.zero_()
                last_loss = float(acc_loss) / max(n_good, 1) if n_good else float("nan")
                ips = n_acc * batcher.g / max(now - t_log, 1e-9)
                rec: dict[str, float] = {
                    "step": step,
                    "loss": last_loss,
                    "lr": _lr_at(cfg, step - 1),
                    "images_per_s": ips,
                    "time_s": now - t0,
                }
                for k in range(4):
                    if float(q_cnt[k]) > 0:
                        rec[f"loss_q{k}"] = float(q_sum[k] / q_cnt[k])
                logger.log(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{last_loss:.4f}", ips=f"{ips:.0f}")
                acc_loss.zero_()
                q_sum.zero_()
                q_cnt.zero_()
                n_acc, t_log = 0, now
            by_step = bool(cfg.train.sample_every) and step % cfg.train.sample_every == 0
            if dist.is_main and (by_step or previews.due(now)):
                write_preview(ema.model, sched, data, cfg, run_dir, step, logger, bf16)
                previews.done(time.perf_counter())
            if step % cfg.train.checkpoint_every == 0 and safe_to_save():
                save(step)
    except KeyboardInterrupt:
        interrupted = True
        log(f"interrupted at step {step}; writing a checkpoint")
    finally:
        if bar is not None:
            bar.close()
    if not safe_to_save():
        last = ckpt.find_latest(run_dir)
        where = f"last good checkpoint: {last}" if last else "no good checkpoint"
        raise TrainingError(
            f"the weights are non-finite at step {step} ({int(bad_run)} non-finite steps in a "
            f"row); not saved ({where}); lower train.lr or check the data"
        )
    save(step)
    files: list[Path] = []
    if dist.is_main:
        if not interrupted:  # on Ctrl-C: checkpoint and export only, exit promptly
            files = write_preview(
                ema.model, sched, data, cfg, run_dir, step, logger, bf16, final=True
            )
        ckpt.save_model_export(run_dir / "model", ema.state_dict(), {**meta_base, "step": step})
        files.append(run_dir / "model" / "model.safetensors")
        elapsed = time.perf_counter() - t0
        log(f"done: step {step} in {elapsed:.0f} s; model in {run_dir / 'model'}")
    logger.close()
    dist.barrier()
    return RunResult(run_dir, step, last_loss, interrupted, files)
