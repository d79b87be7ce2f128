"""Captioned data made offline: Fashion-MNIST with captions, and two-garment scenes.

Single garments (:func:`captioned_fashion`). Each image gets one caption, drawn with a seeded
``numpy`` generator: a synonym of its class (``SYNONYMS``), optionally the attributes measured
from its pixels, inside a template (``SINGLE_TEMPLATES``): "a sneaker", "a photo of a dark
running shoe pointing left", "a pair of light trousers on a black background".

* brightness (:func:`~ddpmkit.data.garment_attributes.brightness_attribute`): the mean of the
  garment's pixels (values > 25) against its class's 30th / 70th percentiles on the train split
  (``BRIGHTNESS_THRESHOLDS``): below -> "dark" (-1), above -> "light" (+1), else not said (0);
* direction, for sandals, sneakers and ankle boots
  (:func:`~ddpmkit.data.garment_attributes.direction_attribute`): the heel and the shaft are
  the tall end of a shoe, so the column centroid of the top 12 rows lies on the heel's side of
  the whole shoe's centroid; more than 1 px to the right -> the toe "points left" (-1), more
  than 1 px to the left -> "points right" (+1). 90-99.9% of Fashion-MNIST's shoes point left,
  so ``mirror_shoes`` (default 0.5) mirrors a seeded share of them first; the direction is
  measured after that, never assumed.

Two-garment scenes (:func:`fashion_scenes`): two images side by side on a 28x56 canvas
(H x W), captioned with the relation in either order ("a sandal to the left of a bag", "a bag
with a sandal on its left"). Held out from training, to measure generalisation: the class pairs
``HELD_OUT_PAIRS`` (unordered: neither order is in training) and the phrasings
``HELD_OUT_SINGLE_TEMPLATES`` / ``HELD_OUT_SCENE_TEMPLATES``;
:func:`~ddpmkit.data.caption_text.scene_prompts` and
:func:`~ddpmkit.data.caption_text.single_prompts` give the evaluation's prompts with what each
should show.

No horizontal-flip augmentation on these data: it swaps left and right (and the direction).

Every dataset is a :class:`CaptionedImages`: uint8 images (N, C, H, W) as in
:class:`~ddpmkit.data.images.ImageData`, caption ids into a sorted list of distinct captions (so
``ddpmkit.text.encode_all(encoder, data.caption_set)`` rows are the ids), and per-image
metadata for evaluation (garment classes, measured attributes).

The vocabulary, templates and phrases live in :mod:`ddpmkit.data.caption_text`, the attributes
measured from pixels in :mod:`ddpmkit.data.garment_attributes`; this module builds the datasets
and re-exports both modules' public names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ddpmkit.data.caption_text import (
    CLASS_NAMES,
    HELD_OUT_PAIRS,
    HELD_OUT_SCENE_TEMPLATES,
    HELD_OUT_SINGLE_TEMPLATES,
    SCENE_TEMPLATES,
    SHOES,
    SINGLE_TEMPLATES,
    SYNONYMS,
    _templates,
    class_pairs,
    describe_garment,
    describe_scene,
    noun_phrase,
    scene_prompts,
    single_prompts,
)
from ddpmkit.data.garment_attributes import (
    BRIGHTNESS_THRESHOLDS,
    brightness_attribute,
    direction_attribute,
    foreground_brightness,
    halves,
    shoe_direction_score,
)

# public though never in __all__: still importable from here
from ddpmkit.data.garment_attributes import DIRECTION_MARGIN as DIRECTION_MARGIN
from ddpmkit.data.garment_attributes import FOREGROUND as FOREGROUND
from ddpmkit.data.images import ImageData
from ddpmkit.errors import DatasetError

__all__ = [
    "BRIGHTNESS_THRESHOLDS",
    "CLASS_NAMES",
    "HELD_OUT_PAIRS",
    "HELD_OUT_SCENE_TEMPLATES",
    "HELD_OUT_SINGLE_TEMPLATES",
    "SCENE_TEMPLATES",
    "SHOES",
    "SINGLE_TEMPLATES",
    "SYNONYMS",
    "CaptionedImages",
    "brightness_attribute",
    "captioned_fashion",
    "class_pairs",
    "describe_garment",
    "describe_scene",
    "direction_attribute",
    "fashion_scenes",
    "foreground_brightness",
    "halves",
    "noun_phrase",
    "scene_prompts",
    "shoe_direction_score",
    "single_prompts",
]


@dataclass
class CaptionedImages:
    """Images with one caption each, plus metadata for evaluation.

    ``images``: uint8 (N, C, H, W). ``caption_ids``: int64 (N,) into ``caption_set``, the
    sorted distinct captions. ``garments``: int64 (N, 2), the class of the left (or only)
    garment and of the right one, -1 where there is none (single garments: (class, -1)); None
    when unknown (a user's folder). ``attributes``: int64 (N,) tensors: "brightness" (-1 dark,
    0 neither, 1 light), "direction" (-1 points left, 0 none, 1 right), "says_brightness",
    "says_direction" (1 where the caption names it).
    """

    images: Tensor
    caption_ids: Tensor
    caption_set: list[str]
    garments: Tensor | None = None
    attributes: dict[str, Tensor] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {tuple(self.images.shape)}")
        if self.caption_ids.dtype != torch.int64 or tuple(self.caption_ids.shape) != (n,):
            raise ValueError(f"caption_ids must be int64 ({n},)")
        if n and (
            int(self.caption_ids.min()) < 0 or int(self.caption_ids.max()) >= len(self.caption_set)
        ):
            raise ValueError("caption_ids must index caption_set")
        if list(self.caption_set) != sorted(set(self.caption_set)):
            raise ValueError("caption_set must be sorted and distinct")
        if self.garments is not None and tuple(self.garments.shape) != (n, 2):
            raise ValueError(f"garments must be (N, 2) = ({n}, 2)")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def captions(self) -> list[str]:
        """The N captions, one per image."""
        return [self.caption_set[i] for i in self.caption_ids.tolist()]

    def subset(self, index: Tensor | Sequence[int]) -> CaptionedImages:
        """The images ``index`` (captions re-indexed to the ones still used)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        caps = [self.caption_set[i] for i in self.caption_ids[idx].tolist()]
        return _build(
            self.images[idx],
            caps,
            None if self.garments is None else self.garments[idx],
            {k: v[idx] for k, v in self.attributes.items()},
            self.class_names,
            self.source,
        )

    @staticmethod
    def concat(parts: Sequence[CaptionedImages]) -> CaptionedImages:
        """One dataset from several of the same image size (missing attributes become 0)."""
        if not parts:
            raise ValueError("concat needs at least one dataset")
        shapes = {tuple(p.images.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise DatasetError(f"cannot concatenate images of different shapes {sorted(shapes)}")
        keys = sorted({k for p in parts for k in p.attributes})
        attrs = {
            k: torch.cat(
                [p.attributes.get(k, torch.zeros(len(p), dtype=torch.long)) for p in parts]
            )
            for k in keys
        }
        garments = (
            None
            if any(p.garments is None for p in parts)
            else torch.cat([p.garments for p in parts if p.garments is not None])
        )
        return _build(
            torch.cat([p.images for p in parts]),
            [c for p in parts for c in p.captions],
            garments,
            attrs,
            parts[0].class_names,
            " + ".join(p.source for p in parts),
        )


def _build(
    images: Tensor,
    captions: list[str],
    garments: Tensor | None,
    attributes: dict[str, Tensor],
    class_names: list[str],
    source: str,
) -> CaptionedImages:
    caption_set = sorted(set(captions))
    index = {c: i for i, c in enumerate(caption_set)}
    ids = torch.tensor([index[c] for c in captions], dtype=torch.int64)
    return CaptionedImages(images, ids, caption_set, garments, attributes, class_names, source)


# ---------------------------------------------------------------- datasets


def _fashion(data: ImageData | None, root: str | Path | None, split: str) -> ImageData:
    if data is None:
        from ddpmkit.data.idx import load_mnist_like

        data = load_mnist_like("fashion_mnist", root, split)
    if data.labels is None or data.channels != 1:
        raise DatasetError("captioned Fashion-MNIST needs labelled one-channel images")
    return data


def captioned_fashion(
    split: str = "train",
    *,
    seed: int = 0,
    root: str | Path | None = None,
    data: ImageData | None = None,
    templates: Literal["train", "held_out"] = "train",
    attribute_rate: float = 0.5,
    mirror_shoes: float = 0.5,
    canvas_width: int | None = None,
) -> CaptionedImages:
    """Fashion-MNIST ``split`` with one caption per image (module docstring); deterministic
    given ``seed``.

    ``data``: the labelled source images (default: load the split from ``root`` or the default
    places). ``attribute_rate``: probability that each measured attribute is said.
    ``mirror_shoes``: share of shoe images mirrored before measuring. ``canvas_width`` (e.g. 56):
    centre each garment on a black canvas that wide, to train with the scenes at one size.
    """
    src = _fashion(data, root, split)
    rng = np.random.default_rng(seed)
    assert src.labels is not None
    labels = src.labels.numpy()
    images = src.images.clone()
    n = len(labels)
    shoe = np.isin(labels, SHOES)
    mirror = shoe & (rng.random(n) < mirror_shoes)
    if mirror.any():
        idx = torch.from_numpy(np.nonzero(mirror)[0])
        images[idx] = images[idx].flip(-1)
    bright = brightness_attribute(images, labels.tolist())
    direction = direction_attribute(images, labels.tolist())
    says_b = (bright != 0) & (rng.random(n) < attribute_rate)
    says_d = (direction != 0) & (rng.random(n) < attribute_rate)
    syn = [int(rng.integers(len(SYNONYMS[c]))) for c in labels]
    temps = _templates(templates, SINGLE_TEMPLATES, HELD_OUT_SINGLE_TEMPLATES)
    tmpl = rng.integers(len(temps), size=n)
    captions = [
        describe_garment(
            int(c),
            syn[i],
            int(bright[i]) * bool(says_b[i]),
            int(direction[i]) * bool(says_d[i]),
            temps[tmpl[i]],
        )
        for i, c in enumerate(labels)
    ]
    h, w = images.shape[-2:]
    if canvas_width is not None:
        if canvas_width < w:
            raise DatasetError(f"canvas_width {canvas_width} is narrower than the images ({w})")
        canvas = torch.zeros(n, 1, h, canvas_width, dtype=torch.uint8)
        x0 = (canvas_width - w) // 2
        canvas[..., x0 : x0 + w] = images
        images, w = canvas, canvas_width
    garments = torch.stack([torch.from_numpy(labels.astype(np.int64)), torch.full((n,), -1)], 1)
    attrs = {
        "brightness": torch.from_numpy(bright),
        "direction": torch.from_numpy(direction),
        "says_brightness": torch.from_numpy(says_b.astype(np.int64)),
        "says_direction": torch.from_numpy(says_d.astype(np.int64)),
    }
    desc = f"captioned {src.source}, {templates} templates, seed {seed}, {h}x{w}"
    return _build(images, captions, garments, attrs, list(CLASS_NAMES), desc)


def fashion_scenes(
    split: str = "train",
    *,
    num: int | None = None,
    seed: int = 0,
    root: str | Path | None = None,
    data: ImageData | None = None,
    pairs: Literal["train", "held_out"] = "train",
    templates: Literal["train", "held_out"] = "train",
) -> CaptionedImages:
    """``num`` (default: the split's size) two-garment scenes, 1x28x56, from ``split``'s images;
    deterministic given ``seed``.

    Each scene: an ordered class pair drawn uniformly from ``class_pairs(pairs)``, a random image
    of each class (left, right), a synonym for each and a template of the set. ``garments`` holds
    (left class, right class).
    """
    src = _fashion(data, root, split)
    assert src.labels is not None
    labels = src.labels.numpy()
    rng = np.random.default_rng(seed)
    n = len(labels) if num is None else num
    if n < 1:
        raise DatasetError(f"num must be >= 1, got {n}")
    by_class = [np.nonzero(labels == c)[0] for c in range(10)]
    allowed = [p for p in class_pairs(pairs) if len(by_class[p[0]]) and len(by_class[p[1]])]
    if not allowed:
        raise DatasetError("no class pair of the set has images in the source data")
    temps = _templates(templates, SCENE_TEMPLATES, HELD_OUT_SCENE_TEMPLATES)
    choice = rng.integers(len(allowed), size=n)
    left = np.array([allowed[k][0] for k in choice])
    right = np.array([allowed[k][1] for k in choice])
    li = np.array([rng.choice(by_class[c]) for c in left])
    ri = np.array([rng.choice(by_class[c]) for c in right])
    tmpl = rng.integers(len(temps), size=n)
    captions = [
        describe_scene(
            int(a),
            int(b),
            temps[tmpl[i]],
            int(rng.integers(len(SYNONYMS[a]))),
            int(rng.integers(len(SYNONYMS[b]))),
        )
        for i, (a, b) in enumerate(zip(left, right))
    ]
    images = torch.cat([src.images[torch.from_numpy(li)], src.images[torch.from_numpy(ri)]], -1)
    garments = torch.from_numpy(np.stack([left, right], 1).astype(np.int64))
    h, w = images.shape[-2:]
    desc = f"scenes from {src.source}, {pairs} pairs, {templates} templates, seed {seed}, {h}x{w}"
    return _build(images, captions, garments, {}, list(CLASS_NAMES), desc)
