"""Image grids and PNG writing with Pillow and numpy only (used by the trainer every K steps).

Images come in as uint8 tensors or arrays of shape (N, C, H, W) with C in {1, 3, 4}; use
:func:`to_uint8` to turn model-space floats in [-1, 1] into that form. Every file is written
atomically (:func:`ddpmkit.io.atomic_write`: a temporary file in the destination folder, fsync,
then ``os.replace``), so a reader never sees a half-written PNG, even when a run is killed
mid-write. ``atomic_save`` is :func:`ddpmkit.io.atomic_write_stream`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ddpmkit.io import atomic_write_bytes
from ddpmkit.io import atomic_write_stream as atomic_save

if TYPE_CHECKING:
    from PIL import Image as PILImage
    from PIL import ImageFont

__all__ = [
    "atomic_save",
    "atomic_write_bytes",
    "grid_with_row_labels",
    "make_grid",
    "save_grid",
    "save_images",
    "to_uint8",
]

PathLike = str | os.PathLike[str]
PadValue = int | Sequence[int]


# ----------------------------------------------------------------------------- atomic writes


def save_pil(image: PILImage.Image, path: PathLike, fmt: str = "PNG", **kwargs: Any) -> Path:
    """Save a Pillow image atomically in the given format."""
    return atomic_save(path, lambda f: image.save(f, format=fmt, **kwargs))


# ----------------------------------------------------------------------------- conversions


def to_uint8(images: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Map float images in ``value_range`` (model space: [-1, 1]) to uint8 [0, 255] on the CPU.

    Values outside the range are clamped; NaN becomes 0. The shape is unchanged.
    """
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range!r}")
    x = images.detach().to("cpu", torch.float32)
    x = torch.nan_to_num(x, nan=lo)
    x = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    return (x * 255.0 + 0.5).to(torch.uint8)


def _as_uint8_nchw(images_u8: Tensor | np.ndarray, name: str = "images_u8") -> np.ndarray:
    """Validate a (N, C, H, W) uint8 batch with C in {1, 3, 4}; return it as a numpy array."""
    if isinstance(images_u8, Tensor):
        arr = images_u8.detach().cpu().numpy()
    elif isinstance(images_u8, np.ndarray):
        arr = images_u8
    else:
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(images_u8)}")
    if arr.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got shape {tuple(arr.shape)}")
    n, c, h, w = arr.shape
    if c not in (1, 3, 4):
        raise ValueError(f"{name} must have 1, 3 or 4 channels, got shape {tuple(arr.shape)}")
    if n < 1 or h < 1 or w < 1:
        raise ValueError(f"{name} must be a non-empty batch, got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{name} must be uint8, got dtype {arr.dtype}; convert floats with viz.to_uint8"
        )
    return arr


def _check_positive(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _pil_from_hwc(arr: np.ndarray) -> PILImage.Image:
    """A Pillow image from an (H, W) or (H, W, C) uint8 array: 'L', 'RGB' or 'RGBA'."""
    from PIL import Image

    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(arr), mode="L")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    data = arr[:, :, 0] if arr.shape[2] == 1 else arr
    return Image.fromarray(np.ascontiguousarray(data), mode=mode)


# ----------------------------------------------------------------------------- grids


def grid_shape(n: int, nrow: int) -> tuple[int, int]:
    """(rows, columns) of a grid of ``n`` images with ``nrow`` images per row."""
    cols = min(nrow, n)
    return math.ceil(n / nrow), cols


