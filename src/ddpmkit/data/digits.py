"""scikit-learn's 8x8 handwritten digits (1,797 images, always available, no download).

Pixel values 0..16 are scaled to 0..255 (``round(v * 255 / 16)``); labels are the digits 0..9.
The set has no train/test split: every split is all 1,797 images.
"""

from __future__ import annotations

import numpy as np
import torch

from ddpmkit.data.images import ImageData, as_image_size, resize_images

__all__ = ["load_digits_data"]


def load_digits_data(image_size: int | tuple[int, int] | None = None) -> ImageData:
    """(1797, 1, 8, 8) uint8 images with labels 0..9; resized (bicubic) if ``image_size``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    x = torch.from_numpy(images).unsqueeze(1)
    size = as_image_size(image_size) if image_size is not None else (8, 8)
    x = resize_images(x, size)
    return ImageData(
        x,
        torch.from_numpy(d.target.astype(np.int64)),
        [str(i) for i in range(10)],
        f"scikit-learn digits ({len(images)} images, 8x8"
        + (f" resized to {size[0]}x{size[1]})" if size != (8, 8) else ")"),
    )
