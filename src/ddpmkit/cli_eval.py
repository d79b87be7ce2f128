"""``ddpm eval SOURCE``: sample quality, likelihood and memorisation, with what they depend on.

    ddpm eval RUN_OR_CHECKPOINT [--num 1000] [--sampler dpmpp] [--steps 20] [--raw] ...
    ddpm eval samples.npz --dataset fashion_mnist
    ddpm eval images/ --dataset folder --root my_training_images/

SOURCE is a run, checkpoint or exported model folder (samples are drawn first, by the same code
as ``ddpm sample``: per-sample seeds, class-balanced labels for conditional models), an ``.npz``
with ``images`` uint8 (N, C, H, W) or (N, H, W, C) and optional ``labels`` (N,) (as written by
``ddpm sample``; 2-D toys: ``points`` (N, 2)), or a folder of images (PNG, JPEG, ...).

Images of a built-in dataset (fashion_mnist, mnist, digits) are compared in the feature space of
that dataset's classifier (:mod:`ddpmkit.evaluation.classifier`): Frechet distance to the
reference set, an Inception-Score analogue, k-NN precision and recall and, for conditional
models, the share of samples classified as the requested class. Other image folders get the
same statistics on the generic random-feature extractor, stated as such. 2-D toy models:
sliced Wasserstein distance and MMD against fresh data. Models of images also get the NLL bound
in bits/dim on real images, and every image evaluation a memorisation check (nearest training
image of every sample, in pixels and features; ``OUT/nearest.png`` shows the closest pairs).

Writes ``OUT/eval.json`` (every number with what it depends on: number of samples, EMA or raw
weights, sampler and steps, reference set and its size, feature extractor), ``OUT/nearest.png``
and ``OUT/nearest.npz``, and prints a table. Reference statistics are cached (see
:mod:`ddpmkit.evaluation.reference`). Wrong input is a one-line error, and nothing is written.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddpmkit.data.images import DatasetError, ImageData
from ddpmkit.training.checkpoint import CheckpointError
from ddpmkit.training.config import ConfigError

__all__ = ["evaluate", "register"]

TOYS = ("s_curve", "swiss_roll", "moons", "eight_gaussians")
IMAGE_DATASETS = ("fashion_mnist", "mnist", "digits", "folder")
NATIVE_SHAPES = {"fashion_mnist": (1, 28, 28), "mnist": (1, 28, 28), "digits": (1, 8, 8)}
SINGLE_SPLIT = ("digits", "folder")  # one split: "test" and "train" are the same images
MIN_SAMPLES = 4  # covariance needs 2, precision/recall with k = 3 needs 4
PR_K = 3
SUBSET_SEED = 0  # seeded subsets of reference/train sets (--ref-num, precision/recall, floors)
TOY_REF_SEED_OFFSET = 7919  # fresh 2-D data: seed = training seed + this (never the train set)
MMD_MAX_POINTS = 2000  # MMD memory is O((N + M)^2): at most this many points per set
MODEL_ONLY = ("sampler", "steps", "spacing", "eta", "guidance", "seed", "bpd_images")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="sample quality (FD, precision/recall, ...), likelihood and memorisation",
        description="Sample quality, likelihood and memorisation of a model or of samples; "
        "every number is reported with what it depends on.",
    )
    p.add_argument(
        "source",
        help="run/checkpoint/model folder (samples are drawn first), an .npz of samples "
        "(images uint8 (N, C, H, W) or (N, H, W, C), optional labels; 2-D: points (N, 2)), "
        "or a folder of images",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help=f"what the samples should match: {', '.join(IMAGE_DATASETS)} or a 2-D toy "
        f"({', '.join(TOYS)}); default for a model: the dataset it was trained on",
    )
    p.add_argument("--root", default=None, help="dataset folder (needed for --dataset folder)")
    p.add_argument(
        "--num",
        type=int,
        default=None,
        help="samples to draw from a model (default 1000); for a samples file: use the first N",
    )
    p.add_argument(
        "--sampler", default=None, choices=["ddpm", "ddim", "dpmpp"], help="default dpmpp"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default dpmpp 20, ddim 50, ddpm T)"
    )
    p.add_argument(
        "--spacing", default=None, help="timestep spacing (default logsnr for dpmpp, else trailing)"
    )
    p.add_argument(
        "--eta", type=float, default=None, help="noise in [0, 1] for ddim and dpmpp (default 0)"
    )
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")
    p.add_argument("--seed", type=int, default=None, help="sample i uses seed + i (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="sampling/feature batch size")
    p.add_argument(
        "--ref-split",
        default="test",
        choices=["test", "train"],
        help="reference set for FD and precision/recall (default test; digits and folders have "
        "one split)",
    )
    p.add_argument(
        "--ref-num",
        type=int,
        default=None,
        help="use a seeded subset of N reference images (default all; 2-D: as many as samples)",
    )
    p.add_argument(
        "--bpd-images",
        type=int,
        default=None,
        help="NLL bound in bits/dim on the first N reference images (models of images; "
        "default 100, 0 = skip)",
    )
    p.add_argument(
        "--bpd-timesteps",
        type=int,
        default=50,
        help="timestep strata of the bound (default 50, unbiased; 0 = all T - 1 timesteps)",
    )
    p.add_argument(
        "--memorisation",
        type=int,
        default=16,
        metavar="K",
        help="nearest-training-image check; show the K closest pairs (default 16, 0 = skip)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="reference statistics cache (default $DDPMKIT_CACHE/ref_stats, "
        "~/.cache/ddpmkit/ref_stats)",
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--out", default="eval", help="output folder (default: eval)")
    p.set_defaults(handler=_run)


def _info(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from ddpmkit.evaluation.report import format_table

    report, files = evaluate(args, log=_info)
    print(format_table(report), flush=True)
    for f in files:
        _info(f"wrote {f}")
    return 0


# ----------------------------------------------------------------------------- the source


@dataclass
class Source:
    """What ``ddpm eval`` was given: a model (metadata only) or samples already in memory."""

    kind: str  # "model" | "npz" | "folder"
    path: Path
    meta: dict[str, Any] | None = None
    model_folder: Path | None = None
    images: Tensor | None = None  # uint8 (N, C, H, W)
    points: Tensor | None = None  # float32 (N, D)
    labels: Tensor | None = None  # int64 (N,); -1 = no label
    notes: list[str] = field(default_factory=list)


def _open_source(args: argparse.Namespace, log: Callable[[str], None]) -> Source:
    path = Path(args.source).expanduser()
    if not path.exists():
        raise ConfigError(
            f"{path}: does not exist; give a run/checkpoint/model folder, an .npz of samples "
            "or a folder of images"
        )
    if path.is_dir():
        if any((path / n).exists() for n in ("checkpoints", "state.json", "config.json")):
            from ddpmkit.training.checkpoint import resolve_model_path

            meta, folder = resolve_model_path(path)
            if "config" not in meta or "data" not in meta:
                raise CheckpointError(
                    f"{folder}: metadata has no config/data section; not a ddpmkit model"
                )
            return Source("model", path, meta=meta, model_folder=folder)
        return _read_folder(path, log)
    if path.suffix.lower() == ".npz":
        return _read_npz(path)
    raise DatasetError(
        f"{path}: not an .npz file or a folder; give a run/checkpoint/model folder, an .npz of "
        "samples or a folder of images"
    )


def _read_folder(path: Path, log: Callable[[str], None]) -> Source:
    from ddpmkit.data.folder import EXTENSIONS, load_image_folder, scan_image_files

    if not scan_image_files(path):
        raise DatasetError(
            f"{path}: no image files ({', '.join(e[1:] for e in EXTENSIONS)}) in this folder; "
            "give a folder of sample images, an .npz of samples or a model folder"
        )
    try:
        data = load_image_folder(path, None, None, log=log)
    except DatasetError as e:
        first = str(e).split("; ")[0]
        raise DatasetError(f"{first}; sample images must be readable and of one size") from None
    return Source("folder", path, images=data.images)


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return msg or type(e).__name__


def _read_npz(path: Path) -> Source:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{path}: not a readable .npz file ({_reason(e)})") from None
    notes: list[str] = []
    images = points = None
    if "images" in arrays:
        images = _as_images(arrays["images"], path, notes)
        n = int(images.shape[0])
    elif "points" in arrays:
        points = _as_points(arrays["points"], path)
        n = int(points.shape[0])
    else:
        found = ", ".join(sorted(arrays)) or "none"
        raise DatasetError(
            f"{path}: no 'images' array (uint8 (N, C, H, W)) or 'points' array (N, 2); "
            f"arrays found: {found}"
        )
    labels = _as_labels(arrays["labels"], n, path) if "labels" in arrays else None
    return Source("npz", path, images=images, points=points, labels=labels, notes=notes)


def _as_images(arr: np.ndarray, path: Path, notes: list[str]) -> Tensor:
    """uint8 (N, C, H, W) from (N, C, H, W), (N, H, W, C) or (N, H, W); else DatasetError."""
    shape = tuple(int(s) for s in arr.shape)
    expect = "expected (N, C, H, W) or (N, H, W, C) with C = 1 or 3, or (N, H, W) grayscale"
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        if arr.shape[1] not in (1, 3) and arr.shape[3] in (1, 3):
            arr = arr.transpose(0, 3, 1, 2)
            notes.append(f"{path.name}: images read as (N, H, W, C) {shape}")
        elif arr.shape[1] not in (1, 3):
            raise DatasetError(f"{path}: 'images' has shape {shape}; {expect}")
    else:
        raise DatasetError(f"{path}: 'images' has shape {shape}; {expect}")
    if min(arr.shape) < 1:
        raise DatasetError(f"{path}: 'images' is empty (shape {shape})")
    if arr.dtype.kind == "f":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        raise DatasetError(
            f"{path}: 'images' is {arr.dtype} with values in [{lo:.3g}, {hi:.3g}]; expected "
            "uint8 pixels 0..255 as ddpm sample writes them (from [-1, 1]: round((x + 1) * 127.5))"
        )
    if arr.dtype.kind not in "ui":
        raise DatasetError(f"{path}: 'images' has dtype {arr.dtype}; expected uint8 pixels 0..255")
    if arr.dtype != np.uint8:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise DatasetError(
                f"{path}: 'images' values lie in [{lo}, {hi}], outside the pixel range 0..255"
            )
    return torch.from_numpy(np.ascontiguousarray(arr.astype(np.uint8)))


def _as_points(arr: np.ndarray, path: Path) -> Tensor:
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.dtype.kind not in "fiu":
        raise DatasetError(
            f"{path}: 'points' has shape {tuple(arr.shape)} and dtype {arr.dtype}; "
            "expected numbers (N, D), e.g. (N, 2) for a 2-D toy"
        )
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: 'points' contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _as_labels(arr: np.ndarray, n: int, path: Path) -> Tensor:
    if arr.ndim != 1 or arr.shape[0] != n or arr.dtype.kind not in "iu":
        raise DatasetError(
            f"{path}: 'labels' has shape {tuple(arr.shape)} and dtype {arr.dtype}; expected "
            f"integers ({n},), -1 for no label"
        )
    return torch.from_numpy(arr.astype(np.int64))


# ----------------------------------------------------------------------------- what to compare


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


def _plan(src: Source, args: argparse.Namespace) -> Plan:
    if src.kind == "model":
        return _plan_model(src, args)
    given = [f"--{k.replace('_', '-')}" for k in MODEL_ONLY if getattr(args, k) is not None]
    if args.raw:
        given.append("--raw")
    if given:
        raise ConfigError(
            f"{', '.join(given)}: only for a model SOURCE; {src.path} holds samples already drawn"
        )
    if args.dataset is None:
        raise ConfigError(
            f"--dataset: say what the samples in {src.path} should match "
            f"({', '.join(IMAGE_DATASETS)} or a 2-D toy: {', '.join(TOYS)})"
        )
    name = args.dataset
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
            f"{src.path}: samples are {_shape_str(shape)} but {name} images are "
            f"{_shape_str(NATIVE_SHAPES[name])}; evaluate against the dataset they were made for"
        )
    if name == "folder" and not args.root:
        raise ConfigError("--dataset folder: give the folder of real images with --root DIR")
    return Plan(
        name,
        False,
        shape,
        num_classes=10 if name in NATIVE_SHAPES else 0,
        root=args.root,
        image_size=(shape[1], shape[2]) if name == "folder" else None,
        channels=shape[0] if name == "folder" else None,
    )


def _plan_model(src: Source, args: argparse.Namespace) -> Plan:
    from ddpmkit.training.config import RunConfig, config_from_dict

    assert src.meta is not None
    try:
        cfg = config_from_dict(RunConfig, src.meta["config"])
        shape = tuple(int(v) for v in src.meta["data"]["sample_shape"])
        num_classes = int(src.meta["data"]["num_classes"])
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{src.model_folder}: its config cannot be used ({e})") from None
    name = cfg.data.name
    if args.dataset is not None and args.dataset != name:
        raise ConfigError(
            f"--dataset {args.dataset}: {src.path} is a model of {name!r}; evaluate it against "
            f"{name} (drop --dataset) or give a model trained on {args.dataset}"
        )
    d = cfg.diffusion
    num_steps = len(d.betas) if d.schedule == "custom" else d.num_steps
    if len(shape) == 1:
        if name not in TOYS:
            raise CheckpointError(f"{src.model_folder}: vector data of unknown dataset {name!r}")
        return Plan(name, True, shape, train_seed=cfg.train.seed, num_steps=num_steps)
    if name not in IMAGE_DATASETS:
        raise CheckpointError(f"{src.model_folder}: image data of unknown dataset {name!r}")
    root = args.root or cfg.data.root or None
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


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _check_args(args: argparse.Namespace) -> None:
    if args.num is not None and args.num < MIN_SAMPLES:
        raise ConfigError(f"--num: must be >= {MIN_SAMPLES}, got {args.num}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {args.batch_size}")
    if args.ref_num is not None and args.ref_num <= PR_K:
        raise ConfigError(f"--ref-num: must be > {PR_K}, got {args.ref_num}")
    if args.bpd_images is not None and args.bpd_images < 0:
        raise ConfigError(f"--bpd-images: must be >= 0, got {args.bpd_images}")
    if args.bpd_timesteps < 0:
        raise ConfigError(f"--bpd-timesteps: must be >= 0, got {args.bpd_timesteps}")
    if args.memorisation < 0:
        raise ConfigError(f"--memorisation: must be >= 0, got {args.memorisation}")
    if args.eta is not None and not 0.0 <= args.eta <= 1.0:
        raise ConfigError(f"--eta: must be in [0, 1], got {args.eta}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a folder")


# ----------------------------------------------------------------------------- data


def _load_split(plan: Plan, split: str, log: Callable[[str], None]) -> ImageData:
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


def _subset(data: ImageData, n: int | None, what: str) -> ImageData:
    """A seeded random subset of n images (sorted indices), or ``data`` itself."""
    if n is None or n >= len(data):
        return data
    idx = _seeded_indices(len(data), n)
    labels = data.labels[idx] if data.labels is not None else None
    return ImageData(
        data.images[idx].contiguous(),
        labels,
        list(data.class_names),
        f"{data.source}; seeded subset of {n} ({what})",
    )


def _seeded_indices(total: int, n: int, seed: int = SUBSET_SEED) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=gen)[:n].sort().values


def _split_name(plan: Plan, split: str) -> str:
    return "only" if plan.dataset in SINGLE_SPLIT else split


# ----------------------------------------------------------------------------- sampling


def _sampling_settings(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    sampler = args.sampler or "dpmpp"
    steps = args.steps
    if steps is None:
        steps = min({"ddpm": plan.num_steps, "ddim": 50, "dpmpp": 20}[sampler], plan.num_steps)
    return {
        "sampler": sampler,
        "steps": int(steps),
        "spacing": args.spacing or ("logsnr" if sampler == "dpmpp" else "trailing"),
        "eta": float(args.eta) if args.eta is not None else 0.0,
        "guidance": float(args.guidance) if args.guidance is not None else 1.0,
        "seed": int(args.seed) if args.seed is not None else 0,
    }


def _draw(
    src: Source, args: argparse.Namespace, plan: Plan, num: int, log: Callable[[str], None]
) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
    """Samples from the model through ``ddpm sample``'s own code (into a temporary folder)."""
    from ddpmkit.training.sample_cmd import run_sample

    s = _sampling_settings(args, plan)
    if s["guidance"] != 1.0 and not plan.num_classes:
        raise ConfigError(f"--guidance: {src.path} is not a class-conditional model")
    ns = argparse.Namespace(
        checkpoint=str(src.path),
        sampler=s["sampler"],
        steps=s["steps"],
        spacing=s["spacing"],
        eta=s["eta"],
        guidance=s["guidance"],
        label=None,  # conditional models: labels i % K, class-balanced
        grid_by_class=False,
        num=num,
        seed=s["seed"],
        raw=args.raw,
        batch_size=args.batch_size,
    )
    with tempfile.TemporaryDirectory(prefix="ddpm-eval-") as tmp:
        ns.out = tmp
        run_sample(ns, log=log)
        with np.load(Path(tmp) / "samples.npz") as z:
            key = "points" if plan.toy else "images"
            x = torch.from_numpy(np.array(z[key]))
            labels = torch.from_numpy(np.array(z["labels"]).astype(np.int64))
    has_labels = bool(plan.num_classes) and bool((labels >= 0).all())
    info = {
        "num": num,
        "shape": list(x.shape[1:]),
        "weights": "raw" if args.raw else "EMA",
        **s,
        "labels": f"class-balanced: sample i has class i mod {plan.num_classes}"
        if has_labels
        else "unconditional",
    }
    if s["sampler"] not in ("ddim", "dpmpp"):
        info.pop("eta")
    return x, labels if has_labels else None, info


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    args: argparse.Namespace, log: Callable[[str], None] = _info
) -> tuple[dict[str, Any], list[Path]]:
    """Run the whole evaluation of ``args`` (see :func:`register`); returns (report, files).

    Every check of the input happens before anything is written; files go to ``args.out``.
    """
    from ddpmkit import __version__

    _check_args(args)
    src = _open_source(args, log)
    plan = _plan(src, args)
    notes = list(src.notes)
    report: dict[str, Any] = {
        "ddpmkit_version": __version__,
        "source": {"kind": src.kind, "path": str(src.path)},
        "dataset": plan.dataset,
    }
    if src.meta is not None:
        report["source"]["model_folder"] = str(src.model_folder)
        if "step" in src.meta:
            report["source"]["step"] = int(src.meta["step"])
    if plan.toy:
        files = _evaluate_toy(src, args, plan, report, notes, log)
    else:
        files = _evaluate_images(src, args, plan, report, notes, log)
    return report, files


