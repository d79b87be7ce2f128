"""The forward (noising) process drawn with the closed form q(x_t | x_0) (DDPM Eq. 4)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddpmkit.diffusion import q_sample
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.viz._figure import (
    as_points,
    image_for_display,
    marker_size,
    new_figure,
    save_figure,
    show_image,
    square_limits,
    to_numpy,
)

__all__ = ["plot_forward_2d", "plot_forward_process", "snapshot_timesteps"]

PathLike = str | os.PathLike[str]


def snapshot_timesteps(num_steps: int, num_snapshots: int) -> list[int]:
    """``num_snapshots`` evenly spaced timesteps from 0 to T-1 (fewer if T is smaller), rounded."""
    if isinstance(num_snapshots, bool) or not isinstance(num_snapshots, int) or num_snapshots < 1:
        raise ValueError(f"num_snapshots must be an integer >= 1, got {num_snapshots!r}")
    if num_snapshots == 1:
        return [num_steps - 1]
    ts = np.linspace(0, num_steps - 1, num_snapshots).round().astype(int)
    return sorted({int(t) for t in ts})


def _schedule(schedule: NoiseSchedule | str, num_steps: int) -> tuple[str, NoiseSchedule]:
    if isinstance(schedule, NoiseSchedule):
        return "custom", schedule
    return str(schedule), NoiseSchedule.from_name(str(schedule), num_steps)


def plot_forward_process(
    image: Tensor,
    path: PathLike,
    schedule_names: Sequence[str | NoiseSchedule] = ("linear",),
    num_steps: int = 1000,
    num_snapshots: int = 10,
    generator: torch.Generator | None = None,
    dpi: float = 100,
) -> Path:
    """One row per schedule, one column per timestep: ``image`` noised to x_t ~ q(x_t | x_0).

    ``image`` is (C, H, W), C in {1, 3}, floats in [-1, 1]. Columns are ``num_snapshots``
    evenly spaced t from 0 to T-1, each titled with t; each cell notes its alpha_bar_t. The
    same noise draw is used in every row, so rows differ only by the schedule. Returns ``path``.
    """
    image_for_display(image, "image")  # validates the shape
    x0 = torch.as_tensor(to_numpy(image, "image"), dtype=torch.float32)
    entries = list(schedule_names)
    if not entries:
        raise ValueError("schedule_names must list at least one schedule")
    schedules = [_schedule(s, num_steps) for s in entries]
    T = schedules[0][1].num_steps
    if any(s.num_steps != T for _, s in schedules):
        raise ValueError("all schedules must have the same number of steps")
    ts = snapshot_timesteps(T, num_snapshots)
    noise = torch.randn((len(ts), *x0.shape), generator=generator)
    t_idx = torch.tensor(ts, dtype=torch.long)
    x0s = x0.expand(len(ts), *x0.shape)

    rows, cols = len(schedules), len(ts)
    fig = new_figure(1.5 * cols + 0.6, 1.8 * rows + 0.7)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for r, (name, sched) in enumerate(schedules):
        x_t = q_sample(sched, x0s, t_idx, noise)
        for c, t in enumerate(ts):
            ax = axes[r, c]
            show_image(ax, image_for_display(x_t[c], "x_t"))
            ax.set_xlabel(rf"$\bar\alpha$ = {float(sched.alphas_bar[t]):.3g}", fontsize=8)
            if r == 0:
                ax.set_title(f"t = {t}", fontsize=11)
            if c == 0:
                ax.set_ylabel(name, fontsize=12, fontweight="bold")
    fig.suptitle(f"Forward process q(x_t | x_0), T = {T}", fontsize=13)
    return save_figure(fig, path, dpi)


def plot_forward_2d(
    points: Any,
    path: PathLike,
    schedule: NoiseSchedule | str = "linear",
    num_snapshots: int = 10,
    num_steps: int = 1000,
    generator: torch.Generator | None = None,
    share_axes: bool = False,
    dpi: float = 100,
) -> Path:
    """Scatter of 2-D ``points`` (N, 2) noised to x_t ~ q(x_t | x_0) at evenly spaced t.

    ``schedule`` is a NoiseSchedule or a schedule name (then with ``num_steps`` steps). Each
    panel is titled q(x_t) with its t. Panels are scaled to their own data unless
    ``share_axes`` (then all use the limits of the union). Returns ``path``.
    """
    x0 = torch.as_tensor(as_points(points, "points"), dtype=torch.float32)
    name, sched = _schedule(schedule, num_steps)
    ts = snapshot_timesteps(sched.num_steps, num_snapshots)
    n = x0.shape[0]
    panels = []
    for t in ts:
        noise = torch.randn(x0.shape, generator=generator)
        x_t = q_sample(sched, x0, torch.full((n,), t, dtype=torch.long), noise)
        panels.append(x_t.numpy().astype(np.float64))
    shared = square_limits(np.concatenate(panels)) if share_axes else None
    cols = len(ts)
    fig = new_figure(1.5 * cols + 0.4, 2.5)
    axes = np.asarray(fig.subplots(1, cols, squeeze=False))[0]
    for ax, t, pts in zip(axes, ts, panels):
        ax.scatter(pts[:, 0], pts[:, 1], s=marker_size(n), color="tab:red", lw=0, alpha=0.7)
        lims = shared or square_limits(pts)
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
        ax.set_title(f"$q(x_t)$, t = {t}", fontsize=10)
        ax.set_xlabel(rf"$\bar\alpha$ = {float(sched.alphas_bar[t]):.3g}", fontsize=8)
    fig.suptitle(f"Forward process on 2-D data ({name} schedule, T = {sched.num_steps})")
    return save_figure(fig, path, dpi)
