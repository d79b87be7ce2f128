"""The whole evaluation of a SOURCE: sample quality, likelihood and memorisation, as ``ddpm eval``.

    >>> from ddpmkit.evaluation import EvalOptions, evaluate
    >>> report, files = evaluate("runs/fashion_mnist", EvalOptions(num=1000))
    >>> report["metrics"]["fd"], report["samples"]["sampler"]

SOURCE is a run, checkpoint or exported model folder (samples are drawn first, through
:func:`ddpmkit.load` with the run's own ``[sample]`` settings unless the options override them:
per-sample seeds, class-balanced labels for conditional models), an ``.npz`` with ``images``
uint8 (N, C, H, W) or (N, H, W, C) and optional ``labels`` (N,) (as written by ``ddpm sample``;
2-D toys: ``points`` (N, 2)), or a folder of images (PNG, JPEG, ...).

Images of a built-in dataset (fashion_mnist, mnist, digits) are compared in the feature space of
that dataset's classifier (:mod:`ddpmkit.evaluation.classifier`): Frechet distance to the
reference set, an Inception-Score analogue, k-NN precision and recall and, for conditional
models, the share of samples classified as the requested class. Other image folders get the
same statistics on the generic random-feature extractor, stated as such. 2-D toy models:
sliced Wasserstein distance and MMD against fresh data. Models of images also get the NLL bound
in bits/dim on real images, and every image evaluation a memorisation check (nearest training
image of every sample, in pixels and features; ``OUT/nearest.png`` shows the closest pairs).

Writes ``OUT/eval.json`` (the report: every number with what it depends on: number of samples,
EMA or raw weights, sampler and steps, reference set and its size, feature extractor),
``OUT/nearest.png`` and ``OUT/nearest.npz``. Reference statistics are cached (see
:mod:`ddpmkit.evaluation.reference`). Wrong input is a one-line ``ValueError``
(:class:`~ddpmkit.errors.ConfigError`, ``DatasetError`` or ``CheckpointError``), raised before
anything is written. The work is in :mod:`~ddpmkit.evaluation.sources` (reading SOURCE),
:mod:`~ddpmkit.evaluation.plan` (the dataset to compare with),
:mod:`~ddpmkit.evaluation.image_eval` and :mod:`~ddpmkit.evaluation.toy_eval` (the metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddpmkit.evaluation.image_eval import evaluate_images
from ddpmkit.evaluation.options import EvalOptions
from ddpmkit.evaluation.plan import make_plan
from ddpmkit.evaluation.sources import open_source
from ddpmkit.evaluation.toy_eval import evaluate_toy

__all__ = ["evaluate"]


def evaluate(
    source: str | Path,
    options: EvalOptions | None = None,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], list[Path]]:
    """Evaluate ``source`` with ``options`` (default: :class:`EvalOptions`'s defaults).

    Returns (report, files): the report is the dict written to ``options.out/eval.json``
    (``report["metrics"]`` holds the numbers, ``report["metric_info"]`` what each means), files
    the paths written, ``eval.json`` first. ``log`` receives the progress lines. Every check of
    the input happens before anything is written.
    """
    from ddpmkit.version import __version__

    opts = options if options is not None else EvalOptions()
    opts.check()
    src = open_source(source, log)
    if src.meta is not None and "text_encoder" in src.meta:
        return _evaluate_text(src, opts, log)
    if opts.per_prompt is not None:
        from ddpmkit.errors import ConfigError

        raise ConfigError("--per-prompt: only for text models (prompt adherence); use --num")
    plan = make_plan(src, opts)
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
        files = evaluate_toy(src, opts, plan, report, notes, log)
    else:
        files = evaluate_images(src, opts, plan, report, notes, log)
    return report, files


def _evaluate_text(
    src: Any, opts: EvalOptions, log: Callable[[str], None]
) -> tuple[dict[str, Any], list[Path]]:
    """A text model: prompt adherence on held-out prompts (captioned Fashion-MNIST only)."""
    from ddpmkit.errors import ConfigError
    from ddpmkit.evaluation.prompts import ADHERENCE_DATASETS, evaluate_prompts
    from ddpmkit.trained import load
    from ddpmkit.version import __version__

    name = src.meta.get("config", {}).get("data", {}).get("name")
    if name not in ADHERENCE_DATASETS:
        raise ConfigError(
            f"{src.path}: a text model of {name!r}; prompt adherence needs a model of "
            f"{' or '.join(ADHERENCE_DATASETS)} (its garments are classified)"
        )
    model = load(src.model_folder, raw=opts.raw)
    report: dict[str, Any] = {
        "ddpmkit_version": __version__,
        "source": {"kind": src.kind, "path": str(src.path), "model_folder": str(src.model_folder)},
        "dataset": name,
    }
    if "step" in src.meta:
        report["source"]["step"] = int(src.meta["step"])
    return report, evaluate_prompts(model, name, opts, report, log)
