"""Evaluation: sample-quality metrics, exact predictors (oracles), likelihood bounds.

The whole evaluation of a model or of samples, as ``ddpm eval`` runs it:
``report, files = evaluate("runs/fashion_mnist", EvalOptions(num=1000))``
(:func:`ddpmkit.evaluation.run.evaluate`, :class:`ddpmkit.evaluation.options.EvalOptions`).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ddpmkit.evaluation.options import EvalOptions
    from ddpmkit.evaluation.run import evaluate

_LAZY = {"EvalOptions": "ddpmkit.evaluation.options", "evaluate": "ddpmkit.evaluation.run"}


def __getattr__(name: str) -> Any:
    """The entry point, imported on first use: ``ddpmkit.evaluation.metrics`` and the other
    modules stay importable without loading models, datasets and samplers."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ddpmkit.evaluation' has no attribute {name!r}")


__all__ = ["EvalOptions", "evaluate"]
