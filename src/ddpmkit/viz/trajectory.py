"""Reverse-process trajectories: a sampler callback that keeps snapshots, and their figures.

Usage::

    rec = TrajectoryRecorder(num_snapshots=10, max_items=8)
    x = ddpm_sample(model, schedule, x_T, callback=rec)
    plot_reverse_process(rec, "reverse.png")        # images: x_t row + predicted x_0 row
    save_reverse_gif(rec, "reverse.gif", fps=4)

Each snapshot keeps the state *after* a sampler step (``x_t``, living at the next timestep
``t_next``; ``t_next = -1`` after the last step, i.e. the final sample) and the model's x_0
estimate at that step's timestep ``t``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from torch import Tensor

from ddpmkit.sampling import StepInfo
from ddpmkit.viz._figure import (
    figure_to_pil,
    marker_size,
    new_figure,
    save_figure,
    show_image,
    square_limits,
)
from ddpmkit.viz.grid import grid_shape, load_font, make_grid, save_pil, text_size, to_uint8

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = ["Snapshot", "TrajectoryRecorder", "plot_reverse_process", "save_reverse_gif"]

PathLike = str | os.PathLike[str]
Kind = Literal["image", "scatter"]


@dataclass
class Snapshot:
    index: int  # sampler step number (0-based)
    t: int  # timestep the model was evaluated at
    t_next: int  # timestep of x_t (state after the step); -1 for the final sample
    x_t: Tensor  # (max_items, ...) float32 CPU
    x0_pred: Tensor  # (max_items, ...) float32 CPU


class TrajectoryRecorder:
    """Sampler ``callback`` keeping ``num_snapshots`` evenly spaced steps (always the last one).

    Only the first ``max_items`` samples of each batch are kept, detached on the CPU. A new
    sampler run (a step with index 0) starts a fresh trajectory.
    """

    def __init__(self, num_snapshots: int = 10, max_items: int = 16) -> None:
        for value, name in ((num_snapshots, "num_snapshots"), (max_items, "max_items")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.num_snapshots = num_snapshots
        self.max_items = max_items
        self.snapshots: list[Snapshot] = []
        self._keep: set[int] = set()
        self._pending: Snapshot | None = None

    def __len__(self) -> int:
        return len(self.snapshots)

    def __call__(self, info: StepInfo) -> None:
        if info.index == 0:
            self.snapshots, self._pending = [], None
            k = min(self.num_snapshots, info.num_steps)
            self._keep = {int(i) for i in np.linspace(0, info.num_steps - 1, k).round()}
        if self._pending is not None:
            self._pending.t_next = int(info.t)
            self._pending = None
        if info.index not in self._keep:
            return
        last = info.index == info.num_steps - 1
        snap = Snapshot(
            index=int(info.index),
            t=int(info.t),
            t_next=-1,
            x_t=info.x_t[: self.max_items].detach().float().cpu().clone(),
            x0_pred=info.x0_pred[: self.max_items].detach().float().cpu().clone(),
        )
        self.snapshots.append(snap)
        if not last:
            self._pending = snap

    @property
    def timesteps(self) -> list[int]:
        """The model timestep t of each kept step."""
        return [s.t for s in self.snapshots]


def _state_label(s: Snapshot) -> str:
    return "final sample" if s.t_next < 0 else f"t = {s.t_next}"


def _infer_kind(rec: TrajectoryRecorder, kind: Kind | None) -> Kind:
    if not rec.snapshots:
        raise ValueError("the recorder holds no snapshots; pass it as a sampler callback first")
    shape = tuple(rec.snapshots[0].x_t.shape)
    inferred: Kind = "scatter" if len(shape) == 2 else "image"
    kind = inferred if kind is None else kind
    if kind == "scatter" and (len(shape) != 2 or shape[1] != 2):
        raise ValueError(f"kind='scatter' needs (N, 2) states, got shape {shape}")
    if kind == "image" and (len(shape) != 4 or shape[1] not in (1, 3)):
        raise ValueError(f"kind='image' needs (N, C, H, W) states with C in {{1, 3}}, got {shape}")
    if kind not in ("image", "scatter"):
        raise ValueError(f"unknown kind {kind!r}; expected 'image' or 'scatter'")
    return kind


def _tile(x: Tensor, nrow: int) -> np.ndarray:
    """Float images (N, C, H, W) in [-1, 1] -> an (H', W'[, 3]) grid in [0, 1] for imshow."""
    return make_grid(to_uint8(x), nrow, padding=1, pad_value=255).astype(np.float32) / 255.0


def plot_reverse_process(
    recorder: TrajectoryRecorder,
    path: PathLike,
    kind: Kind | None = None,
    nrow: int | None = None,
    show_x0: bool | None = None,
    share_axes: bool = False,
    dpi: float = 100,
) -> Path:
    """A strip of the recorded snapshots, one column per kept step.

    ``kind="image"`` (default for 4-D states): two rows, x_t (titled with the timestep of the
    state) and the predicted x_0 (titled with the model timestep); each cell tiles the kept
    samples ``nrow`` per row. ``kind="scatter"`` (default for (N, 2) states): one scatter per
    step like seed 002, plus a predicted-x_0 row if ``show_x0``; panels are scaled to their own
    points (ticks show the scale) unless ``share_axes``. Returns ``path``.
    """
    kind = _infer_kind(recorder, kind)
    snaps = recorder.snapshots
    cols = len(snaps)
    two_rows = (kind == "image") if show_x0 is None else bool(show_x0)
    rows = 2 if two_rows else 1
    n = snaps[0].x_t.shape[0]
    if kind == "image":
        nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
        g_rows, g_cols = grid_shape(n, nrow)
        cell_h = 1.5 * min(1.5, max(g_rows / g_cols, 0.67))
        fig = new_figure(1.5 * cols + 0.8, cell_h * rows + 0.9)
    else:
        fig = new_figure(1.5 * cols + 0.6, 2.0 * rows + 0.6)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    shared = None
    if kind == "scatter" and share_axes:
        everything = [s.x_t.numpy() for s in snaps]
        shared = square_limits(np.concatenate(everything).astype(np.float64))
    for c, s in enumerate(snaps):
        row_data = [(s.x_t, _state_label(s))]
        if two_rows:
            row_data.append((s.x0_pred, rf"$\hat{{x}}_0$ at t = {s.t}"))
        for r, (x, title) in enumerate(row_data):
            ax = axes[r, c]
            if kind == "image":
                assert nrow is not None
                show_image(ax, _tile(x, nrow))
            else:
                pts = x.numpy().astype(np.float64)
                ax.scatter(pts[:, 0], pts[:, 1], s=marker_size(n), color="tab:red", lw=0, alpha=0.7)
                lims = shared or square_limits(pts)
                ax.set_xlim(*lims[0])
                ax.set_ylim(*lims[1])
                ax.set_aspect("equal")
                ax.tick_params(labelsize=6)
            ax.set_title(title, fontsize=10)
    axes[0, 0].set_ylabel("$x_t$", fontsize=12)
    if two_rows:
        axes[1, 0].set_ylabel(r"predicted $x_0$", fontsize=12)
    fig.suptitle(f"Reverse process ({cols} of {snaps[-1].index + 1} steps)", fontsize=13)
    return save_figure(fig, path, dpi)


def _image_frames(
    recorder: TrajectoryRecorder, nrow: int | None, min_size: int
) -> list[PILImage.Image]:
    from PIL import Image, ImageDraw

    snaps = recorder.snapshots
    n = snaps[0].x_t.shape[0]
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    first = make_grid(to_uint8(snaps[0].x_t), nrow, padding=2)
    up = max(1, int(np.ceil(min_size / max(first.shape[:2]))))
    font = load_font(max(11, min(24, first.shape[1] * up // 16)))
    header = text_size(font, "t = 0000")[1] + 10
    frames = []
    for s in snaps:
        grid = make_grid(to_uint8(s.x_t), nrow, padding=2)
        grid = np.repeat(np.repeat(grid, up, axis=0), up, axis=1)
        tile = Image.fromarray(grid, mode="L" if grid.ndim == 2 else "RGB").convert("RGB")
        frame = Image.new("RGB", (tile.width, tile.height + header), (255, 255, 255))
        frame.paste(tile, (0, header))
        label = f"{_state_label(s)}  (step {s.index + 1}/{snaps[-1].index + 1})"
        ImageDraw.Draw(frame).text((6, 5), label, fill=(0, 0, 0), font=font)
        frames.append(frame)
    return frames


def _scatter_frames(
    recorder: TrajectoryRecorder, size_in: float, dpi: float
) -> list[PILImage.Image]:
    snaps = recorder.snapshots
    lims = square_limits(np.concatenate([s.x_t.numpy() for s in snaps]).astype(np.float64))
    fig = new_figure(size_in, size_in)
    ax = fig.add_subplot(1, 1, 1)
    frames = []
    for s in snaps:
        ax.clear()
        pts = s.x_t.numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=marker_size(len(pts)) * 2, color="tab:red", lw=0)
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ax.set_title(f"{_state_label(s)}  (step {s.index + 1}/{snaps[-1].index + 1})")
        frames.append(figure_to_pil(fig, dpi))
    return frames


def save_reverse_gif(
    recorder: TrajectoryRecorder,
    path: PathLike,
    fps: float = 4.0,
    kind: Kind | None = None,
    nrow: int | None = None,
    hold_last: float = 1.5,
    min_size: int = 256,
) -> Path:
    """An animated GIF with one frame per snapshot (x_t), looping; the last frame is held
    ``hold_last`` seconds. Images: a grid per frame, upscaled to at least ``min_size`` px and
    labelled with t. 2-D data: scatter frames (about 4 x 4 inches at 80 dpi) on fixed axes."""
    kind = _infer_kind(recorder, kind)
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    if kind == "image":
        frames = _image_frames(recorder, nrow, min_size)
    else:
        frames = _scatter_frames(recorder, 4.0, 80)
    step_ms = max(20, int(round(1000 / fps)))
    durations = [step_ms] * len(frames)
    durations[-1] = max(step_ms, int(round(1000 * hold_last)))
    return save_pil(
        frames[0],
        path,
        "GIF",
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=0,
        optimize=False,
        disposal=1,
    )