def _cache_folder(args: argparse.Namespace) -> Path | None:
    from ddpmkit.evaluation.reference import default_cache_dir

    if args.no_cache:
        return None
    return Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()


def _evaluate_toy(
    src: Source,
    args: argparse.Namespace,
    plan: Plan,
    report: dict[str, Any],
    notes: list[str],
    log: Callable[[str], None],
) -> list[Path]:
    from ddpmkit.data.toy2d import make_toy
    from ddpmkit.evaluation.metrics import mmd_rbf, sliced_wasserstein
    from ddpmkit.evaluation.report import METRIC_INFO, depends_on, write_json

    if src.kind == "model":
        num = args.num if args.num is not None else 1000
        x, _, sinfo = _draw(src, args, plan, num, log)
    else:
        assert src.points is not None
        x = src.points[: args.num] if args.num is not None else src.points
        if x.shape[0] < MIN_SAMPLES:
            raise DatasetError(f"{src.path}: {x.shape[0]} samples; need at least {MIN_SAMPLES}")
        sinfo = {"num": int(x.shape[0]), "shape": list(x.shape[1:]), "weights": None}
    n = int(x.shape[0])
    m = args.ref_num if args.ref_num is not None else n
    seed = plan.train_seed + TOY_REF_SEED_OFFSET
    ref = make_toy(plan.dataset, m, seed=seed)
    other = make_toy(plan.dataset, n, seed=seed + 1)
    x = x.double()
    log(f"comparing {n} samples with {m} fresh {plan.dataset} points")
    mmd_n, mmd_m = min(n, MMD_MAX_POINTS), min(m, MMD_MAX_POINTS)
    metrics = {
        "sliced_wasserstein": sliced_wasserstein(
            x, ref, generator=torch.Generator().manual_seed(0)
        ),
        "sliced_wasserstein_data_floor": sliced_wasserstein(
            other, ref, generator=torch.Generator().manual_seed(0)
        ),
        "mmd2": mmd_rbf(x[:mmd_n], ref[:mmd_m]),
        "mmd2_data_floor": mmd_rbf(other[:mmd_n], ref[:mmd_m]),
    }
    if mmd_n < n or mmd_m < m:
        notes.append(f"MMD^2 on the first {mmd_n} samples and {mmd_m} reference points")
    notes.append(
        "2-D data: no likelihood (the bound's decoder is for 8-bit images) and no memorisation "
        "check"
    )
    report["samples"] = sinfo
    report["reference"] = {
        "dataset": plan.dataset,
        "split": "fresh draw",
        "seed": seed,
        "floor_seed": seed + 1,
        "size": m,
        "description": f"make_toy({plan.dataset!r}, {m}, seed={seed})",
    }
    report["reference_cache"] = "n/a"
    report["extractor"] = None
    report["metrics"] = metrics
    report["metric_info"] = {k: METRIC_INFO[k] for k in metrics}
    report["likelihood"] = None
    report["memorisation"] = None
    report["depends_on"] = depends_on(report)
    report["notes"] = notes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return [write_json(out / "eval.json", report)]


