"""Attributes of Fashion-MNIST garments measured from their pixels, never assumed.

Images are uint8 (N, 1, H, W) or (N, H, W), read as float64 in chunks of 4,096.

* brightness (:func:`foreground_brightness`, :func:`brightness_attribute`): the mean of the
  garment's pixels (values > ``FOREGROUND`` = 25; 0 for a blank image) against its class's
  30th / 70th percentiles on the train split (``BRIGHTNESS_THRESHOLDS``): below -> "dark"
  (-1), above -> "light" (+1), else not said (0);
* direction, for sandals, sneakers and ankle boots (``SHOES``; :func:`shoe_direction_score`,
  :func:`direction_attribute`): the heel and the shaft are the tall end of a shoe, so the
  column centroid of the top 12 rows lies on the heel's side of the whole shoe's centroid;
  more than ``DIRECTION_MARGIN`` = 1 px to the right -> the toe "points left" (-1), more than
  1 px to the left -> "points right" (+1), else unclear (0).

:func:`halves` splits (N, C, H, 2W) two-garment scenes into their (N, C, H, W) left and right
halves, for the classifier. The same functions measure the training images
(:mod:`ddpmkit.data.captions`, which re-exports these names) and the samples
(:mod:`ddpmkit.evaluation.prompts`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from torch import Tensor

from ddpmkit.data.caption_text import SHOES

__all__ = [
    "BRIGHTNESS_THRESHOLDS",
    "brightness_attribute",
    "direction_attribute",
    "foreground_brightness",
    "halves",
    "shoe_direction_score",
]

# Per class: 30th and 70th percentile of foreground_brightness on the train split (60,000).
BRIGHTNESS_THRESHOLDS: tuple[tuple[float, float], ...] = (
    (126.7, 188.6), (157.1, 194.2), (127.4, 193.3), (147.6, 197.5), (162.9, 198.6),
    (117.4, 148.5), (112.0, 180.5), (133.0, 164.3), (155.4, 187.8), (164.8, 190.3),
)  # fmt: skip
FOREGROUND = 25  # pixel values above this are the garment
DIRECTION_MARGIN = 1.0  # px of centroid offset needed to call a direction


# ---------------------------------------------------------------- attributes from pixels


def _gray(images: Tensor | np.ndarray) -> np.ndarray:
    """uint8 (N, 1, H, W) or (N, H, W) -> float64 (N, H, W)."""
    x = images.numpy() if isinstance(images, Tensor) else np.asarray(images)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected one channel, got {x.shape[1]}")
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected images (N, [1,] H, W), got shape {x.shape}")
    return x.astype(np.float64)


def _per_chunk(fn: Callable[[np.ndarray], np.ndarray], images: Tensor | np.ndarray) -> np.ndarray:
    """fn over chunks of 4,096 images as float64 (bounded memory for 60,000 images)."""
    x = images.numpy() if isinstance(images, Tensor) else np.asarray(images)
    out = [fn(_gray(x[i : i + 4096])) for i in range(0, len(x), 4096)]
    return np.concatenate(out) if out else np.zeros(0)


def _brightness(x: np.ndarray) -> np.ndarray:
    fg = x > FOREGROUND
    return (x * fg).sum(axis=(1, 2)) / np.maximum(fg.sum(axis=(1, 2)), 1)


def foreground_brightness(images: Tensor | np.ndarray) -> np.ndarray:
    """(N,) mean value of each image's garment pixels (> ``FOREGROUND``); 0 for a blank one."""
    return _per_chunk(_brightness, images)


def brightness_attribute(images: Tensor | np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """(N,) int64: -1 dark, 1 light, 0 neither, against ``BRIGHTNESS_THRESHOLDS[class]``."""
    b = foreground_brightness(images)
    lo = np.array([BRIGHTNESS_THRESHOLDS[c][0] for c in classes])
    hi = np.array([BRIGHTNESS_THRESHOLDS[c][1] for c in classes])
    return np.where(b < lo, -1, np.where(b > hi, 1, 0)).astype(np.int64)


def shoe_direction_score(images: Tensor | np.ndarray) -> np.ndarray:
    """(N,) column centroid of the top 12 rows minus that of the whole image (px); > 0: the
    tall end (heel, shaft) is on the right, so the toe points left."""

    def score(x: np.ndarray) -> np.ndarray:
        cols = np.arange(x.shape[2], dtype=np.float64)

        def centroid(a: np.ndarray) -> np.ndarray:
            return (a.sum(axis=1) * cols).sum(axis=1) / np.maximum(a.sum(axis=(1, 2)), 1e-9)

        return centroid(x[:, :12]) - centroid(x)

    return _per_chunk(score, images)


def direction_attribute(images: Tensor | np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """(N,) int64: -1 points left, 1 points right, 0 unclear or not a shoe."""
    s = shoe_direction_score(images)
    shoe = np.isin(np.asarray(classes), SHOES)
    d = np.where(s > DIRECTION_MARGIN, -1, np.where(s < -DIRECTION_MARGIN, 1, 0))
    return np.where(shoe, d, 0).astype(np.int64)


def halves(images: Tensor) -> tuple[Tensor, Tensor]:
    """(N, C, H, 2W) scenes -> the left and right (N, C, H, W) halves (for the classifier)."""
    w = images.shape[-1]
    if w % 2:
        raise ValueError(f"scene width must be even, got {w}")
    return images[..., : w // 2], images[..., w // 2 :]
