"""What ``ddpm eval`` evaluates: a model folder, an ``.npz`` of samples or a folder of images.

:func:`open_source` turns the SOURCE argument into a :class:`Source`: for a run, checkpoint or
exported model folder only its metadata is read (samples are drawn later, see
:mod:`ddpmkit.evaluation.samples`); an ``.npz`` (``images`` uint8 (N, C, H, W) or (N, H, W, C),
or ``points`` (N, D), optional ``labels`` (N,)) or a folder of images is read into memory and
checked. Wrong input is a one-line :class:`~ddpmkit.data.images.DatasetError` (or
``ConfigError`` / ``CheckpointError``).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddpmkit.errors import CheckpointError, ConfigError, DatasetError

__all__ = ["Source", "open_source"]


@dataclass
class Source:
    """What ``ddpm eval`` was given: a model (metadata only) or samples already in memory."""

    kind: str  # "model" | "npz" | "folder"
    path: Path
    meta: dict[str, Any] | None = None
    model_folder: Path | None = None
    images: Tensor | None = None  # uint8 (N, C, H, W)
    points: Tensor | None = None  # float32 (N, D)
    labels: Tensor | None = None  # int64 (N,); -1 = no label
    notes: list[str] = field(default_factory=list)


def open_source(source: str | Path, log: Callable[[str], None]) -> Source:
    """The :class:`Source` at path ``source``; a one-line error for anything else."""
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(
            f"{path}: does not exist; give a run/checkpoint/model folder, an .npz of samples "
            "or a folder of images"
        )
    if path.is_dir():
        if any((path / n).exists() for n in ("checkpoints", "state.json", "config.json")):
            from ddpmkit.training.checkpoint import resolve_model_path

            meta, folder = resolve_model_path(path)
            if "config" not in meta or "data" not in meta:
                raise CheckpointError(
                    f"{folder}: metadata has no config/data section; not a ddpmkit model"
                )
            return Source("model", path, meta=meta, model_folder=folder)
        return _read_folder(path, log)
    if path.suffix.lower() == ".npz":
        return _read_npz(path)
    raise DatasetError(
        f"{path}: not an .npz file or a folder; give a run/checkpoint/model folder, an .npz of "
        "samples or a folder of images"
    )


def _read_folder(path: Path, log: Callable[[str], None]) -> Source:
    """A folder of sample images (one size) as uint8 (N, C, H, W)."""
    from ddpmkit.data.folder import EXTENSIONS, load_image_folder, scan_image_files

    if not scan_image_files(path):
        raise DatasetError(
            f"{path}: no image files ({', '.join(e[1:] for e in EXTENSIONS)}) in this folder; "
            "give a folder of sample images, an .npz of samples or a model folder"
        )
    try:
        data = load_image_folder(path, None, None, log=log)
    except DatasetError as e:
        first = str(e).split("; ")[0]
        raise DatasetError(f"{first}; sample images must be readable and of one size") from None
    return Source("folder", path, images=data.images)


def _reason(e: BaseException) -> str:
    """The first line of an exception's message, or its type name."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return msg or type(e).__name__


def _read_npz(path: Path) -> Source:
    """An ``.npz`` of samples: ``images`` or ``points``, and optional ``labels``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{path}: not a readable .npz file ({_reason(e)})") from None
    notes: list[str] = []
    images = points = None
    if "images" in arrays:
        images = _as_images(arrays["images"], path, notes)
        n = int(images.shape[0])
    elif "points" in arrays:
        points = _as_points(arrays["points"], path)
        n = int(points.shape[0])
    else:
        found = ", ".join(sorted(arrays)) or "none"
        raise DatasetError(
            f"{path}: no 'images' array (uint8 (N, C, H, W)) or 'points' array (N, 2); "
            f"arrays found: {found}"
        )
    labels = _as_labels(arrays["labels"], n, path) if "labels" in arrays else None
    return Source("npz", path, images=images, points=points, labels=labels, notes=notes)


def _as_images(arr: np.ndarray, path: Path, notes: list[str]) -> Tensor:
    """uint8 (N, C, H, W) from (N, C, H, W), (N, H, W, C) or (N, H, W); else DatasetError."""
    shape = tuple(int(s) for s in arr.shape)
    expect = "expected (N, C, H, W) or (N, H, W, C) with C = 1 or 3, or (N, H, W) grayscale"
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        if arr.shape[1] not in (1, 3) and arr.shape[3] in (1, 3):
            arr = arr.transpose(0, 3, 1, 2)
            notes.append(f"{path.name}: images read as (N, H, W, C) {shape}")
        elif arr.shape[1] not in (1, 3):
            raise DatasetError(f"{path}: 'images' has shape {shape}; {expect}")
    else:
        raise DatasetError(f"{path}: 'images' has shape {shape}; {expect}")
    if min(arr.shape) < 1:
        raise DatasetError(f"{path}: 'images' is empty (shape {shape})")
    if arr.dtype.kind == "f":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        raise DatasetError(
            f"{path}: 'images' is {arr.dtype} with values in [{lo:.3g}, {hi:.3g}]; expected "
            "uint8 pixels 0..255 as ddpm sample writes them (from [-1, 1]: round((x + 1) * 127.5))"
        )
    if arr.dtype.kind not in "ui":
        raise DatasetError(f"{path}: 'images' has dtype {arr.dtype}; expected uint8 pixels 0..255")
    if arr.dtype != np.uint8:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise DatasetError(
                f"{path}: 'images' values lie in [{lo}, {hi}], outside the pixel range 0..255"
            )
    return torch.from_numpy(np.ascontiguousarray(arr.astype(np.uint8)))


def _as_points(arr: np.ndarray, path: Path) -> Tensor:
    """float32 (N, D) points; DatasetError for other shapes, dtypes or non-finite values."""
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.dtype.kind not in "fiu":
        raise DatasetError(
            f"{path}: 'points' has shape {tuple(arr.shape)} and dtype {arr.dtype}; "
            "expected numbers (N, D), e.g. (N, 2) for a 2-D toy"
        )
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: 'points' contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _as_labels(arr: np.ndarray, n: int, path: Path) -> Tensor:
    """int64 (n,) labels (-1 = no label); DatasetError for other shapes or dtypes."""
    if arr.ndim != 1 or arr.shape[0] != n or arr.dtype.kind not in "iu":
        raise DatasetError(
            f"{path}: 'labels' has shape {tuple(arr.shape)} and dtype {arr.dtype}; expected "
            f"integers ({n},), -1 for no label"
        )
    return torch.from_numpy(arr.astype(np.int64))
