"""Metrics: one JSON object per line in ``metrics.jsonl``, mirrored to TensorBoard if installed.

The logger is an object passed to the loop (never global); on non-main ranks it does nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MetricLogger"]


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
