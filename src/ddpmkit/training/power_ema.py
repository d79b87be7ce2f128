"""Power-function EMAs (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", EDM2, Sec. 3): averages whose length is a fixed share of the run so far.

A classic EMA with decay d averages the last ~1/(1 - d) steps whatever the run's length: too
long early, too short late, and its best d depends on how many steps a time limit will allow,
which nobody knows in advance. The power-function EMA weights step i's weights by i^gamma over
the whole run, so the averaging window grows with the run. Its update, with t = 1, 2, ... the
number of the update, is

    ema_t = beta_t ema_{t-1} + (1 - beta_t) w_t,   beta_t = (1 - 1/t)^(gamma + 1)   (EDM2 eq. 2)

(beta_1 = 0: the first update copies the weights). Its length is given as sigma_rel, the
standard deviation of the weight profile p(s) proportional to s^gamma on [0, t], relative to t:

    sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))                       (EDM2 eq. 3)

:class:`PowerEMAs` is a trainer callback that keeps one such average per ``train.ema_sigma_rels``
value beside the run's classic EMA, and writes each as a standalone model folder
``<run>/model_ema/sigma_rel_0.100/`` (``ddpmkit.load`` and ``ddpm eval`` read it), at every
checkpoint and at the end. Which length is best is then measured on the trained run (post-hoc
selection, as EDM2 does) instead of guessed before it. ``train.ema_sigma_rel > 0`` makes the
run's own average (checkpoints' ``ema.safetensors`` and ``<run>/model/``) a :class:`PowerEMA`
of that length instead of the classic EMA of ``train.ema_decay``.

Snapshots for post-hoc lengths (EDM2 Sec. 3.2): with ``train.ema_snapshot_every = N`` each
average is also written every N steps (and at the run's last step) as
``<run>/ema_snapshots/sigma_rel_0.100/step_00001000.safetensors``, in the weights' own dtype
(float32; EDM2 stores fp16, but the reconstruction's coefficients have both signs and reach ~5
when extrapolating below the shortest stored length, which would amplify fp16's rounding), with
step, sigma_rel, gamma and the update count in the safetensors metadata. Each file is written
atomically (a reader never sees half of one); a resumed run keeps the old ones and rewrites
those after its checkpoint with the same weights (resume is exact). Then

    ddpm train --set 'train.ema_sigma_rels=[0.05, 0.10]' --set train.ema_snapshot_every=250
    ddpm ema runs/fashion_mnist --sigma-rel 0.08    # -> <run>/model_ema/posthoc_sigma_rel_0.080/

combines them into the average of any length (:mod:`~ddpmkit.training.posthoc_ema`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ddpmkit.errors import CheckpointError
from ddpmkit.io import atomic_write
from ddpmkit.training import checkpoint as ckpt
from ddpmkit.training.build import load_weights
from ddpmkit.training.callbacks import Callback
from ddpmkit.training.ema import EMA
from ddpmkit.training.stopping import TrainingError

if TYPE_CHECKING:
    from ddpmkit.training.trainer import Trainer

__all__ = [
    "PowerEMA",
    "PowerEMAs",
    "Snapshot",
    "gamma_from_sigma_rel",
    "list_snapshots",
    "power_ema_dir",
    "read_snapshot",
    "sigma_rel_of_gamma",
    "snapshot_path",
    "write_snapshot",
]

SNAPSHOT_DIR = "ema_snapshots"
_SNAPSHOT_FILE = re.compile(r"^step_(\d+)\.safetensors$")


def sigma_rel_of_gamma(gamma: float) -> float:
    """EDM2 eq. 3: the relative std of the profile s^gamma on [0, 1]."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """The exponent gamma >= 0 with :func:`sigma_rel_of_gamma` (gamma) = sigma_rel.

    On gamma >= 0, sigma_rel falls monotonically from 1/sqrt(12) = 0.2887 (gamma = 0: a uniform
    average of the whole run) towards 0, so bisection (on log(1 + gamma)) finds the one root.
    """
    top = sigma_rel_of_gamma(0.0)
    if not 0.0 < sigma_rel < top:
        raise ValueError(f"sigma_rel must be in (0, {top:.4f}), got {sigma_rel}")
    lo, hi = 0.0, math.log1p(1e9)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if sigma_rel_of_gamma(math.expm1(mid)) > sigma_rel:
            lo = mid
        else:
            hi = mid
    return math.expm1(0.5 * (lo + hi))


def power_ema_dir(run_dir: Path, sigma_rel: float) -> Path:
    """Where the average of length ``sigma_rel`` is written: ``<run>/model_ema/sigma_rel_X``."""
    return Path(run_dir) / "model_ema" / f"sigma_rel_{sigma_rel:.3f}"


def snapshot_path(run_dir: Path, sigma_rel: float, step: int) -> Path:
    """``<run>/ema_snapshots/sigma_rel_X/step_00001000.safetensors``."""
    return (
        Path(run_dir) / SNAPSHOT_DIR / f"sigma_rel_{sigma_rel:.3f}" / f"step_{step:08d}.safetensors"
    )


@dataclass(frozen=True)
class Snapshot:
    """One stored snapshot: the average of length ``sigma_rel`` (exponent ``gamma``) at the
    run's ``step``, after ``updates`` updates. Its profile covers steps (step - updates, step]:
    ``updates < step`` when the average restarted on a resume, and then it is no power-function
    profile from step 0."""

    path: Path
    step: int
    sigma_rel: float
    gamma: float
    updates: int


def write_snapshot(path: Path, ema: PowerEMA, step: int) -> Path:
    """Write ``ema``'s weights with their step, length and update count, atomically."""
    tensors = ckpt._contiguous(ema.state_dict())
    meta = {
        "step": str(step),
        "sigma_rel": repr(ema.sigma_rel),
        "gamma": repr(ema.gamma),
        "updates": str(ema.num_updates),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def list_snapshots(run_dir: Path) -> list[Snapshot]:
    """Every snapshot of the run, sorted by (step, sigma_rel); only file headers are read.

    Raises :class:`CheckpointError` naming a file whose header cannot be read (temporary files
    of a write in progress, ``.step_*.tmp-*``, are not snapshots and are skipped).
    """
    root = Path(run_dir) / SNAPSHOT_DIR
    found: list[Snapshot] = []
    for path in sorted(root.glob("sigma_rel_*/step_*.safetensors")):
        if not _SNAPSHOT_FILE.match(path.name):
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            found.append(
                Snapshot(
                    path,
                    int(meta["step"]),
                    float(meta["sigma_rel"]),
                    float(meta["gamma"]),
                    int(meta["updates"]),
                )
            )
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable EMA snapshot ({e})") from None
    return sorted(found, key=lambda s: (s.step, s.sigma_rel))


def read_snapshot(snap: Snapshot) -> dict[str, Tensor]:
    """The weights of one snapshot (:class:`CheckpointError` if unreadable)."""
    try:
        return load_file(str(snap.path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{snap.path}: not a readable EMA snapshot ({e})") from None


class PowerEMA(EMA):
    """One power-function average of a network's floating-point parameters and buffers: the
    classic :class:`~ddpmkit.training.ema.EMA` update with the decay of EDM2 eq. 2."""

    def __init__(self, model: nn.Module, sigma_rel: float):
        super().__init__(model, decay=0.0, warmup=0)
        self.sigma_rel = sigma_rel
        self.gamma = gamma_from_sigma_rel(sigma_rel)

    def beta(self, t: int) -> float:
        """EDM2 eq. 2: the decay of update number t (1-based)."""
        return (1.0 - 1.0 / t) ** (self.gamma + 1.0)

    def current_decay(self) -> float:
        """The decay the next update uses: beta of its (1-based) number."""
        return self.beta(self.num_updates + 1)


class PowerEMAs(Callback):
    """Keeps a :class:`PowerEMA` per ``train.ema_sigma_rels`` and writes each as a model folder,
    and with ``train.ema_snapshot_every = N`` as a snapshot every N steps and at the end.

    On resume each average continues from its folder when that folder was written at the step the
    run resumes from (it is written with every checkpoint); otherwise it restarts from the
    current weights, and the log says so (its later snapshots record the restart, and
    ``ddpm ema`` leaves them out). Every rank updates (cheap: one lerp per tensor), rank 0
    writes.
    """

    def __init__(self) -> None:
        self.emas: list[PowerEMA] = []

    def on_start(self, trainer: Trainer) -> None:
        run, step = trainer.run, trainer.state.step
        for s in trainer.cfg.train.ema_sigma_rels:
            ema = PowerEMA(run.model, float(s))
            folder = power_ema_dir(run.run_dir, ema.sigma_rel)
            if step > 0:
                saved = _read_saved(folder, step)
                if saved is not None:
                    load_weights(ema.model, saved, str(folder / "model.safetensors"))
                    ema.num_updates = step
                else:
                    trainer.log(
                        f"power EMA sigma_rel {ema.sigma_rel:g}: no average saved at step {step}; "
                        "it restarts from the current weights"
                    )
            self.emas.append(ema)

    def on_step_end(self, trainer: Trainer) -> None:
        for ema in self.emas:
            ema.update(trainer.run.model)
        every, step = trainer.cfg.train.ema_snapshot_every, trainer.state.step
        if every > 0 and step % every == 0 and trainer.step_fn.safe_to_save(step):
            self._snapshot(trainer, step)

    def on_checkpoint(self, trainer: Trainer, step: int) -> None:
        self._write(trainer, step)

    def on_end(self, trainer: Trainer) -> None:
        step = trainer.state.step
        self._write(trainer, step)
        every = trainer.cfg.train.ema_snapshot_every
        # The last step too, so that `ddpm ema` can rebuild the final model's averages.
        if every > 0 and step % every != 0 and trainer.step_fn.safe_to_save(step):
            self._snapshot(trainer, step)

    def _write(self, trainer: Trainer, step: int) -> None:
        run = trainer.run
        if not run.dist.is_main:
            return
        for ema in self.emas:
            meta = {**run.meta_base, "step": step, "ema": f"power, sigma_rel {ema.sigma_rel:g}"}
            folder = power_ema_dir(run.run_dir, ema.sigma_rel)
            ckpt.save_model_export(folder, ema.state_dict(), meta)

    def _snapshot(self, trainer: Trainer, step: int) -> None:
        run = trainer.run
        if not run.dist.is_main or step == 0:
            return
        for ema in self.emas:
            path = snapshot_path(run.run_dir, ema.sigma_rel, step)
            try:
                write_snapshot(path, ema, step)
            except (OSError, SafetensorError) as e:
                raise TrainingError(
                    f"could not write the EMA snapshot {path}: "
                    f"{getattr(e, 'strerror', None) or e}; free space and resume with --resume"
                ) from None


def _read_saved(folder: Path, step: int) -> dict[str, Tensor] | None:
    """The weights of the model folder when it was written at ``step``, else None (missing,
    from another step, or unreadable: the average then restarts, losing nothing else)."""
    try:
        meta, _ = ckpt.resolve_model_path(folder)
        if meta.get("step") != step:
            return None
        return ckpt._read_tensors(folder / "model.safetensors", meta.get("sha256", {}).get("model"))
    except (CheckpointError, OSError, ValueError):
        return None
