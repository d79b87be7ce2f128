"""In-memory image datasets and the one place pixels are scaled.

Every image dataset is loaded once into a uint8 tensor (N, C, H, W) at the training size; the
trainer indexes batches from it (no DataLoader workers needed on CPU).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "DatasetError",
    "ImageData",
    "dataset_fingerprint",
    "from_model_range",
    "random_hflip",
    "to_model_range",
]


class DatasetError(ValueError):
    """A user-facing data problem; the message says what is wrong and how to fix it."""


@dataclass
class ImageData:
    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor | None  # int64 (N,) or None
    class_names: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.labels is not None else 0


def to_model_range(u8: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]: x / 127.5 - 1."""
    return u8.float() / 127.5 - 1.0


def from_model_range(x: Tensor) -> Tensor:
    """float [-1, 1] -> uint8, clamped and rounded: round((x + 1) * 127.5)."""
    return ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def random_hflip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flip each image of a batch (B, C, H, W) left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def dataset_fingerprint(data: ImageData) -> str:
    """SHA-256 over the images and labels (keys cached evaluation statistics)."""
    h = hashlib.sha256()
    h.update(str(tuple(data.images.shape)).encode())
    h.update(data.images.contiguous().numpy().tobytes())
    if data.labels is not None:
        h.update(data.labels.contiguous().numpy().tobytes())
    return h.hexdigest()
