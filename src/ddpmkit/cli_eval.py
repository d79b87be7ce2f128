"""``ddpm eval SOURCE``: the command line of :func:`ddpmkit.evaluation.evaluate`.

    ddpm eval RUN_OR_CHECKPOINT [--num 1000] [--sampler dpmpp] [--steps 20] [--raw] ...
    ddpm eval samples.npz --dataset fashion_mnist
    ddpm eval images/ --dataset folder --root my_training_images/

SOURCE is a run, checkpoint or exported model folder (samples are drawn first, by the same code
as ``ddpm sample``), an ``.npz`` of samples or a folder of images; what is measured, and the
files written to ``OUT`` (``eval.json``, ``nearest.png``, ``nearest.npz``), are described in
:mod:`ddpmkit.evaluation.run`. Wrong input is a one-line error, and nothing is written.

This module is only the command line: the flags (one per field of
:class:`~ddpmkit.evaluation.options.EvalOptions`, same names and defaults), building the
options from them (:func:`options_from_args`), and printing the table.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from ddpmkit.evaluation.options import REF_SPLITS, EvalOptions
from ddpmkit.evaluation.plan import IMAGE_DATASETS, TOYS
from ddpmkit.sampling import SAMPLERS, VARIANCES

__all__ = ["options_from_args", "register"]


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
        "--per-prompt",
        type=int,
        default=None,
        metavar="N",
        help="text models: samples per held-out prompt of the adherence report (default 4; "
        "with --num: --num spread over the prompts)",
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
        "--schedule-from",
        default=None,
        metavar="FILE",
        help="a grid written by `ddpm schedule` (JSON): its timesteps and its sampler, instead "
        "of --steps/--spacing (default: the model's sample.schedule_file, if it names one)",
    )
    p.add_argument(
        "--eta", type=float, default=None, help="noise in [0, 1] for ddim and dpmpp (default 0)"
    )
    p.add_argument(
        "--final-step",
        choices=("denoise", "ode"),
        default=None,
        help="the last step to clean data: denoise = the x_0 estimate, ode = the trapezoidal "
        "probability-flow step for continuous data (default: the model's sample.final_step)",
    )
    p.add_argument(
        "--variance",
        choices=VARIANCES,
        default=None,
        help="DDPM's reverse variance (--sampler ddpm only): beta, posterior or learned "
        "(default: the model's sample.variance, else its learned variances if it has them, "
        "else beta)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the model's sample.guidance)",
    )
    p.add_argument(
        "--guidance-interval",
        default=None,
        metavar="LO,HI",
        help="guide only at noise levels sigma in (LO, HI]; 'all' = every step "
        "(default: the model's sample.guidance_interval)",
    )
    p.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")
    p.add_argument("--seed", type=int, default=None, help="sample i uses seed + i (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="sampling/feature batch size")
    p.add_argument(
        "--ref-split",
        default="test",
        choices=list(REF_SPLITS),
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


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    """The :class:`EvalOptions` of parsed ``ddpm eval`` arguments (one flag per field)."""
    return EvalOptions(**{f.name: getattr(args, f.name) for f in fields(EvalOptions)})


def _run(args: argparse.Namespace) -> int:
    """The ``ddpm eval`` handler: evaluate, print the table, name the files written."""
    from ddpmkit.evaluation.report import format_table
    from ddpmkit.evaluation.run import evaluate

    report, files = evaluate(args.source, options_from_args(args), log=_info)
    print(format_table(report), flush=True)
    for f in files:
        _info(f"wrote {f}")
    return 0