@dataclass
class _Features:
    """The feature extractor chosen for a dataset and shape."""

    dataset: str | None  # classifier dataset, or None for the generic extractor
    batch_size: int
    name: str = ""
    identity: str = ""

    def __call__(self, images_u8: Tensor) -> Tensor:
        return self.extract(images_u8).features

    def extract(self, images_u8: Tensor) -> Any:
        from ddpmkit.evaluation.classifier import extract

        return extract(images_u8, self.dataset, batch_size=self.batch_size)


def _choose_extractor(plan: Plan, batch_size: int, notes: list[str]) -> _Features:
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
            f"the {plan.dataset} classifier takes {_shape_str(native)} images, these are "
            f"{_shape_str(plan.sample_shape)}: generic random-feature CNN used instead"
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
    feats = _Features(ds, batch_size)
    probe = torch.zeros((1, *plan.sample_shape), dtype=torch.uint8)
    feats.name = str(feats.extract(probe).extractor)
    feats.identity = extractor_identity(feats.name, feats, plan.sample_shape)
    return feats


def _evaluate_images(
    src: Source,
    args: argparse.Namespace,
    plan: Plan,
    report: dict[str, Any],
    notes: list[str],
    log: Callable[[str], None],
) -> list[Path]:
    from ddpmkit.data.images import dataset_fingerprint
    from ddpmkit.evaluation.metrics import (
        class_accuracy,
        feature_statistics,
        frechet_distance,
        inception_score,
        precision_recall,
    )
    from ddpmkit.evaluation.reference import reference_statistics
    from ddpmkit.evaluation.report import METRIC_INFO, depends_on

    # Everything that can fail on bad input happens before sampling and before any write.
    full_ref = _load_split(plan, args.ref_split, log)
    ref_shape = tuple(int(s) for s in full_ref.images.shape[1:])
    if ref_shape != plan.sample_shape:
        what = "the model makes" if src.kind == "model" else f"{src.path} holds"
        raise DatasetError(
            f"{what} {_shape_str(plan.sample_shape)} samples but {plan.dataset} images load as "
            f"{_shape_str(ref_shape)}; evaluate against the data the samples were made for"
        )
    if plan.dataset == "folder" and src.kind != "model":
        notes.append(
            f"reference folder images brought to the samples' shape {_shape_str(ref_shape)} "
            "(scaled to cover, centre-cropped; channels converted)"
        )
    ref = _subset(full_ref, args.ref_num, "--ref-num")
    if len(ref) <= PR_K:
        raise DatasetError(f"the reference set has {len(ref)} images; need more than {PR_K}")
    feats = _choose_extractor(plan, args.batch_size, notes)  # before sampling: fail early
    if src.kind == "model":
        num = args.num if args.num is not None else 1000
        samples, labels, sinfo = _draw(src, args, plan, num, log)
    else:
        assert src.images is not None
        samples = src.images[: args.num] if args.num is not None else src.images
        labels = src.labels[: samples.shape[0]] if src.labels is not None else None
        if samples.shape[0] < MIN_SAMPLES:
            raise DatasetError(
                f"{src.path}: {samples.shape[0]} samples; need at least {MIN_SAMPLES}"
            )
        if labels is not None and bool((labels < 0).any()):
            labels = None  # "-1 = no label" (unconditional samples)
        if labels is not None and plan.num_classes and int(labels.max()) >= plan.num_classes:
            raise DatasetError(
                f"{src.path}: labels go up to {int(labels.max())}, but {plan.dataset} has "
                f"{plan.num_classes} classes"
            )
        sinfo = {
            "num": int(samples.shape[0]),
            "shape": list(samples.shape[1:]),
            "weights": None,
            "labels": "from the file" if labels is not None else "none",
        }
    n = int(samples.shape[0])
    cache = _cache_folder(args)
    ref_desc = f"{plan.dataset} {_split_name(plan, args.ref_split)}: {ref.source}"
    ref_stats, cache_state, key = reference_statistics(
        ref.images,
        fingerprint=dataset_fingerprint(ref),
        extractor_id=feats.identity,
        features_of=feats,
        folder=cache,
        description=ref_desc,
        log=log,
    )
    log(f"extracting features of {n} samples")
    ex = feats.extract(samples)
    mu, cov = feature_statistics(ex.features)
    metrics: dict[str, float] = {"fd": frechet_distance(mu, cov, ref_stats.mu, ref_stats.cov)}
    pr_n = min(n, ref_stats.size)
    real_pr = ref_stats.features[_seeded_indices(ref_stats.size, pr_n)]
    metrics["precision"], metrics["recall"] = precision_recall(real_pr, ex.features, k=PR_K)
    if ex.probs is not None:
        metrics["inception_score"] = inception_score(ex.probs)
        if labels is not None:
            metrics["class_accuracy"] = class_accuracy(ex.probs, labels)
    report["samples"] = sinfo
    report["reference"] = {
        "dataset": plan.dataset,
        "split": _split_name(plan, args.ref_split),
        "size": len(ref),
        "description": ref.source,
        "fingerprint": ref_stats.info["fingerprint"],
        "precision_recall_size": pr_n,
        "cache_key": key,
    }
    report["reference_cache"] = cache_state
    report["extractor"] = feats.name
    report["extractor_id"] = feats.identity

    files: list[Path] = []
    like = None
    bpd_n = args.bpd_images if args.bpd_images is not None else 100
    if src.kind == "model" and bpd_n > 0:
        like = _likelihood(src, args, plan, full_ref, bpd_n, log)
    report["likelihood"] = like

    mem: dict[str, Any] | None = None
    mem_files: dict[str, Any] = {}
    floor: float | None = None
    if args.memorisation > 0:
        mem, mem_files, floor = _memorisation(
            samples, ex.features, plan, args, ref, ref_stats, feats, cache, log
        )
    if floor is not None:
        metrics["fd_real_floor"] = floor
    report["metrics"] = metrics
    report["metric_info"] = {k: METRIC_INFO[k] for k in metrics}
    report["memorisation"] = mem
    report["depends_on"] = depends_on(report)
    report["notes"] = notes

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if mem is not None:
        files += _write_memorisation(out, samples, mem_files)
    from ddpmkit.evaluation.report import write_json

    files.insert(0, write_json(out / "eval.json", report))
    return files


