"""``load_dataset(name, ...)``: one entry point for every built-in image dataset.

* ``fashion_mnist``, ``mnist``: IDX files (see :mod:`ddpmkit.data.idx`), native 1x28x28, splits
  ``train`` (60,000) and ``test`` (10,000).
* ``digits``: scikit-learn's 8x8 digits (see :mod:`ddpmkit.data.digits`); one split (all 1,797
  images, whatever ``split`` says).
* ``folder``: every image under ``root`` (see :mod:`ddpmkit.data.folder`); one split.

``image_size`` (S or (H, W)) different from the native size resizes with Pillow (bicubic, cover
then centre-crop); None keeps the native size (for folders: the images' common size).
``channels`` 3 replicates grayscale data to RGB; 1 converts RGB folders to luminance; None keeps
the native channels (folders: inferred).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

from ddpmkit.data.images import ImageData, as_image_size, resize_images
from ddpmkit.errors import DatasetError

__all__ = ["DATASETS", "DatasetName", "load_dataset", "resize_images"]

# the built-in image datasets: the one list of their names (config, CLI, evaluation import it)
DatasetName = Literal["fashion_mnist", "mnist", "digits", "folder"]
DATASETS: tuple[DatasetName, ...] = get_args(DatasetName)


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    class_subfolders: bool = False,
    download: bool = False,
    log: Callable[[str], None] = print,
) -> ImageData:
    """Load dataset ``name`` (one of ``DATASETS``) into memory as uint8 (N, C, H, W).

    ``root`` overrides the default location (required for ``folder``); ``download`` fetches
    missing MNIST-like files; ``class_subfolders`` applies to ``folder`` only. Every user-facing
    problem raises :class:`DatasetError`.
    """
    if name not in DATASETS:
        raise DatasetError(
            f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)} (fix data.name)"
        )
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; expected 'train' or 'test'")
    if channels not in (None, 1, 3):
        raise DatasetError(f"data.channels: must be 1, 3 or None (native), got {channels!r}")
    size = as_image_size(image_size) if image_size is not None else None
    if name == "folder":
        if not root:
            raise DatasetError("data.root: set it to a folder of images when data.name = 'folder'")
        from ddpmkit.data.folder import load_image_folder

        return load_image_folder(root, size, channels, class_subfolders, log=log)
    if name == "digits":
        from ddpmkit.data.digits import load_digits_data

        data = load_digits_data(size)
    else:
        from ddpmkit.data.idx import load_mnist_like

        data = load_mnist_like(name, root, split, download=download, log=log)
        if size is not None and size != data.image_size:
            native = data.image_size
            data.images = resize_images(data.images, size)
            data.source += f", resized from {native[0]}x{native[1]} to {size[0]}x{size[1]}"
    if channels == 3 and data.channels == 1:
        data.images = data.images.expand(-1, 3, -1, -1).contiguous()
    return data
