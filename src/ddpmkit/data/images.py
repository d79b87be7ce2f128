"""In-memory image datasets, the one place pixels are scaled, and the shared Pillow resize.

Every image dataset is loaded once into a uint8 tensor (N, C, H, W) at the training size, with
optional int64 labels (N,); the trainer indexes batches from it (no DataLoader workers needed on
CPU). Model space is float in [-1, 1]: :func:`to_model_range` and :func:`from_model_range` are the
only conversions between the two, and they round-trip every uint8 value exactly.

Resizing (:func:`resize_center_crop`, :func:`resize_images`) scales an image so that it *covers*
the target (H, W) (the shorter side relative to the target fits), then takes the centre; the crop
happens inside the resampling (Pillow's ``box``), bicubic and antialiased.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ddpmkit.errors import DatasetError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DatasetError",
    "ImageData",
    "as_image_size",
    "dataset_fingerprint",
    "from_model_range",
    "random_hflip",
    "resize_center_crop",
    "resize_images",
    "to_model_range",
]


@dataclass
class ImageData:
    """A whole image dataset in memory.

    ``images`` is uint8 (N, C, H, W) with C = 1 or 3; ``labels`` is int64 (N,) with values in
    ``[0, len(class_names))``, or None for unlabelled data; ``source`` describes where the data
    came from (for logs and checkpoints).
    """

    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor | None  # int64 (N,) or None
    class_names: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        x = self.images
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(
                f"ImageData.images must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}"
            )
        if self.labels is not None:
            y = self.labels
            if y.dtype != torch.int64 or y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"ImageData.labels must be int64 ({x.shape[0]},), got {y.dtype} "
                    f"{tuple(y.shape)}"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(self.class_names)):
                raise ValueError(
                    f"ImageData.labels must lie in [0, {len(self.class_names)}) (one class name "
                    f"per label), got [{int(y.min())}, {int(y.max())}]"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes, 0 for unlabelled data."""
        return len(self.class_names) if self.labels is not None else 0

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.images.shape[2]), int(self.images.shape[3])


def to_model_range(u8: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]: ``x / 127.5 - 1``.

    Only uint8 input is accepted, so already-scaled data cannot be scaled twice.
    """
    if u8.dtype != torch.uint8:
        raise TypeError(f"to_model_range expects uint8 pixels, got {u8.dtype}")
    return u8.float() / 127.5 - 1.0


def from_model_range(x: Tensor) -> Tensor:
    """float [-1, 1] -> uint8: ``round((clamp(x, -1, 1) + 1) * 127.5)``; NaN becomes 128."""
    x = torch.nan_to_num(x.float(), nan=0.0)
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def random_hflip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flip each sample of a batch (B, ..., W) left-right independently with probability 1/2.

    The coin flips are drawn on the generator's device (CPU by default) and moved to ``x``'s.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    flip = torch.rand(x.shape[0], generator=generator, device=device) < 0.5
    flip = flip.to(x.device).view(-1, *([1] * (x.ndim - 1)))
    return torch.where(flip, x.flip(-1), x)


def dataset_fingerprint(data: ImageData) -> str:
    """SHA-256 hex digest over the image shape, image bytes and label bytes.

    Keys cached evaluation statistics: any change of pixels, size, order or labels changes it.
    """
    h = hashlib.sha256()
    h.update(str(tuple(data.images.shape)).encode())
    h.update(np.ascontiguousarray(data.images.detach().cpu().numpy()).data)
    if data.labels is not None:
        h.update(np.ascontiguousarray(data.labels.detach().cpu().numpy()).data)
    return h.hexdigest()


def as_image_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``S`` or ``(H, W)`` -> ``(H, W)``; DatasetError unless every side is an integer >= 1."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in size
    ):
        raise DatasetError(
            f"image size must be S or (H, W) with integers >= 1, got {image_size!r}; "
            "fix data.image_size"
        )
    return int(size[0]), int(size[1])


def resize_center_crop(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale ``im`` so it covers ``size`` = (H, W), then keep the centre (bicubic, antialiased).

    The crop box is computed in source pixels (sub-pixel exact) and applied by the resampling
    itself, so nothing is cropped twice or rounded to whole source pixels.
    """
    from PIL import Image

    h, w = size
    sw, sh = im.size
    if (sw, sh) == (w, h):
        return im
    # The source region (cw x ch) that maps onto the target: the whole width when w / sw >=
    # h / sh (decided in integers), else the whole height. The limiting side is taken exactly:
    # w / (w / sw) in floats can exceed sw by an ulp, and Pillow rejects a box that starts at
    # -1e-14 ("box offset can't be negative"; it did for 92 of 2,000 photo crops, 196x201 etc.).
    if w * sh >= h * sw:
        scale, cw, ch = w / sw, float(sw), min(float(sh), h * sw / w)
    else:
        scale, cw, ch = h / sh, min(float(sw), w * sh / h), float(sh)
    left, top = max(0.0, (sw - cw) / 2.0), max(0.0, (sh - ch) / 2.0)
    box = (left, top, min(float(sw), left + cw), min(float(sh), top + ch))
    gap = 3.0 if scale < 1 / 3 else None  # fast integer reduce first only for big shrinks
    return im.resize((w, h), Image.Resampling.BICUBIC, box=box, reducing_gap=gap)


def resize_images(images: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, *size) with :func:`resize_center_crop` per image."""
    from PIL import Image

    n, c = int(images.shape[0]), int(images.shape[1])
    if tuple(images.shape[2:]) == tuple(size):
        return images
    if c not in (1, 3):
        raise ValueError(f"resize_images: need 1 or 3 channels, got {c}")
    arr = images.cpu().numpy()
    out = np.empty((n, c, size[0], size[1]), dtype=np.uint8)
    for i in range(n):
        img = arr[i, 0] if c == 1 else np.ascontiguousarray(arr[i].transpose(1, 2, 0))
        pil = Image.fromarray(img)
        res = np.asarray(resize_center_crop(pil, size), dtype=np.uint8)
        out[i] = res[None] if res.ndim == 2 else res.transpose(2, 0, 1)
    return torch.from_numpy(out)
