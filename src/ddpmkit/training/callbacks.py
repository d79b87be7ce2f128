"""What a run does besides stepping: callbacks the :class:`~ddpmkit.training.trainer.Trainer`
calls at fixed moments, in list order (as minGPT's ``Trainer`` does).

Events, on every rank (a callback that writes files checks ``trainer.dist.is_main``):

``on_start``       the run is built and ``config.json`` written; the step loop starts next
                   (``state.t0`` and ``state.deadline`` are set).
``on_log``         a log step: ``record`` is the metrics.jsonl object (after the all-reduce).
``on_step_end``    after every completed step and its log record (``state.step`` is the number
                   of steps done, ``state.now`` the clock then). Skipped (non-finite) steps of
                   the synchronous loop are not completed steps.
``on_checkpoint``  a checkpoint of ``step`` was saved (rank 0 wrote it).
``on_loop_end``    the step loop ended, for any reason, errors included (close displays here).
``on_end``         the final checkpoint is saved (``state.interrupted`` says whether by an
                   interrupt); files appended to ``state.files`` are returned in
                   ``RunResult.files``. The model export and the last log line follow.

The default set (:func:`ddpmkit.training.loop.default_callbacks`): :class:`ProgressBar`,
:class:`MetricsLogging`, the previews
(:class:`~ddpmkit.training.previews.PreviewCallback`), the periodic checkpoints
(:class:`~ddpmkit.training.checkpointing.PeriodicCheckpoint`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ddpmkit.training.trainer import Trainer

__all__ = ["Callback", "MetricsLogging", "ProgressBar"]


class Callback:
    """Base class: every event does nothing; override the ones a callback needs."""

    def on_start(self, trainer: Trainer) -> None:
        pass

    def on_log(self, trainer: Trainer, record: dict[str, float]) -> None:
        pass

    def on_step_end(self, trainer: Trainer) -> None:
        pass

    def on_checkpoint(self, trainer: Trainer, step: int) -> None:
        pass

    def on_loop_end(self, trainer: Trainer) -> None:
        pass

    def on_end(self, trainer: Trainer) -> None:
        pass


class MetricsLogging(Callback):
    """Each log record to ``metrics.jsonl`` and TensorBoard (``trainer.logger``)."""

    def on_log(self, trainer: Trainer, record: dict[str, float]) -> None:
        trainer.logger.log(record)


class ProgressBar(Callback):
    """A tqdm bar on rank 0: steps, loss and images/s of the last log, and with a time limit
    a total re-estimated every step from the rate so far."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_start(self, trainer: Trainer) -> None:
        if trainer.dist.is_main:
            from tqdm import tqdm

            total, step = trainer.cfg.train.steps, trainer.state.step
            self.bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)

    def on_log(self, trainer: Trainer, record: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", ips=f"{record['images_per_s']:.0f}")

    def on_step_end(self, trainer: Trainer) -> None:
        if self.bar is None:
            return
        s = trainer.state
        self.bar.update(1)
        if math.isfinite(s.deadline) and s.step - s.start_step >= 3:
            # The time limit ends the run: the bar's total is the step it will reach, from the
            # rate so far (previews included), re-estimated every step.
            rate = (s.step - s.start_step) / max(s.now - s.t0, 1e-9)
            left = int(rate * max(s.deadline - s.now, 0))
            self.bar.total = max(s.step, min(trainer.cfg.train.steps, s.step + left))

    def on_loop_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
