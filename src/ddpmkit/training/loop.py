"""Training: ``train(cfg)`` -> RunResult. One process, or one rank of torchrun/DDP.

``train`` builds the run (:mod:`~ddpmkit.training.setup`) and a
:class:`~ddpmkit.training.trainer.Trainer` with the default callbacks and stop rules, and runs
it. The parts: the step (:mod:`~ddpmkit.training.step`), logging
(:mod:`~ddpmkit.training.callbacks`, :mod:`~ddpmkit.training.metrics_log`), checkpoints
(:mod:`~ddpmkit.training.checkpointing`) and the stop rules (:mod:`~ddpmkit.training.stopping`).
Sample previews draw with ``viz/``, a sibling layer, so they are a callback from above:
:func:`ddpmkit.fit.train` (what ``ddpm train`` calls) adds :class:`ddpmkit.previews.
PreviewCallback` to these defaults.

Randomness: every step's global batch comes from one generator seeded from ``train.seed``, each
rank taking its slice (:mod:`ddpmkit.training.batches`), so N ranks at batch B see exactly the
samples one process sees at batch N*B, and a resumed run continues the same stream. The global
torch RNG (dropout) is seeded with seed + rank and checkpointed per run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ddpmkit.training.callbacks import Callback, MetricsLogging, ProgressBar
from ddpmkit.training.checkpointing import PeriodicCheckpoint
from ddpmkit.training.config import RunConfig
from ddpmkit.training.power_ema import PowerEMAs
from ddpmkit.training.setup import build_run
from ddpmkit.training.setup import preflight as _preflight  # noqa: F401  (its old home)
from ddpmkit.training.stopping import TrainingError, default_stop_rules
from ddpmkit.training.trainer import RunResult, Trainer

__all__ = ["RunResult", "TrainingError", "default_callbacks", "train"]


def default_callbacks(
    *, progress: bool = True, previews: Sequence[Callback] = ()
) -> list[Callback]:
    """What ``train`` does besides stepping, in this order: the progress bar (if
    ``progress``), metrics.jsonl/TensorBoard, ``previews`` (callbacks from a higher layer,
    e.g. :class:`ddpmkit.previews.PreviewCallback`), periodic checkpoints, the power-function
    EMAs of ``train.ema_sigma_rels`` (none by default)."""
    out: list[Callback] = [ProgressBar()] if progress else []
    return [*out, MetricsLogging(), *previews, PeriodicCheckpoint(), PowerEMAs()]


def train(
    cfg: RunConfig,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
    stop_after: int | None = None,
    callbacks: Sequence[Callback] | None = None,
    extra_callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Train per ``cfg``; with ``resume`` continue from the run folder's latest checkpoint.

    ``stop_after`` ends the run (with a checkpoint) after that many steps of this call, for tests
    of resumption. ``callbacks`` replaces :func:`default_callbacks` (``progress`` then has no
    effect); ``extra_callbacks`` run after them. The final checkpoint and the model export are
    the trainer's own, whatever the callbacks.
    """
    run = build_run(cfg, resume=resume, log=log)
    cbs = default_callbacks(progress=progress) if callbacks is None else list(callbacks)
    trainer = Trainer(
        run,
        callbacks=[*cbs, *extra_callbacks],
        stop_rules=default_stop_rules(cfg, stop_after),
        log=log,
    )
    return trainer.fit()
