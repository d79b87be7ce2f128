"""2-D toy data against model samples, two panels on the same axes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ddpmkit.viz._figure import as_points, marker_size, new_figure, save_figure, square_limits

__all__ = ["plot_data_vs_samples", "plot_points"]

PathLike = str | os.PathLike[str]


def plot_data_vs_samples(
    data: Any, samples: Any, path: PathLike, title: str = "", dpi: float = 100
) -> Path:
    """Scatter ``data`` (N, 2) and ``samples`` (M, 2) side by side with identical, equal-aspect
    axis limits (a robust range of both, so a few diverged samples do not squash the view; the
    number of samples outside the view is shown). Returns ``path``."""
    d = as_points(data, "data")
    s = as_points(samples, "samples")
    lims = square_limits(np.concatenate([d, s]), pad=0.08, q=0.5)
    fig = new_figure(10, 5.6 if title else 5.2)
    axes = fig.subplots(1, 2)
    for ax, pts, name, color in (
        (axes[0], d, "data", "tab:blue"),
        (axes[1], s, "samples", "tab:red"),
    ):
        ax.scatter(pts[:, 0], pts[:, 1], s=marker_size(len(pts)) * 2, color=color, lw=0, alpha=0.6)
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        ax.set_aspect("equal")
        (x0, x1), (y0, y1) = lims
        with np.errstate(invalid="ignore"):
            inside = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
        outside = int(len(pts) - inside.sum())
        extra = f", {outside} outside view" if outside else ""
        ax.set_title(f"{name} (N = {len(pts)}{extra})", fontsize=12)
        ax.set_xlabel("$x_1$")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("$x_2$")
    if title:
        fig.suptitle(title, fontsize=13)
    return save_figure(fig, path, dpi)


def plot_points(points: Any, path: PathLike, title: str = "", dpi: float = 100) -> Path:
    """One scatter plot of ``points`` (N, 2), equal aspect, robust limits. Returns ``path``."""
    p = as_points(points, "points")
    lims = square_limits(p, pad=0.08, q=0.5)
    fig = new_figure(5.5, 5.5)
    ax = fig.subplots(1, 1)
    ax.scatter(p[:, 0], p[:, 1], s=marker_size(len(p)) * 2, color="tab:red", lw=0, alpha=0.6)
    ax.set_xlim(*lims[0])
    ax.set_ylim(*lims[1])
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"{len(p)} samples", fontsize=12)
    return save_figure(fig, path, dpi)
