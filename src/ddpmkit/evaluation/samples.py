"""Samples of a model SOURCE for ``ddpm eval``, drawn through :func:`ddpmkit.load`.

:func:`draw_samples` samples the model with the run's own settings (its ``[sample]``
section) unless the evaluation options override them, exactly as ``ddpm sample`` would
(per-sample seeds, class-balanced labels for conditional models), and reports the settings
used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ddpmkit.evaluation.plan import Plan
from ddpmkit.evaluation.sources import Source
from ddpmkit.trained import load
from ddpmkit.viz.grid import to_uint8

if TYPE_CHECKING:
    from ddpmkit.evaluation.options import EvalOptions

__all__ = ["draw_samples"]


def draw_samples(
    src: Source, opts: EvalOptions, plan: Plan, num: int, log: Callable[[str], None]
) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
    """(samples, labels or None, what was drawn) from the model at ``src.path``.

    Images come back as uint8 (N, C, H, W), as a samples file would hold them; 2-D points as
    float32 (N, D). ``opts`` holds the sampler, steps, spacing, schedule_from, eta, variance,
    guidance, seed, raw and batch_size options (None = the run's own; the run's own grid
    includes its ``[sample] schedule_file``).
    """
    model = load(src.path, raw=opts.raw)
    seed = int(opts.seed) if opts.seed is not None else 0
    settings = model.resolve_settings(
        sampler=opts.sampler,
        steps=opts.steps,
        spacing=opts.spacing,
        schedule_from=opts.schedule_from,
        guidance=opts.guidance,
        guidance_interval=opts.guidance_interval,
        eta=opts.eta,
        final_step=opts.final_step,
        variance=opts.variance,
    )
    labels = model.labels_for(num)  # class-balanced: sample i has class i mod K
    x = model.sample(
        num,
        labels=labels,
        settings=settings,
        seed=seed,
        batch_size=opts.batch_size,
        output="tensor",
        log=log,
    )
    assert isinstance(x, Tensor)
    samples = to_uint8(x) if model.is_image else x
    info: dict[str, Any] = {
        "num": num,
        "shape": list(samples.shape[1:]),
        "weights": "raw" if opts.raw else "EMA",
        **settings.as_dict(),
        "seed": seed,
        "labels": f"class-balanced: sample i has class i mod {plan.num_classes}"
        if labels is not None
        else "unconditional",
    }
    return samples, labels, info
