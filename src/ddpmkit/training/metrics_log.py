"""Metrics: one JSON object per line in ``metrics.jsonl``, mirrored to TensorBoard if installed.

:class:`LossWindow` sums the losses of the steps since the last log on the device and turns them
into that object; :class:`MetricLogger` writes it. The logger is an object the trainer owns
(never global); on non-main ranks it does nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from ddpmkit.training.distributed import DistInfo

__all__ = ["LossWindow", "MetricLogger"]


class LossWindow:
    """The losses of the steps since the last log record, kept on the device.

    ``loss`` sums each good step's batch loss; ``q_sum`` / ``q_cnt`` sum the per-sample losses
    by quarter of t (``loss_q0`` .. ``loss_q3``: t in [0, T/4), ... [3T/4, T)). ``n_steps``
    counts the steps taken since the last record (good or not), ``t_last`` is the clock then.
    """

    def __init__(self, device: torch.device, num_steps: int):
        self.num_steps = num_steps
        self.loss = torch.zeros((), device=device)
        self.q_sum = torch.zeros(4, device=device)
        self.q_cnt = torch.zeros(4, device=device)
        self.n_steps = 0
        self.t_last = 0.0

    @torch.no_grad()
    def add_by_quarter(self, per_t: list[tuple[Tensor, Tensor]], keep: Tensor | None) -> None:
        """Per-sample losses (with their t) into the sums by quarter of t; ``keep`` (0-d bool)
        masks a skipped step on the device (sync-free loop), None counts every sample."""
        for per_c, t_c in per_t:
            q = (t_c * 4 // self.num_steps).clamp(max=3)
            if keep is None:
                self.q_sum.index_add_(0, q, per_c)
                self.q_cnt.index_add_(0, q, torch.ones_like(per_c))
            else:
                self.q_sum.index_add_(0, q, torch.where(keep, per_c, 0.0))
                self.q_cnt.index_add_(0, q, keep.float().expand_as(per_c))

    def all_reduce(self, dist: DistInfo) -> None:
        """Over several processes: the global batch's numbers, not this rank's."""
        if dist.world_size > 1:
            dist.all_reduce_mean(self.loss)
            dist.all_reduce_sum(self.q_sum)
            dist.all_reduce_sum(self.q_cnt)

    def record(
        self, step: int, n_good: int, *, lr: float, now: float, t0: float, batch: int
    ) -> dict[str, float]:
        """The metrics.jsonl object of the window ending at ``step``: mean loss of the
        ``n_good`` good steps (NaN if none), ``lr``, images/s at ``batch`` images per step, time
        since ``t0``, and the loss by quarter of t where that quarter had samples."""
        last_loss = float(self.loss) / max(n_good, 1) if n_good else float("nan")
        ips = self.n_steps * batch / max(now - self.t_last, 1e-9)
        rec: dict[str, float] = {
            "step": step,
            "loss": last_loss,
            "lr": lr,
            "images_per_s": ips,
            "time_s": now - t0,
        }
        for k in range(4):
            if float(self.q_cnt[k]) > 0:
                rec[f"loss_q{k}"] = float(self.q_sum[k] / self.q_cnt[k])
        return rec

    def reset(self, now: float) -> None:
        """Start the next window at clock ``now``."""
        self.loss.zero_()
        self.q_sum.zero_()
        self.q_cnt.zero_()
        self.n_steps, self.t_last = 0, now


class MetricLogger:
    def __init__(self, run_dir: Path, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._tb: Any = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is an optional extra
                self._tb = None

    def log(self, record: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = int(record["step"])
            for k, v in record.items():
                if k != "step":
                    self._tb.add_scalar(f"train/{k}", v, step)

    def image(self, tag: str, grid_hwc: np.ndarray, step: int) -> None:
        """Add an image (H, W) or (H, W, C) uint8 to TensorBoard."""
        if self.enabled and self._tb is not None:
            fmt = "HW" if grid_hwc.ndim == 2 else "HWC"
            self._tb.add_image(tag, grid_hwc, step, dataformats=fmt)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
