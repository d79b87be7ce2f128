"""scikit-learn's 8x8 handwritten digits (1,797 images, always available, no download)."""

from __future__ import annotations

import numpy as np
import torch

from ddpmkit.data.images import ImageData

__all__ = ["load_digits_data"]


def load_digits_data() -> ImageData:
    """(1797, 1, 8, 8) uint8 images (0..16 scaled to 0..255) with labels 0..9."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return ImageData(
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(d.target.astype(np.int64)),
        [str(i) for i in range(10)],
        f"scikit-learn digits ({len(images)} images, 8x8)",
    )
