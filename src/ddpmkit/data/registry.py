"""``load_dataset(name, ...)``: one entry point for every built-in image dataset."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ddpmkit.data.images import DatasetError, ImageData

__all__ = ["DATASETS", "load_dataset", "resize_images"]

DATASETS = ("fashion_mnist", "mnist", "digits", "folder")


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, *size) with Pillow (bicubic, then centre crop)."""
    from PIL import Image

    from ddpmkit.data.folder import resize_center_crop

    out = []
    for img in images.numpy():
        mode = "L" if img.shape[0] == 1 else "RGB"
        pil = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), mode)
        arr = np.asarray(resize_center_crop(pil, size), dtype=np.uint8)
        out.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


def load_dataset(
    name: str,
    *,
    root: str | None = None,
    split: str = "train",
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    class_subfolders: bool = False,
    download: bool = False,
    log: Callable[[str], None] = print,
) -> ImageData:
    """Load dataset ``name`` (one of ``DATASETS``) into memory as uint8 (N, C, H, W)."""
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    if name == "folder":
        if not root:
            raise DatasetError("data.root: a folder of images is needed when data.name = 'folder'")
        from ddpmkit.data.folder import load_image_folder

        return load_image_folder(root, size or (64, 64), channels, class_subfolders, log=log)
    if name in ("fashion_mnist", "mnist"):
        from ddpmkit.data.idx import load_mnist_like

        if download:
            from ddpmkit.data.download import fetch_dataset

            try:
                data = load_mnist_like(name, root, split)
            except DatasetError:
                fetch_dataset(name, log=log)
                data = load_mnist_like(name, root, split)
        else:
            data = load_mnist_like(name, root, split)
    elif name == "digits":
        from ddpmkit.data.digits import load_digits_data

        data = load_digits_data()
    else:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    if channels == 3 and data.images.shape[1] == 1:
        data.images = data.images.repeat(1, 3, 1, 1)
    if size is not None and tuple(size) != tuple(data.images.shape[2:]):
        data.images = resize_images(data.images, (int(size[0]), int(size[1])))
    return data
