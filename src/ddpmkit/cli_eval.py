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

This module is the command line (arguments, checks, orchestration, printing); the work is in
:mod:`ddpmkit.evaluation.sources` (reading SOURCE), :mod:`ddpmkit.evaluation.plan` (the
dataset to compare with), :mod:`ddpmkit.evaluation.image_eval` and
:mod:`ddpmkit.evaluation.toy_eval` (the metrics).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddpmkit.evaluation.image_eval import evaluate_images
from ddpmkit.evaluation.plan import IMAGE_DATASETS, MIN_SAMPLES, PR_K, TOYS, make_plan
from ddpmkit.evaluation.sources import open_source
from ddpmkit.evaluation.toy_eval import evaluate_toy
from ddpmkit.sampling import SAMPLERS
from ddpmkit.training.config import ConfigError

__all__ = ["evaluate", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand to ``sub``."""
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
        "--sampler",
        default=None,
        choices=list(SAMPLERS),
        help="default: the model's sample.sampler (and its steps and spacing), else dpmpp",
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
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the model's sample.guidance)",
    )
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
    """A progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    """The ``ddpm eval`` handler: evaluate, print the table, name the files written."""
    from ddpmkit.evaluation.report import format_table

    report, files = evaluate(args, log=_info)
    print(format_table(report), flush=True)
    for f in files:
        _info(f"wrote {f}")
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """One-line errors for out-of-range arguments, before anything is read."""
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
    if args.eta is not None:
        from ddpmkit.sample_settings import check_eta

        check_eta(args.eta, args.sampler or "dpmpp")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a folder")


def evaluate(
    args: argparse.Namespace, log: Callable[[str], None] = _info
) -> tuple[dict[str, Any], list[Path]]:
    """Run the whole evaluation of ``args`` (see :func:`register`); returns (report, files).

    Every check of the input happens before anything is written; files go to ``args.out``.
    """
    from ddpmkit.version import __version__

    _check_args(args)
    src = open_source(args, log)
    plan = make_plan(src, args)
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
        files = evaluate_toy(src, args, plan, report, notes, log)
    else:
        files = evaluate_images(src, args, plan, report, notes, log)
    return report, files
