"""The trainer: a built run (:mod:`~ddpmkit.training.setup`), a step
(:mod:`~ddpmkit.training.step`), stop rules (:mod:`~ddpmkit.training.stopping`) and callbacks
(:mod:`~ddpmkit.training.callbacks`) for everything else.

One step of :meth:`Trainer.fit`: the stop rules in order; the step (a skipped synchronous step
goes back to the rules); then the step count, the log record at log steps (``on_log``), and
``on_step_end``. After the loop: the final checkpoint, ``on_end``, the model export.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddpmkit.training.callbacks import Callback
from ddpmkit.training.checkpointing import Checkpointer
from ddpmkit.training.distributed import DistInfo
from ddpmkit.training.metrics_log import LossWindow, MetricLogger
from ddpmkit.training.setup import RunSetup, prepare_run_dir
from ddpmkit.training.step import lr_at, make_step
from ddpmkit.training.stopping import (
    BadStepLimit,
    Stop,
    StopRule,
    TrainingError,
    deadline_for,
)

__all__ = ["RunResult", "TrainState", "Trainer"]


@dataclass
class RunResult:
    run_dir: Path
    step: int
    last_loss: float
    interrupted: bool = False
    files: list[Path] = field(default_factory=list)


@dataclass
class TrainState:
    """Where the run is. ``step``: steps done in total; ``start_step``: where this call began;
    ``t0``: the clock (``time.perf_counter``) when the step loop began; ``now``: the clock at the
    end of the latest step (re-read after its log record at log steps); ``deadline``: the clock
    at which the time limit ends the run (inf: none); ``stop``: the rule that ended the loop."""

    step: int
    start_step: int
    t0: float = 0.0
    now: float = 0.0
    deadline: float = math.inf
    last_loss: float = float("nan")
    interrupted: bool = False
    stop: Stop | None = None
    files: list[Path] = field(default_factory=list)


class Trainer:
    """Runs the step loop of a built run, calling ``callbacks`` at the events of
    :mod:`ddpmkit.training.callbacks` and ending on the first of ``stop_rules``."""

    def __init__(
        self,
        run: RunSetup,
        *,
        callbacks: Sequence[Callback],
        stop_rules: Sequence[StopRule],
        log: Callable[[str], None] = print,
    ):
        self.run, self.cfg, self.log = run, run.cfg, log
        self.callbacks, self.stop_rules = list(callbacks), list(stop_rules)
        self.state = TrainState(step=run.start_step, start_step=run.start_step)
        self.logger = MetricLogger(run.run_dir, enabled=run.dist.is_main, tensorboard=True)
        prepare_run_dir(run, log)
        self.checkpointer = Checkpointer(run)
        self.window = LossWindow(run.device, run.sched.num_steps)
        bad_limit = BadStepLimit(
            self.cfg.train.max_bad_steps,
            run.run_dir,
            self.save_checkpoint,
            self.checkpointer.weights_finite,
        )
        self.step_fn = make_step(run, self.window, bad_limit, log)

    @property
    def dist(self) -> DistInfo:
        return self.run.dist

    def emit(self, event: str, *args: Any) -> None:
        """Call ``event`` on every callback, in list order."""
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def save_checkpoint(self, step: int) -> None:
        """Checkpoint ``step`` (collective: every rank calls it), then ``on_checkpoint``."""
        self.checkpointer.save(step)
        self.emit("on_checkpoint", step)

    def fit(self) -> RunResult:
        """Train until a stop rule or an interrupt; checkpoint; export the EMA model."""
        s = self.state
        s.t0 = time.perf_counter()
        s.deadline = deadline_for(self.cfg, s.t0 - self.run.pre_seconds)  # alignment counts
        self.emit("on_start")
        self.window.reset(time.perf_counter())
        try:
            self._loop()
        except KeyboardInterrupt:  # SIGINT, or SIGTERM as the CLI delivers it
            s.interrupted = True
            self.log(f"interrupted at step {s.step}; writing a checkpoint")
        finally:
            self.emit("on_loop_end")
        self._final_checkpoint()
        self.emit("on_end")
        if self.dist.is_main:
            self.checkpointer.export_model(s.step)
            s.files.append(self.run.run_dir / "model" / "model.safetensors")
            elapsed, out = time.perf_counter() - s.t0, self.run.run_dir / "model"
            self.log(f"done: step {s.step} in {elapsed:.0f} s; model in {out}")
        self.logger.close()
        self.dist.barrier()
        return RunResult(self.run.run_dir, s.step, s.last_loss, s.interrupted, s.files)

    def _stop(self) -> Stop | None:
        for rule in self.stop_rules:
            stop = rule(self.state)
            if stop is not None:
                return stop
        return None

    def _loop(self) -> None:
        s = self.state
        while True:
            s.stop = self._stop()
            if s.stop is not None:
                if s.stop.message:
                    self.log(s.stop.message)
                return
            self.step_fn.time_frac = self._time_frac()
            if not self.step_fn(s.step):
                continue  # skipped: weights unchanged, no step number taken
            s.step += 1
            self.window.n_steps += 1
            s.now = time.perf_counter()  # one clock read per step: the bar and timed previews
            if s.step % self.cfg.train.log_every == 0 or s.step == self.cfg.train.steps:
                self._log_window()
            self.emit("on_step_end")

    def _time_frac(self) -> float:
        """Share of the time limit used so far, for a learning rate that decays with time
        (``train.lr_decay = "cosine"``); 0 without a time limit or decay. Every rank uses
        the mean of the ranks' clocks, so all ranks step with the same learning rate."""
        s = self.state
        if self.cfg.train.lr_decay == "none" or not math.isfinite(s.deadline):
            return 0.0
        frac = (time.perf_counter() - s.t0) / max(s.deadline - s.t0, 1e-9)
        if self.dist.world_size > 1:
            t = torch.tensor([frac], dtype=torch.float64, device=self.run.device)
            self.dist.all_reduce_mean(t)
            frac = float(t)
        return min(1.0, max(0.0, frac))

    def _log_window(self) -> None:
        """The metrics record of the steps since the last one, to ``on_log``."""
        s, w = self.state, self.window
        s.now = time.perf_counter()
        w.all_reduce(self.dist)
        n_good = self.step_fn.end_window(s.step)
        rec = w.record(
            s.step,
            n_good,
            lr=lr_at(self.cfg, s.step - 1, self.step_fn.time_frac),
            now=s.now,
            t0=s.t0,
            batch=self.run.batcher.g,
        )
        s.last_loss = rec["loss"]
        self.emit("on_log", rec)
        w.reset(s.now)

    def _final_checkpoint(self) -> None:
        """The run's last state to disk, unless the weights are non-finite (sync-free loop)."""
        s = self.state
        if not self.step_fn.safe_to_save(s.step):
            raise TrainingError(
                f"the weights are non-finite at step {s.step} ({self.step_fn.bad_streak()} "
                f"non-finite steps in a row); not saved ({self.step_fn.bad_limit.last_good()}); "
                "lower train.lr or check the data"
            )
        self.save_checkpoint(s.step)