# ----------------------------------------------------------------------------- likelihood


def _likelihood(
    src: Source,
    args: argparse.Namespace,
    plan: Plan,
    data: ImageData,
    n: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Mean NLL bound (bits/dim) of the model on the first n images of ``data``."""
    from ddpmkit.data.images import to_model_range
    from ddpmkit.evaluation.likelihood import vlb_terms
    from ddpmkit.training.build import default_device
    from ddpmkit.training.sample_cmd import load_model

    model, sched, cfg, _ = load_model(src.path, raw=args.raw)
    device = default_device()
    model.to(device)
    sched_d = sched.to(device)
    n = min(n, len(data))
    strata = args.bpd_timesteps or None
    conditional = bool(plan.num_classes) and data.labels is not None
    gen = torch.Generator().manual_seed(0)
    totals, parts = [], {"prior_bpd": [], "vb_bpd": [], "decoder_bpd": []}  # type: ignore[var-annotated]
    log(f"NLL bound on {n} images ({strata or 'all'} timestep strata)")
    for lo in range(0, n, args.batch_size):
        hi = min(n, lo + args.batch_size)
        x0 = to_model_range(data.images[lo:hi]).to(device)
        y = data.labels[lo:hi].to(device) if conditional and data.labels is not None else None
        terms = vlb_terms(
            model,
            sched_d,
            x0,
            y=y,
            prediction=cfg.diffusion.prediction,
            num_timesteps_eval=strata,
            generator=gen,
        )
        totals.append(terms["total_bpd"].cpu())
        for k in parts:
            parts[k].append(terms[k].cpu())
    total = torch.cat(totals)
    std = float(total.std()) if n > 1 else 0.0
    return {
        "bpd": float(total.mean()),
        "bpd_stderr": std / n**0.5,
        **{k.replace("_bpd", "_bpd_mean"): float(torch.cat(v).mean()) for k, v in parts.items()},
        "num_images": n,
        "split": _split_name(plan, args.ref_split),
        "images": f"the first {n} images of the {plan.dataset} "
        f"{_split_name(plan, args.ref_split)} split",
        "timesteps": f"{strata} stratified timesteps (unbiased estimate of the bound)"
        if strata and strata < plan.num_steps - 1
        else f"all {plan.num_steps - 1} timesteps",
        "conditioning": "each image's true label (log p(x | y))" if conditional else "none",
        "weights": "raw" if args.raw else "EMA",
        "precision": "fp32",
    }


# ----------------------------------------------------------------------------- memorisation


def _memorisation(
    samples: Tensor,
    sample_feats: Tensor,
    plan: Plan,
    args: argparse.Namespace,
    ref: ImageData,
    ref_stats: Any,
    feats: _Features,
    cache: Path | None,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, Any], float | None]:
    from ddpmkit.data.images import dataset_fingerprint
    from ddpmkit.evaluation.memorisation import check_memorisation, summarise_distances
    from ddpmkit.evaluation.metrics import feature_statistics, frechet_distance
    from ddpmkit.evaluation.reference import reference_statistics

    train = _load_split(plan, "train", log)
    train_desc = f"{plan.dataset} {_split_name(plan, 'train')}: {train.source}"
    train_stats, train_cache, _ = reference_statistics(
        train.images,
        fingerprint=dataset_fingerprint(train),
        extractor_id=feats.identity,
        features_of=feats,
        folder=cache,
        description=train_desc,
        log=log,
    )
    log(f"nearest training image of {samples.shape[0]} samples among {len(train)}")
    m = check_memorisation(
        samples, train.images, sample_features=sample_feats, train_features=train_stats.features
    )
    assert m.feature_dist is not None and m.feature_index is not None
    n = int(samples.shape[0])
    distinct = plan.dataset not in SINGLE_SPLIT and args.ref_split == "test"
    info: dict[str, Any] = {
        "train_set": {
            "dataset": plan.dataset,
            "split": _split_name(plan, "train"),
            "size": len(train),
            "fingerprint": train_stats.info["fingerprint"],
            "features_cache": train_cache,
        },
        "pixel_distance": "L2 between images with pixel values in [0, 1]",
        "feature_distance": f"L2 between features of the {feats.name}",
        "samples_pixel": summarise_distances(m.pixel_dist),
        "samples_feature": summarise_distances(m.feature_dist),
        "nn_pixel_median": float(torch.quantile(m.pixel_dist, 0.5)),
        "nn_feature_median": float(torch.quantile(m.feature_dist, 0.5)),
        "exact_copies": int((m.pixel_dist == 0).sum()),
    }
    floor = None
    if distinct:
        k = min(n, len(ref))
        idx = _seeded_indices(len(ref), k)
        base = check_memorisation(
            ref.images[idx],
            train.images,
            sample_features=ref_stats.features[idx],
            train_features=train_stats.features,
        )
        assert base.feature_dist is not None
        info["test_images"] = k
        info["test_pixel"] = summarise_distances(base.pixel_dist)
        info["test_feature"] = summarise_distances(base.feature_dist)
        info["nn_pixel_median_test"] = float(torch.quantile(base.pixel_dist, 0.5))
        info["nn_feature_median_test"] = float(torch.quantile(base.feature_dist, 0.5))
        info["closer_than_any_test"] = int((m.pixel_dist < base.pixel_dist.min()).sum())
        real = train_stats.features[_seeded_indices(len(train), min(n, len(train)), seed=1)]
        mu, cov = feature_statistics(real)
        floor = frechet_distance(mu, cov, ref_stats.mu, ref_stats.cov)
    else:
        info["test_images"] = 0
        info["note"] = (
            "no held-out split (the reference is the training set): no test-image baseline"
        )
    order = m.closest(args.memorisation)
    info["closest"] = [
        {
            "sample": int(i),
            "train": int(m.pixel_index[i]),
            "pixel_distance": float(m.pixel_dist[i]),
            "train_by_feature": int(m.feature_index[i]),
            "feature_distance": float(m.feature_dist[i]),
        }
        for i in order
    ]
    info["figure"] = "nearest.png: each row a sample and its nearest training image, closest first"
    extra = {"m": m, "order": order, "train_images": train.images}
    return info, extra, floor


def _write_memorisation(out: Path, samples: Tensor, extra: dict[str, Any]) -> list[Path]:
    from ddpmkit.viz.grid import atomic_save, grid_with_row_labels

    m, order, train_images = extra["m"], extra["order"], extra["train_images"]
    pairs = torch.stack([samples[order], train_images[m.pixel_index[order]]], dim=1)
    pairs = pairs.reshape(-1, *samples.shape[1:])
    labels = [
        f"sample {int(i)} | train {int(m.pixel_index[i])}: {float(m.pixel_dist[i]):.3f}"
        for i in order
    ]
    upscale = max(1, 64 // int(samples.shape[2]))
    png = grid_with_row_labels(pairs, 2, labels, out / "nearest.png", upscale=upscale)

    def write_npz(f: Any) -> None:
        np.savez_compressed(
            f,
            pixel_distance=m.pixel_dist.numpy(),
            pixel_index=m.pixel_index.numpy(),
            feature_distance=m.feature_dist.numpy(),
            feature_index=m.feature_index.numpy(),
        )

    npz = atomic_save(out / "nearest.npz", write_npz)
    return [png, npz]
