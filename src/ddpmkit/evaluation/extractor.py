"""The feature extractor of an image evaluation: the dataset classifier or the generic CNN.

:func:`choose_extractor` picks the built-in dataset's classifier
(:mod:`ddpmkit.evaluation.classifier`) when the samples have its native shape and its weights
exist, and otherwise the generic random-feature extractor, with a note saying why. The returned
:class:`Features` maps uint8 images to features and carries the extractor's name and identity
(name plus a probe hash, :func:`ddpmkit.evaluation.reference.extractor_identity`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddpmkit.data.images import ImageData
from ddpmkit.evaluation.plan import NATIVE_SHAPES, Plan, shape_str

__all__ = ["Features", "choose_extractor"]


@dataclass
class Features:
    """The feature extractor chosen for a dataset and shape."""

    dataset: str | None  # classifier dataset, or None for the generic extractor
    batch_size: int
    name: str = ""
    identity: str = ""

    def __call__(self, images_u8: Tensor) -> Tensor:
        return self.extract(images_u8).features

    def extract(self, images_u8: Tensor) -> Any:
        """Features (and class probabilities, with a classifier) of uint8 (N, C, H, W) images."""
        from ddpmkit.evaluation.classifier import extract

        return extract(images_u8, self.dataset, batch_size=self.batch_size)

    def statistics(
        self, data: ImageData, description: str, cache: Path | None, log: Callable[[str], None]
    ) -> tuple[Any, str, str]:
        """Features and their statistics of a real image set, from the cache keyed by the
        set's SHA-256 and this extractor's identity when possible
        (:func:`ddpmkit.evaluation.reference.reference_statistics`): (stats, cache state, key)."""
        from ddpmkit.data.images import dataset_fingerprint
        from ddpmkit.evaluation.reference import reference_statistics

        return reference_statistics(  # type: ignore[no-any-return]
            data.images,
            fingerprint=dataset_fingerprint(data),
            extractor_id=self.identity,
            features_of=self,
            folder=cache,
            description=description,
            log=log,
        )


def choose_extractor(plan: Plan, batch_size: int, notes: list[str]) -> Features:
    """The extractor for ``plan``'s dataset and sample shape; a fallback appends to ``notes``."""
    from ddpmkit.evaluation.classifier import load_classifier
    from ddpmkit.evaluation.classifier import shipped_classifier_path as shipped
    from ddpmkit.evaluation.classifier import user_classifier_path as user
    from ddpmkit.evaluation.reference import extractor_identity

    ds: str | None = None
    native = NATIVE_SHAPES.get(plan.dataset)
    if native is None:
        notes.append(
            "not a built-in dataset: features from the generic random-feature CNN; compare "
            "these numbers only with each other, not with FID values or other extractors"
        )
    elif plan.sample_shape != native:
        notes.append(
            f"the {plan.dataset} classifier takes {shape_str(native)} images, these are "
            f"{shape_str(plan.sample_shape)}: generic random-feature CNN used instead"
        )
    elif not any(p.is_file() for p in (shipped(plan.dataset), user(plan.dataset))):
        notes.append(
            f"no {plan.dataset} classifier weights (make them with `python "
            f"scripts/train_classifier.py {plan.dataset}`): generic random-feature CNN used "
            "instead; compare these numbers only with each other"
        )
    else:
        load_classifier(plan.dataset)  # a broken weights file is an error, not a fallback
        ds = plan.dataset
    feats = Features(ds, batch_size)
    probe = torch.zeros((1, *plan.sample_shape), dtype=torch.uint8)
    feats.name = str(feats.extract(probe).extractor)
    feats.identity = extractor_identity(feats.name, feats, plan.sample_shape)
    return feats
