"""The rules that end a run.

Checked before every step, in order (:func:`default_stop_rules`); the first that answers ends the
step loop, and the run then writes its final checkpoint:

- :class:`StepsReached`: ``train.steps`` done;
- :class:`StopAfter`: this call's ``stop_after`` steps done (tests of resumption);
- :class:`TimeLimit`: ``train.time_limit_min`` of wall-clock since the first step.

Two more end a run from elsewhere:

- an interrupt: SIGINT arrives as ``KeyboardInterrupt`` (the CLI turns SIGTERM into one), at any
  moment of a step; the trainer then checkpoints, exports and returns ``interrupted=True``;
- :class:`BadStepLimit`: ``train.max_bad_steps`` non-finite steps in a row raise
  :class:`TrainingError`, after saving the weights if they are still the last good state.

A rule is any callable ``rule(state) -> Stop | None``, so a later objective can add its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ddpmkit.training import checkpoint as ckpt

if TYPE_CHECKING:
    from ddpmkit.training.config import RunConfig
    from ddpmkit.training.trainer import TrainState

__all__ = [
    "BadStepLimit",
    "StepsReached",
    "Stop",
    "StopAfter",
    "StopRule",
    "TimeLimit",
    "TrainingError",
    "default_stop_rules",
    "deadline_for",
]


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. the loss stayed non-finite); a checkpoint was written."""


@dataclass(frozen=True)
class Stop:
    """Why the step loop ended: ``reason`` names the rule, ``message`` (if any) is logged."""

    reason: str
    message: str | None = None


class StopRule(Protocol):
    def __call__(self, state: TrainState) -> Stop | None: ...


@dataclass(frozen=True)
class StepsReached:
    """``train.steps`` steps done in total (over all resumes)."""

    total: int

    def __call__(self, state: TrainState) -> Stop | None:
        return Stop("steps") if state.step >= self.total else None


@dataclass(frozen=True)
class StopAfter:
    """``n`` steps done in this call (checkpointed like any end of a run)."""

    n: int

    def __call__(self, state: TrainState) -> Stop | None:
        return Stop("stop_after") if state.step - state.start_step >= self.n else None


@dataclass(frozen=True)
class TimeLimit:
    """Past ``state.deadline`` (``train.time_limit_min`` after the first step's start)."""

    minutes: float

    def __call__(self, state: TrainState) -> Stop | None:
        if time.perf_counter() > state.deadline:
            msg = f"time limit of {self.minutes} min reached at step {state.step}"
            return Stop("time_limit", msg)
        return None


def deadline_for(cfg: RunConfig, t0: float) -> float:
    """The clock value at which :class:`TimeLimit` ends a run started at ``t0`` (inf: none)."""
    return t0 + 60 * cfg.train.time_limit_min if cfg.train.time_limit_min > 0 else math.inf


def default_stop_rules(cfg: RunConfig, stop_after: int | None = None) -> list[StopRule]:
    """The rules ``train`` checks before each step, in this order."""
    rules: list[StopRule] = [StepsReached(cfg.train.steps)]
    if stop_after is not None:
        rules.append(StopAfter(stop_after))
    rules.append(TimeLimit(cfg.train.time_limit_min))
    return rules


class BadStepLimit:
    """After ``max_bad`` non-finite steps in a row: keep the last good state and stop.

    Skipped steps never changed the weights; if they are still finite they are the last good
    state and are saved (``save``), else the newest checkpoint on disk is.
    """

    def __init__(
        self,
        max_bad: int,
        run_dir: Path,
        save: Callable[[int], None],
        weights_finite: Callable[[], bool],
    ):
        self.max_bad, self.run_dir = max_bad, run_dir
        self.save, self.weights_finite = save, weights_finite

    def check(self, n_bad: int, at_step: int) -> None:
        """Raise :class:`TrainingError` if ``n_bad`` consecutive bad steps reach the limit."""
        if n_bad < self.max_bad:
            return
        if self.weights_finite():
            self.save(at_step)
        raise TrainingError(
            f"the loss was non-finite for {n_bad} consecutive steps at step "
            f"{at_step}; stopped ({self.last_good()}); lower train.lr or check the data"
        )

    def last_good(self) -> str:
        """'last good checkpoint: PATH' or 'no good checkpoint', for the error messages."""
        last = ckpt.find_latest(self.run_dir)
        return f"last good checkpoint: {last}" if last else "no good checkpoint"
