"""Checkpoints during a run: the writer of the run's full state, and the periodic callback.

A checkpoint holds the model, EMA, optimizer and RNG states (data generator + every rank's
global torch RNG), so a resumed run continues the exact stream. Gathering the RNG states is
collective under DDP: every rank calls :meth:`Checkpointer.save`, rank 0 writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError

from ddpmkit.training import checkpoint as ckpt
from ddpmkit.training.batches import rng_state
from ddpmkit.training.callbacks import Callback
from ddpmkit.training.stopping import TrainingError

if TYPE_CHECKING:
    from ddpmkit.training.setup import RunSetup
    from ddpmkit.training.trainer import Trainer

__all__ = ["Checkpointer", "PeriodicCheckpoint"]


class Checkpointer:
    """Writes ``<run>/checkpoints/step_*`` from a run's current state."""

    def __init__(self, run: RunSetup):
        self.run = run

    def save(self, at_step: int) -> None:
        """Checkpoint ``at_step``; a write error (disk full, quota, permissions) stops the run
        with :class:`TrainingError`, keeping the previous checkpoint."""
        run = self.run
        rng = rng_state(run.gen, run.dist)  # collective: every rank takes part
        if not run.dist.is_main:
            return
        meta = {
            **run.meta_base,
            "ema_updates": run.ema.num_updates,
            "world_size": run.dist.world_size,
        }
        try:
            ckpt.save_checkpoint(
                run.run_dir,
                at_step,
                model=run.model.state_dict(),
                ema=run.ema.state_dict(),
                optimizer=run.opt.state_dict(),
                rng=rng,
                meta=meta,
                keep=run.cfg.train.keep_checkpoints,
            )
        except (OSError, SafetensorError) as e:
            prev = ckpt.find_latest(run.run_dir)
            kept = f"the previous checkpoint {prev} is intact" if prev else "no earlier checkpoint"
            raise TrainingError(
                f"could not write the checkpoint of step {at_step} in "
                f"{run.run_dir / 'checkpoints'}: {getattr(e, 'strerror', None) or e}; {kept}; "
                "free space and resume with --resume"
            ) from None

    def weights_finite(self) -> bool:
        """Whether every parameter of the model is finite (one host read)."""
        norms = torch._foreach_norm([p.detach() for p in self.run.model.parameters()])
        return bool(torch.isfinite(torch.stack(norms)).all())

    def export_model(self, step: int) -> None:
        """Rank 0: the EMA weights as the run's standalone model (``<run>/model/``)."""
        run = self.run
        out = run.run_dir / "model"
        ckpt.save_model_export(out, run.ema.state_dict(), {**run.meta_base, "step": step})


class PeriodicCheckpoint(Callback):
    """A checkpoint every ``train.checkpoint_every`` steps, when the state is safe to save
    (the sync-free loop may have made the weights non-finite within a short bad streak)."""

    def on_step_end(self, trainer: Trainer) -> None:
        step = trainer.state.step
        if step % trainer.cfg.train.checkpoint_every == 0 and trainer.step_fn.safe_to_save(step):
            trainer.save_checkpoint(step)
