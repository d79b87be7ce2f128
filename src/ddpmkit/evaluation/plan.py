"""What ``ddpm eval`` compares the samples with: the dataset, its shapes, and loading its splits.

:func:`make_plan` checks a :class:`~ddpmkit.evaluation.sources.Source` against the arguments
(``--dataset``, ``--root``, model-only flags) and returns a :class:`Plan`: the dataset, whether
it is a 2-D toy, the sample shape and, for a model, what it was trained with. The rest of this
module loads a split of the plan's dataset (:func:`load_split`) and takes seeded subsets of it.
The shared limits of the evaluation (datasets, :data:`MIN_SAMPLES`, :data:`PR_K`) live here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ddpmkit.data.images import ImageData
from ddpmkit.data.registry import DATASETS
from ddpmkit.data.toy2d import TOY_NAMES
from ddpmkit.errors import CheckpointError, ConfigError, DatasetError
from ddpmkit.evaluation.sources import Source

if TYPE_CHECKING:
    from ddpmkit.evaluation.options import EvalOptions

__all__ = [
    "IMAGE_DATASETS",
    "MIN_SAMPLES",
    "MODEL_ONLY",
    "NATIVE_SHAPES",
    "PR_K",
    "SINGLE_SPLIT",
    "SUBSET_SEED",
    "TOYS",
    "Plan",
    "load_split",
    "make_plan",
    "seeded_indices",
    "shape_str",
    "split_name",
    "subset",
]

TOYS = TOY_NAMES  # the registries' names, under the names the evaluation modules use
IMAGE_DATASETS = DATASETS
NATIVE_SHAPES = {"fashion_mnist": (1, 28, 28), "mnist": (1, 28, 28), "digits": (1, 8, 8)}
SINGLE_SPLIT = ("digits", "folder")  # one split: "test" and "train" are the same images
MIN_SAMPLES = 4  # covariance needs 2, precision/recall with k = 3 needs 4
PR_K = 3
SUBSET_SEED = 0  # seeded subsets of reference/train sets (--ref-num, precision/recall, floors)
MODEL_ONLY = (
    "sampler",
    "steps",
    "spacing",
    "schedule_from",
    "eta",
    "final_step",
    "variance",
    "guidance",
    "guidance_interval",
    "seed",
    "bpd_images",
)


@dataclass
class Plan:
    """The dataset the samples are compared with and how to load it."""

    dataset: str
    toy: bool
    sample_shape: tuple[int, ...]
    num_classes: int = 0
    root: str | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    class_subfolders: bool = False
    train_seed: int = 0
    num_steps: int = 0  # diffusion steps T of a model


def make_plan(src: Source, opts: EvalOptions) -> Plan:
    """The :class:`Plan` for ``src``; a one-line error where source and options disagree."""
    if src.kind == "model":
        return _plan_model(src, opts)
    given = [f"--{k.replace('_', '-')}" for k in MODEL_ONLY if getattr(opts, k) is not None]
    if opts.raw:
        given.append("--raw")
    if given:
        raise ConfigError(
            f"{', '.join(given)}: only for a model SOURCE; {src.path} holds samples already drawn"
        )
    if opts.dataset is None:
        raise ConfigError(
            f"--dataset: say what the samples in {src.path} should match "
            f"({', '.join(IMAGE_DATASETS)} or a 2-D toy: {', '.join(TOYS)})"
        )
    name = opts.dataset
    if src.points is not None:
        if name not in TOYS:
            raise ConfigError(
                f"--dataset {name}: {src.path} holds 2-D points; expected a toy: {', '.join(TOYS)}"
            )
        if src.points.shape[1] != 2:
            raise DatasetError(
                f"{src.path}: points have {src.points.shape[1]} coordinates; {name} is 2-D"
            )
        return Plan(name, True, (2,))
    assert src.images is not None
    if name not in IMAGE_DATASETS:
        raise ConfigError(
            f"--dataset {name}: {src.path} holds images; expected one of "
            f"{', '.join(IMAGE_DATASETS)}"
        )
    shape = tuple(int(s) for s in src.images.shape[1:])
    if name in NATIVE_SHAPES and shape != NATIVE_SHAPES[name]:
        raise DatasetError(
            f"{src.path}: samples are {shape_str(shape)} but {name} images are "
            f"{shape_str(NATIVE_SHAPES[name])}; evaluate against the dataset they were made for"
        )
    if name == "folder" and not opts.root:
        raise ConfigError("--dataset folder: give the folder of real images with --root DIR")
    return Plan(
        name,
        False,
        shape,
        num_classes=10 if name in NATIVE_SHAPES else 0,
        root=str(opts.root) if opts.root is not None else None,
        image_size=(shape[1], shape[2]) if name == "folder" else None,
        channels=shape[0] if name == "folder" else None,
    )


def _plan_model(src: Source, opts: EvalOptions) -> Plan:
    """The plan of a model SOURCE: its training dataset, shapes, seed and diffusion steps."""
    from ddpmkit.training.config import RunConfig, config_from_dict

    assert src.meta is not None
    try:
        cfg = config_from_dict(RunConfig, src.meta["config"])
        shape = tuple(int(v) for v in src.meta["data"]["sample_shape"])
        num_classes = int(src.meta["data"]["num_classes"])
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{src.model_folder}: its config cannot be used ({e})") from None
    name = cfg.data.name
    if opts.dataset is not None and opts.dataset != name:
        raise ConfigError(
            f"--dataset {opts.dataset}: {src.path} is a model of {name!r}; evaluate it against "
            f"{name} (drop --dataset) or give a model trained on {opts.dataset}"
        )
    d = cfg.diffusion
    num_steps = len(d.betas) if d.schedule == "custom" else d.num_steps
    if len(shape) == 1:
        if name not in TOYS:
            raise CheckpointError(f"{src.model_folder}: vector data of unknown dataset {name!r}")
        return Plan(name, True, shape, train_seed=cfg.train.seed, num_steps=num_steps)
    if name not in IMAGE_DATASETS:
        raise CheckpointError(f"{src.model_folder}: image data of unknown dataset {name!r}")
    root = str(opts.root) if opts.root else (cfg.data.root or None)
    if name == "folder" and not root:
        raise ConfigError(f"{src.path}: a folder-dataset model; give its images with --root DIR")
    size: tuple[int, int] | None = None
    if len(cfg.data.image_size) == 1:
        size = (cfg.data.image_size[0], cfg.data.image_size[0])
    elif len(cfg.data.image_size) == 2:
        size = (cfg.data.image_size[0], cfg.data.image_size[1])
    return Plan(
        name,
        False,
        shape,
        num_classes=num_classes,
        root=root,
        image_size=size,
        channels=cfg.data.channels or None,
        class_subfolders=cfg.data.class_subfolders,
        train_seed=cfg.train.seed,
        num_steps=num_steps,
    )


def shape_str(shape: tuple[int, ...]) -> str:
    """``(1, 28, 28)`` -> ``"1x28x28"``."""
    return "x".join(str(s) for s in shape)


def load_split(plan: Plan, split: str, log: Callable[[str], None]) -> ImageData:
    """The ``split`` ("test" or "train") of the plan's image dataset, never downloaded."""
    from ddpmkit.data import load_dataset

    return load_dataset(
        plan.dataset,
        root=plan.root,
        split=split,
        image_size=plan.image_size,
        channels=plan.channels,
        class_subfolders=plan.class_subfolders,
        download=False,
        log=log,
    )


def subset(data: ImageData, n: int | None, what: str) -> ImageData:
    """A seeded random subset of n images (sorted indices), or ``data`` itself."""
    if n is None or n >= len(data):
        return data
    idx = seeded_indices(len(data), n)
    labels = data.labels[idx] if data.labels is not None else None
    return ImageData(
        data.images[idx].contiguous(),
        labels,
        list(data.class_names),
        f"{data.source}; seeded subset of {n} ({what})",
    )


def seeded_indices(total: int, n: int, seed: int = SUBSET_SEED) -> Tensor:
    """n distinct indices into ``range(total)``, sorted, from a seeded permutation."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=gen)[:n].sort().values


def split_name(plan: Plan, split: str) -> str:
    """The split as reported: ``"only"`` for datasets with a single split."""
    return "only" if plan.dataset in SINGLE_SPLIT else split
