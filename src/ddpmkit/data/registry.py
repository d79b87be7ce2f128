"""``load_dataset(name, ...)``: one entry point for every built-in image dataset.

* ``fashion_mnist``, ``mnist``: IDX files (see :mod:`ddpmkit.data.idx`), native 1x28x28, splits
  ``train`` (60,000) and ``test`` (10,000).
* ``digits``: scikit-learn's 8x8 digits (see :mod:`ddpmkit.data.digits`); one split (all 1,797
  images, whatever ``split`` says).
* ``folder``: every image under ``root`` (see :mod:`ddpmkit.data.folder`); one split.
* ``fashion_captions``, ``fashion_scenes``: captioned Fashion-MNIST (single garments 28x28;
  scenes 28x56 mixed with singles on the wide canvas), see :mod:`ddpmkit.data.captions`;
  :func:`load_captioned` gives them (and a captioned folder) with their captions.

``image_size`` (S or (H, W)) different from the native size resizes with Pillow (bicubic, cover
then centre-crop); None keeps the native size (for folders: the images' common size).
``channels`` 3 replicates grayscale data to RGB; 1 converts RGB folders to luminance; None keeps
the native channels (folders: inferred).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import torch

from ddpmkit.data.images import ImageData, as_image_size, resize_images
from ddpmkit.errors import DatasetError

if TYPE_CHECKING:
    from ddpmkit.data.captions import CaptionedImages

__all__ = [
    "CAPTIONED_DATASETS",
    "DATASETS",
    "DatasetName",
    "load_captioned",
    "load_dataset",
    "resize_images",
]

# the built-in image datasets: the one list of their names (config, CLI, evaluation import it)
DatasetName = Literal[
    "fashion_mnist", "mnist", "digits", "folder", "fashion_captions", "fashion_scenes"
]
DATASETS: tuple[DatasetName, ...] = get_args(DatasetName)
CAPTIONED_DATASETS = ("fashion_captions", "fashion_scenes")  # images with captions


def load_captioned(
    name: str,
    *,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    seed: int = 0,
    max_items: int = 0,
    scene_share: float = 0.5,
    log: Callable[[str], None] = print,
) -> CaptionedImages:
    """A captioned dataset: ``fashion_captions``, ``fashion_scenes`` or ``folder`` (captions
    from sidecar ``name.txt`` files or ``metadata.jsonl``), as
    :class:`~ddpmkit.data.captions.CaptionedImages`.

    ``fashion_scenes``: a ``scene_share`` of two-garment 28x56 scenes, the rest single garments
    centred on the 56-wide canvas, as many items as the split has images. ``max_items`` > 0
    keeps the first N items (seeded order). Fashion-MNIST is native size only.
    """
    from ddpmkit.data.captions import CaptionedImages, captioned_fashion, fashion_scenes

    if name == "folder":
        if not root:
            raise DatasetError("data.root: set it to a folder of captioned images")
        from ddpmkit.data.captioned import load_captioned_folder

        size = as_image_size(image_size) if image_size is not None else None
        return load_captioned_folder(root, size, channels, max_images=max_items or None, log=log)
    if name not in CAPTIONED_DATASETS:
        raise DatasetError(
            f"{name!r} has no captions; expected one of {', '.join(CAPTIONED_DATASETS)} or a "
            "folder with data.captions = true"
        )
    if image_size is not None or channels not in (None, 1):
        raise DatasetError(
            f"{name}: native size and one channel only; drop data.image_size / data.channels"
        )
    from ddpmkit.data.idx import load_mnist_like

    src = load_mnist_like("fashion_mnist", root, split, log=log)
    if name == "fashion_captions":
        data = captioned_fashion(split, seed=seed, data=src)
    else:
        n = len(src.images)
        n_scenes = int(round(scene_share * n))
        parts = []
        if n_scenes:
            parts.append(fashion_scenes(split, num=n_scenes, seed=seed, data=src))
        if n - n_scenes:
            singles = captioned_fashion(split, seed=seed, data=src, canvas_width=56)
            parts.append(singles.subset(torch.arange(n - n_scenes)))
        data = CaptionedImages.concat(parts)
    if max_items:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        data = data.subset(order[:max_items].sort().values)
    return data


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
    if name in CAPTIONED_DATASETS:  # the images alone (their captions: load_captioned)
        cap = load_captioned(name, root=root, split=split, image_size=image_size,
                             channels=channels, log=log)  # fmt: skip
        return ImageData(cap.images, None, [], cap.source)
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
