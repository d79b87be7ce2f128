"""MNIST and Fashion-MNIST from their IDX files (gzipped or not).

IDX format (LeCun): two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), the number of dimensions, one big-endian uint32 per dimension, then
the data, big-endian, row-major. Gzip is detected by its magic bytes (1f 8b), not the file name.

Where the files are looked for (first folder holding both files of the split wins), each folder
also searched in its ``raw/`` and torchvision-style ``FashionMNIST/raw`` / ``MNIST/raw``
subfolders, under the names ``train-images-idx3-ubyte[.gz]`` and the Kaggle-style
``train-images.idx3-ubyte[.gz]``:

* ``root`` if given; otherwise
* Fashion-MNIST: ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package
  ``dataset-fashion-mnist``), then the cache ``$DDPMKIT_CACHE/fashion_mnist`` (default
  ``~/.cache/ddpmkit/fashion_mnist``);
* MNIST: the cache ``$DDPMKIT_CACHE/mnist`` (Debian/Ubuntu have no MNIST data package).

With ``download=True`` missing files are fetched (checksummed, see :mod:`ddpmkit.data.download`)
into ``root`` if given, else into the cache folder.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ddpmkit.data.download import fetch_dataset
from ddpmkit.data.images import ImageData
from ddpmkit.errors import DatasetError
from ddpmkit.io import cache_dir

__all__ = [
    "CLASS_NAMES",
    "DEBIAN_FASHION_MNIST",
    "FILES",
    "default_roots",
    "find_split_files",
    "load_mnist_like",
    "read_idx",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

CLASS_NAMES: dict[str, list[str]] = {
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
_TORCHVISION_DIR = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}
_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def default_roots(name: str) -> list[Path]:
    """The folders searched for ``name`` when no root is given, in order."""
    roots = [DEBIAN_FASHION_MNIST] if name == "fashion_mnist" else []
    return [*roots, cache_dir() / name]


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (gzip detected by its magic bytes) into a native-endian array.

    Raises :class:`DatasetError` for unreadable files, corrupt gzip data, a bad magic number or
    a size that does not match the header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read IDX file {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetError(
                f"{path}: corrupt gzip data ({e}); delete the file and get it again"
            ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES or raw[3] == 0:
        raise DatasetError(
            f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}); "
            "point data.root at the original MNIST-style files"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header; delete the file and get it again")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        what = "truncated" if len(raw) - header < expected else "oversized"
        raise DatasetError(
            f"{path}: {what} IDX file ({len(raw) - header} data bytes, header says {expected}); "
            "delete the file and get it again"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _candidates(stem: str) -> list[str]:
    kaggle = stem.replace("-idx", ".idx")
    return [stem + ".gz", stem, kaggle + ".gz", kaggle]


def find_split_files(name: str, folder: Path, split: str) -> tuple[Path, Path] | None:
    """(images, labels) files of ``split`` in ``folder`` or its raw/ subfolders, else None."""
    img_stem, lab_stem = FILES[split]
    for d in (folder, folder / "raw", folder / _TORCHVISION_DIR[name] / "raw"):
        img = next((d / n for n in _candidates(img_stem) if (d / n).is_file()), None)
        lab = next((d / n for n in _candidates(lab_stem) if (d / n).is_file()), None)
        if img is not None and lab is not None:
            return img, lab
    return None


def _missing_message(name: str, split: str, roots: list[Path]) -> str:
    img_stem, lab_stem = FILES[split]
    where = ", ".join(str(r) for r in roots)
    apt = (
        "install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or "
        if name == "fashion_mnist"
        else ""
    )
    return (
        f"{name} {split} files ({img_stem}[.gz], {lab_stem}[.gz]) not found in {where}; "
        f"{apt}rerun with download enabled (data.download = true, or `ddpm fetch {name}`), or "
        "point data.root at a folder containing the four IDX files"
    )


def _load(name: str, split: str, img_path: Path, lab_path: Path) -> ImageData:
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(
            f"{img_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetError(
            f"{img_path} and {lab_path} do not match ({images.shape[0]} images, labels of shape "
            f"{labels.shape}); use the image and label files of the same split"
        )
    n_cls = len(CLASS_NAMES[name])
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= n_cls):
        raise DatasetError(
            f"{lab_path}: labels outside 0..{n_cls - 1} ({int(labels.min())}..{int(labels.max())})"
        )
    n, h, w = images.shape
    return ImageData(
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        list(CLASS_NAMES[name]),
        f"{name} {split} ({n} images, {h}x{w}, from {img_path.parent})",
    )


def load_mnist_like(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    download: bool = False,
    log: Callable[[str], None] = print,
) -> ImageData:
    """``name`` ('fashion_mnist' or 'mnist') ``split`` ('train' or 'test') as uint8 (N, 1, H, W).

    Labels are int64 in 0..9. See the module docstring for where the files are looked for.
    Missing files raise :class:`DatasetError` saying how to get them, unless ``download``.
    """
    if name not in CLASS_NAMES:
        raise DatasetError(f"unknown IDX dataset {name!r}; expected one of {sorted(CLASS_NAMES)}")
    if split not in FILES:
        raise DatasetError(f"unknown split {split!r} for {name}; expected 'train' or 'test'")
    roots = [Path(root).expanduser()] if root else default_roots(name)
    for r in roots:
        found = find_split_files(name, r, split)
        if found is not None:
            return _load(name, split, *found)
    if not download:
        raise DatasetError(_missing_message(name, split, roots))
    target = roots[0] if root else cache_dir() / name
    fetch_dataset(name, dest=target, log=log)
    found = find_split_files(name, target, split)
    if found is None:  # pragma: no cover - fetch_dataset raises or leaves all four files
        raise DatasetError(_missing_message(name, split, [target]))
    return _load(name, split, *found)