def make_grid(
    images_u8: Tensor | np.ndarray, nrow: int, padding: int = 2, pad_value: PadValue = 255
) -> np.ndarray:
    """Tile a uint8 batch (N, C, H, W) into one image, ``nrow`` images per row.

    Image i goes to row ``i // nrow``, column ``i % nrow``, at pixel offset
    ``(padding + row * (H + padding), padding + col * (W + padding))``, like torchvision's
    make_grid. The result has shape (H', W', C), or (H', W') for one channel, with
    ``H' = rows * (H + padding) + padding`` and ``W' = cols * (W + padding) + padding``, where
    ``cols = min(nrow, N)``. ``pad_value`` is one value or one per channel.
    """
    arr = _as_uint8_nchw(images_u8)
    _check_positive(nrow, "nrow")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an integer >= 0, got {padding!r}")
    n, c, h, w = arr.shape
    rows, cols = grid_shape(n, nrow)
    pad = np.asarray(pad_value, dtype=np.int64).reshape(-1)
    if pad.size not in (1, c) or (pad < 0).any() or (pad > 255).any():
        raise ValueError(f"pad_value must be 0..255, one value or one per channel, got {pad_value}")
    out = np.empty((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.uint8)
    out[...] = pad.astype(np.uint8)
    hwc = arr.transpose(0, 2, 3, 1)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        out[y : y + h, x : x + w] = hwc[i]
    return out[:, :, 0] if c == 1 else out


def _upscaled(arr: np.ndarray, upscale: int) -> np.ndarray:
    _check_positive(upscale, "upscale")
    if upscale == 1:
        return arr
    return np.repeat(np.repeat(arr, upscale, axis=0), upscale, axis=1)


def save_grid(
    images_u8: Tensor | np.ndarray,
    path: PathLike,
    nrow: int,
    upscale: int = 1,
    padding: int = 2,
    pad_value: PadValue = 255,
) -> Path:
    """Write :func:`make_grid` as a PNG (1 channel stays 'L'), each pixel repeated ``upscale``
    times in both directions (nearest neighbour, so pixels stay sharp). Atomic."""
    grid = _upscaled(make_grid(images_u8, nrow, padding, pad_value), upscale)
    return save_pil(_pil_from_hwc(grid), path)


def save_images(
    images_u8: Tensor | np.ndarray, folder: PathLike, prefix: str = "img_", start: int = 0
) -> list[Path]:
    """Write each image as ``folder/{prefix}{start + i:05d}.png``; returns the paths."""
    arr = _as_uint8_nchw(images_u8)
    out_dir = Path(folder)
    paths = []
    for i, img in enumerate(arr.transpose(0, 2, 3, 1)):
        p = out_dir / f"{prefix}{start + i:05d}.png"
        paths.append(save_pil(_pil_from_hwc(img), p))
    return paths


def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``size`` pixels (the bitmap font if FreeType is missing)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def text_size(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` drawn with ``font``."""
    left, top, right, bottom = font.getbbox(text)
    return int(math.ceil(right - min(left, 0))), int(math.ceil(bottom - min(top, 0)))


def grid_with_row_labels(
    images_u8: Tensor | np.ndarray,
    nrow: int,
    labels: Sequence[str],
    path: PathLike,
    upscale: int = 1,
    padding: int = 2,
    pad_value: PadValue = 255,
) -> Path:
    """A grid (``nrow`` images per row) with ``labels[r]`` written left of row r; PNG, atomic.

    For class-conditional samples with one row per class. ``len(labels)`` must equal the
    number of rows, ``ceil(N / nrow)``.
    """
    from PIL import Image, ImageDraw

    arr = _as_uint8_nchw(images_u8)
    _check_positive(nrow, "nrow")
    rows, _ = grid_shape(arr.shape[0], nrow)
    labels = [str(s) for s in labels]
    if len(labels) != rows:
        raise ValueError(f"got {len(labels)} labels for a grid of {rows} rows; give one per row")
    grid = _upscaled(make_grid(arr, nrow, padding, pad_value), upscale)
    img = _pil_from_hwc(grid)
    cell_h = arr.shape[2] * upscale
    font = load_font(int(min(max(cell_h * 0.35, 11), 28)))
    margin = max(4, text_size(font, "M")[1] // 2)
    label_w = max(text_size(font, s)[0] for s in labels) + 2 * margin
    bg = int(np.mean(np.asarray(pad_value, dtype=np.float64)))
    fill = 0 if bg >= 128 else 255
    if img.mode != "L":
        bg_color: Any = (bg,) * len(img.getbands())
        fg_color: Any = (fill,) * len(img.getbands())
    else:
        bg_color, fg_color = bg, fill
    out = Image.new(img.mode, (img.width + label_w, img.height), bg_color)
    out.paste(img, (label_w, 0))
    draw = ImageDraw.Draw(out)
    pad_px = padding * upscale
    for r, text in enumerate(labels):
        y_mid = pad_px + r * (cell_h + pad_px) + cell_h / 2
        _, top, right, bottom = font.getbbox(text)
        xy = (label_w - margin - right, y_mid - (top + bottom) / 2)
        draw.text(xy, text, fill=fg_color, font=font)
    return save_pil(out, path)
