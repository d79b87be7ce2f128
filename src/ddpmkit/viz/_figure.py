"""Shared helpers of the matplotlib figures: object-oriented Agg figures (no pyplot, no global
state, no display needed), atomic saving, and input checks. matplotlib is imported lazily."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ddpmkit.viz.grid import atomic_save

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from PIL import Image as PILImage

PathLike = str | os.PathLike[str]


def new_figure(width: float, height: float) -> Figure:
    """A Figure of the given size in inches on the Agg canvas, with constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: PathLike, dpi: float = 100) -> Path:
    """Save ``fig`` atomically; the format follows the suffix of ``path`` (PNG by default)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return atomic_save(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi, facecolor="white"))


def figure_to_pil(fig: Figure, dpi: float) -> PILImage.Image:
    """Render ``fig`` to an RGB Pillow image."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


def to_numpy(x: Any, name: str) -> np.ndarray:
    """A float64 numpy copy of a tensor/array/sequence; ValueError if it is not numeric."""
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a numeric tensor or array: {e}") from None


def as_points(x: Any, name: str) -> np.ndarray:
    """Validate 2-D points: shape (N, 2) with N >= 1, as float64 numpy."""
    arr = to_numpy(x, name)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
        raise ValueError(f"{name} must have shape (N, 2) with N >= 1, got {tuple(arr.shape)}")
    return arr


def image_for_display(x: Any, name: str) -> np.ndarray:
    """A (C, H, W) image in [-1, 1] (C in {1, 3}) as (H, W) or (H, W, 3) floats in [0, 1]."""
    arr = to_numpy(x, name)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3) or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(
            f"{name} must have shape (C, H, W) with C in {{1, 3}}, got {tuple(arr.shape)}"
        )
    arr = np.clip((np.nan_to_num(arr, nan=-1.0) + 1.0) / 2.0, 0.0, 1.0)
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def show_image(ax: Axes, img: np.ndarray) -> None:
    """imshow an (H, W) gray or (H, W, 3) RGB image in [0, 1] without ticks (labels stay)."""
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def marker_size(n: int) -> float:
    """Scatter marker area suited to ``n`` points in a panel of about 1.5 inches."""
    return float(min(12.0, max(0.5, 1500.0 / max(n, 1))))


def square_limits(
    points: np.ndarray, pad: float = 0.08, q: float = 0.5
) -> list[tuple[float, float]]:
    """Per-axis limits [(x0, x1), (y0, y1)] of equal span covering the robust range of points."""
    finite = points[np.isfinite(points).all(axis=1)]
    if finite.size == 0:
        return [(-1.0, 1.0), (-1.0, 1.0)]
    lo = np.percentile(finite, q, axis=0)
    hi = np.percentile(finite, 100 - q, axis=0)
    half = float(max(hi - lo)) / 2 * (1 + 2 * pad)
    if not math.isfinite(half) or half <= 0:
        half = 1.0
    centre = (lo + hi) / 2
    return [(float(c) - half, float(c) + half) for c in centre]
