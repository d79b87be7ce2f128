"""MNIST and Fashion-MNIST from their IDX files (gzipped or not).

Default locations: Debian's ``dataset-fashion-mnist`` package installs the four files in
``/usr/share/datasets/fashion-mnist``; otherwise ``$DDPMKIT_CACHE`` (default
``~/.cache/ddpmkit``)``/<name>``, where ``ddpm fetch <name>`` downloads them.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ddpmkit.data.images import DatasetError, ImageData

__all__ = ["CLASS_NAMES", "default_roots", "load_mnist_like", "read_idx"]

CLASS_NAMES = {
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "mnist": [str(i) for i in range(10)],
}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def cache_dir() -> Path:
    return Path(os.environ.get("DDPMKIT_CACHE", Path.home() / ".cache" / "ddpmkit"))


def default_roots(name: str) -> list[Path]:
    debian = {
        "fashion_mnist": "/usr/share/datasets/fashion-mnist",
        "mnist": "/usr/share/datasets/mnist",
    }
    return [Path(debian[name]), cache_dir() / name]


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip detected by its magic bytes, not the extension)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DatasetError(f"{path}: corrupt gzip data ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: truncated IDX file ({len(raw) - header} of {expected} bytes)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def load_mnist_like(name: str, root: str | Path | None = None, split: str = "train") -> ImageData:
    """(N, 1, 28, 28) uint8 images with labels 0..9 from the first root holding the files."""
    if name not in CLASS_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {sorted(CLASS_NAMES)}")
    if split not in FILES:
        raise DatasetError(f"unknown split {split!r}; expected 'train' or 'test'")
    roots = [Path(root)] if root else default_roots(name)
    img_stem, lab_stem = FILES[split]
    for r in roots:
        img, lab = _find(r, img_stem), _find(r, lab_stem)
        if img is not None and lab is not None:
            images = read_idx(img)
            labels = read_idx(lab)
            if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
                raise DatasetError(
                    f"{r}: image and label files do not match ({images.shape}, {labels.shape})"
                )
            return ImageData(
                torch.from_numpy(images.copy()).unsqueeze(1),
                torch.from_numpy(labels.astype(np.int64)),
                list(CLASS_NAMES[name]),
                f"{name} {split} ({images.shape[0]} images, {r})",
            )
    where = ", ".join(str(r) for r in roots)
    hint = (
        "apt-get install dataset-fashion-mnist (Debian/Ubuntu), or "
        if name == "fashion_mnist"
        else ""
    )
    raise DatasetError(
        f"{name} files ({img_stem}[.gz]) not found in {where}; get them with: {hint}"
        f"`ddpm fetch {name}`, or set data.root to a folder holding the four IDX files"
    )
