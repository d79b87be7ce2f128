"""Train a run as ``ddpm train`` does: ``ddpmkit.train(cfg)``.

:func:`ddpmkit.training.loop.train` with sample previews (:mod:`ddpmkit.previews`) among the
trainer's default callbacks, so grids appear under ``<run>/samples/`` while it trains. The
trainer itself (``training/``) does not draw: previews use ``viz/``, a sibling layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ddpmkit.previews import PreviewCallback
from ddpmkit.training.callbacks import Callback
from ddpmkit.training.config import RunConfig
from ddpmkit.training.loop import default_callbacks
from ddpmkit.training.loop import train as train_loop
from ddpmkit.training.trainer import RunResult

__all__ = ["train"]


def train(
    cfg: RunConfig,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
    stop_after: int | None = None,
    extra_callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Train per ``cfg`` with previews (see :func:`ddpmkit.training.loop.train` for the rest)."""
    callbacks = default_callbacks(progress=progress, previews=[PreviewCallback()])
    return train_loop(
        cfg,
        resume=resume,
        log=log,
        progress=progress,
        stop_after=stop_after,
        callbacks=callbacks,
        extra_callbacks=extra_callbacks,
    )
