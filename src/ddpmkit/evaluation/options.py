"""The options of an evaluation: one frozen dataclass, the same for Python and ``ddpm eval``.

:class:`EvalOptions` has one field per flag of ``ddpm eval`` (``--batch-size`` is
``batch_size``), with the same defaults; the command line builds it from its parsed arguments
and nothing else. :meth:`EvalOptions.check` is every check that needs no input read; its
one-line :class:`~ddpmkit.errors.ConfigError` messages name an option by its flag spelling
(``--num: must be >= 4, got 2``), the same text for library callers and the command line.

    >>> from ddpmkit.evaluation import EvalOptions, evaluate
    >>> report, files = evaluate("runs/fashion_mnist", EvalOptions(num=1000, out="eval_fm"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ddpmkit.errors import ConfigError
from ddpmkit.evaluation.plan import MIN_SAMPLES, PR_K
from ddpmkit.sampling import Sampler, Spacing

__all__ = ["REF_SPLITS", "EvalOptions"]

REF_SPLITS = ("test", "train")
RefSplit = Literal["test", "train"]


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate a SOURCE (see :func:`ddpmkit.evaluation.evaluate`).

    Sampling options (``sampler`` .. ``seed``, ``raw``, ``bpd_images``) apply to a model SOURCE
    only; giving one for samples already drawn is an error. For those, None means the model's
    own setting (its ``[sample]`` section) where it has one, else ddpmkit's default.
    """

    # What the samples should match: a built-in image dataset, "folder" or a 2-D toy.
    # None: the dataset a model SOURCE was trained on (required for samples files/folders).
    dataset: str | None = None
    # Folder of real images for dataset "folder". None: a model's own data.root.
    root: str | Path | None = None
    # Samples to draw from a model (None: 1000); for samples given: use the first N (None: all).
    num: int | None = None
    # Text models: samples per held-out prompt of the adherence report. None: --num spread over
    # the prompts if --num is given, else 4 (evaluation/prompts.py: DEFAULT_PER_PROMPT).
    per_prompt: int | None = None
    # Sampler (ddpm, ddim, dpmpp). None: the model's sample.sampler (with its steps and
    # spacing); a different sampler drops the model's steps and spacing.
    sampler: Sampler | None = None
    # Sampling steps. None: the model's sample.steps, else the sampler's default (dpmpp 20,
    # ddim 50, ddpm T).
    steps: int | None = None
    # Timestep spacing. None: the model's sample.spacing, else logsnr for dpmpp, trailing else.
    spacing: Spacing | None = None
    # A `ddpm schedule` file (JSON): its sampler and timesteps instead of steps/spacing. None:
    # the model's sample.schedule_file if it names one and steps/spacing are not given.
    schedule_from: str | Path | None = None
    # Noise in [0, 1] of ddim and dpmpp. None: the model's sample.eta, else 0.
    eta: float | None = None
    # The last step to clean data: "denoise" (x_0 estimate) or "ode" (trapezoidal, for
    # continuous data). None: the model's sample.final_step, else denoise.
    final_step: str | None = None
    # DDPM's reverse variance (sampler ddpm only): "beta", "posterior" or "learned". None:
    # the model's sample.variance, else its learned variances if it has them, else beta.
    variance: str | None = None
    # Classifier-free guidance scale. None: the model's sample.guidance, else 1.
    guidance: float | None = None
    # Guide only at noise levels sigma in (lo, hi] ("lo,hi", or "all" = every step). None: the
    # model's sample.guidance_interval.
    guidance_interval: str | None = None
    # Sample with the raw weights instead of the EMA.
    raw: bool = False
    # Sample i uses seed + i. None: 0.
    seed: int | None = None
    # Batch size of sampling, feature extraction and the likelihood bound.
    batch_size: int = 256
    # Reference set of FD and precision/recall: "test" or "train" (digits and folders have
    # one split, both names give it).
    ref_split: RefSplit = "test"
    # Use a seeded subset of N reference images. None: all (2-D toys: as many as samples).
    ref_num: int | None = None
    # NLL bound in bits/dim on the first N reference images (models of images only).
    # None: 100; 0: skip.
    bpd_images: int | None = None
    # Timestep strata of the bound (unbiased estimate); 0: all T - 1 timesteps.
    bpd_timesteps: int = 50
    # Nearest-training-image check; show the K closest pairs. 0: skip the check.
    memorisation: int = 16
    # Reference statistics cache. None: $DDPMKIT_CACHE/ref_stats, else ~/.cache/ddpmkit/ref_stats.
    cache_dir: str | Path | None = None
    # Neither read nor write the reference statistics cache.
    no_cache: bool = False
    # Output folder of eval.json, nearest.png and nearest.npz (relative to the working folder).
    out: str | Path = "eval"

    def check(self) -> None:
        """One-line :class:`~ddpmkit.errors.ConfigError` for out-of-range options, before
        anything is read (checks that need the SOURCE come later, in
        :func:`~ddpmkit.evaluation.plan.make_plan` and the sampler)."""
        if self.num is not None and self.num < MIN_SAMPLES:
            raise ConfigError(f"--num: must be >= {MIN_SAMPLES}, got {self.num}")
        if self.per_prompt is not None and self.per_prompt < 1:
            raise ConfigError(f"--per-prompt: must be >= 1, got {self.per_prompt}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size: must be >= 1, got {self.batch_size}")
        if self.ref_split not in REF_SPLITS:
            raise ConfigError(
                f"--ref-split: must be one of {', '.join(REF_SPLITS)}, got {self.ref_split!r}"
            )
        if self.ref_num is not None and self.ref_num <= PR_K:
            raise ConfigError(f"--ref-num: must be > {PR_K}, got {self.ref_num}")
        if self.bpd_images is not None and self.bpd_images < 0:
            raise ConfigError(f"--bpd-images: must be >= 0, got {self.bpd_images}")
        if self.bpd_timesteps < 0:
            raise ConfigError(f"--bpd-timesteps: must be >= 0, got {self.bpd_timesteps}")
        if self.memorisation < 0:
            raise ConfigError(f"--memorisation: must be >= 0, got {self.memorisation}")
        grid = [f"--{k}" for k in ("steps", "spacing") if getattr(self, k) is not None]
        if self.schedule_from is not None and grid:
            raise ConfigError(f"--schedule-from: replaces {'/'.join(grid)}; give one or the other")
        if self.eta is not None:
            from ddpmkit.sample_settings import check_eta

            check_eta(self.eta, self.sampler or "dpmpp")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out: {out} exists and is not a folder")
