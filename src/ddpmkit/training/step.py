"""One optimisation step: learning rate, batch, forward/backward over micro-batches, gradient
clipping, then the update of weights and EMA, in two variants.

- :class:`SyncStep` reads ``isfinite(grad norm)`` on the host and skips a bad update (the step
  number does not advance; ``train.max_bad_steps`` in a row stop the run).
- :class:`SyncFreeStep` keeps that decision on the device (``train.sync_free``): fused AdamW skips
  its update when ``found_inf`` is set, the EMA moves by 0, the bad-step counters are device
  tensors read only at log steps and before checkpoints. A bad step still takes a step number.

Both add the step's losses to the :class:`~ddpmkit.training.metrics_log.LossWindow`. A new
objective plugs in by overriding :meth:`TrainStep.forward_backward`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from ddpmkit.diffusion import diffusion_loss_per_sample
from ddpmkit.training.config import RunConfig
from ddpmkit.training.metrics_log import LossWindow
from ddpmkit.training.setup import RunSetup
from ddpmkit.training.stopping import BadStepLimit

__all__ = ["SyncFreeStep", "SyncStep", "TrainStep", "lr_at", "make_step"]


def lr_at(cfg: RunConfig, step: int, time_frac: float = 0.0) -> float:
    """Linear warm-up to train.lr over warmup_steps, then constant or cosine decay to 0.

    The cosine's progress is whichever budget is nearer its end: the steps after warm-up
    ((step - warmup) / (train.steps - warmup)) or ``time_frac``, the share of this
    invocation's ``train.time_limit_min`` already used (0 without a time limit). So a run
    stopped by its time limit, like the default preset, still ends at a small learning rate:
    lr = train.lr * (1 + cos(pi * p)) / 2, p = min(1, max(step progress, time_frac)).
    """
    tr = cfg.train
    lr = tr.lr * min(1.0, (step + 1) / tr.warmup_steps) if tr.warmup_steps > 0 else tr.lr
    if tr.lr_decay == "cosine" and step >= tr.warmup_steps:
        span = max(1, tr.steps - tr.warmup_steps)
        progress = max((step - tr.warmup_steps) / span, time_frac)
        lr *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return lr


class TrainStep:
    """The parts both variants share. ``__call__(step)`` trains step number ``step`` and says
    whether it was completed (a skipped synchronous step was not)."""

    def __init__(
        self,
        run: RunSetup,
        window: LossWindow,
        bad_limit: BadStepLimit,
        log: Callable[[str], None],
    ):
        self.run, self.cfg, self.window = run, run.cfg, window
        self.bad_limit, self.log = bad_limit, log
        self.time_frac = 0.0  # share of the time limit used; the trainer sets it every step
        bf16 = run.cpath.bf16
        self.autocast: AbstractContextManager[Any] = (
            torch.autocast(run.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        )

    def __call__(self, step: int) -> bool:
        raise NotImplementedError

    def prepare(self, step: int) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """Set this step's learning rate and draw its batch (x, y, t, noise) from the run's
        generator (the one consumer of that stream)."""
        run = self.run
        for group in run.opt.param_groups:
            group["lr"] = lr_at(self.cfg, step, self.time_frac)
        x, y, t, noise = run.batcher.draw(run.gen, run.device)
        if run.cpath.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            noise = noise.contiguous(memory_format=torch.channels_last)
        return x, y, t, noise

    def forward_backward(
        self, x: Tensor, y: Tensor | None, t: Tensor, noise: Tensor
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]], Tensor]:
        """Gradients of the batch loss over ``train.grad_accum`` micro-batches, then clipping.

        Returns the batch loss (0-d, detached), the per-sample losses with their t, and the
        gradient norm before clipping.
        """
        run, cfg = self.run, self.cfg
        micro = cfg.train.grad_accum
        chunks = list(zip(x.chunk(micro), t.chunk(micro), noise.chunk(micro)))
        y_chunks = y.chunk(micro) if y is not None else [None] * len(chunks)
        run.opt.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=run.device)
        per_t: list[tuple[Tensor, Tensor]] = []
        for i, ((xc, tc, nc), yc) in enumerate(zip(chunks, y_chunks)):
            sync: AbstractContextManager[Any] = nullcontext()
            if run.dist.world_size > 1 and i < len(chunks) - 1:
                sync = run.net.no_sync()  # type: ignore[operator]
            with sync, self.autocast:
                per, _ = diffusion_loss_per_sample(
                    run.net,
                    run.sched_dev,
                    xc,
                    y=yc,
                    t=tc,
                    noise=nc,
                    prediction=cfg.diffusion.prediction,
                    loss_type=cfg.diffusion.loss,  # type: ignore[arg-type]
                    min_snr_gamma=cfg.diffusion.min_snr_gamma or None,
                    learn_sigma=cfg.diffusion.learn_sigma,
                    vlb_weight=cfg.diffusion.vlb_weight,
                    decoder="discretized" if run.data.kind == "image" else "continuous",
                )
                loss = per.mean() * (xc.shape[0] / x.shape[0])
            loss.backward()
            step_loss += loss.detach()
            per_t.append((per.detach().float(), tc))
        # Gradients are identical on every rank after DDP's all-reduce, so the decision on them
        # is too: a non-finite loss on any rank makes the global gradient norm non-finite.
        max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else math.inf
        gnorm = nn.utils.clip_grad_norm_(run.model.parameters(), max_norm)
        return step_loss, per_t, gnorm

    def end_window(self, step: int) -> int:
        """At a log step (after the window's all-reduce): the number of good steps in it."""
        return self.window.n_steps

    def safe_to_save(self, step: int) -> bool:
        """Whether the current weights may be checkpointed at ``step``."""
        return True

    def bad_streak(self) -> int:
        """Non-finite steps in a row now."""
        raise NotImplementedError


class SyncStep(TrainStep):
    """Skips a non-finite step on the host: it changes nothing and takes no step number."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.bad_run = 0

    def __call__(self, step: int) -> bool:
        run = self.run
        step_loss, per_t, gnorm = self.forward_backward(*self.prepare(step))
        if not (torch.isfinite(gnorm) and torch.isfinite(step_loss)):
            self.bad_run += 1
            run.opt.zero_grad(set_to_none=True)
            self.log(f"step {step}: non-finite loss, step skipped ({self.bad_run} in a row)")
            self.bad_limit.check(self.bad_run, step)
            return False
        self.bad_run = 0
        self.window.add_by_quarter(per_t, None)
        run.opt.step()
        run.ema.update(run.model)
        self.window.loss += step_loss
        return True

    def bad_streak(self) -> int:
        return self.bad_run


class SyncFreeStep(TrainStep):
    """Skips a non-finite step on the device; counts it in device tensors read at log steps.

    The synchronous loop never reaches a save with bad weights; this one can (a bad streak
    shorter than max_bad_steps may follow an update that made them infinite), so
    :meth:`safe_to_save` checks the streak rule and then the weights.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        device = self.run.device
        self.bad_run = torch.zeros((), dtype=torch.long, device=device)  # consecutive
        self.bad_since_log = torch.zeros((), dtype=torch.long, device=device)
        self.good_since_log = torch.zeros((), device=device)

    def __call__(self, step: int) -> bool:
        run = self.run
        step_loss, per_t, gnorm = self.forward_backward(*self.prepare(step))
        # The same decision as SyncStep without reading it: a bad step leaves weights,
        # optimizer state and EMA unchanged on the device, and is counted; it still takes a
        # step number (the host cannot know which steps were bad without synchronising).
        with torch.no_grad():
            ok = torch.isfinite(gnorm) & torch.isfinite(step_loss)
            ok_f = ok.float()
            self.bad_run.copy_(torch.where(ok, 0, self.bad_run + 1))
            self.bad_since_log.add_((~ok).long())
            self.good_since_log.add_(ok_f)
            run.opt.found_inf = 1.0 - ok_f  # type: ignore[attr-defined]
            self.window.add_by_quarter(per_t, ok)
            self.window.loss += torch.where(ok, step_loss, 0.0)
        run.opt.step()
        run.ema.update(run.model, weight=ok_f)
        return True

    def end_window(self, step: int) -> int:
        """The one synchronisation: report the window's bad steps, apply the streak rule."""
        n_good = int(self.good_since_log)
        n_bad = int(self.bad_since_log)
        if n_bad:
            n = self.window.n_steps
            self.log(f"steps {step - n}-{step - 1}: {n_bad} non-finite, skipped")
        self.bad_limit.check(int(self.bad_run), step)
        self.bad_since_log.zero_()
        self.good_since_log.zero_()
        return n_good

    def safe_to_save(self, step: int) -> bool:
        self.bad_limit.check(int(self.bad_run), step)
        return self.bad_limit.weights_finite()

    def bad_streak(self) -> int:
        return int(self.bad_run)


def make_step(
    run: RunSetup, window: LossWindow, bad_limit: BadStepLimit, log: Callable[[str], None]
) -> TrainStep:
    """The variant ``train.sync_free`` chose for this device."""
    cls = SyncFreeStep if run.sync_free else SyncStep
    return cls(run, window, bad_limit, log)
