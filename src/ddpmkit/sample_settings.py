"""How a model is sampled: one settings type and one batched, seeded draw.

:class:`SampleSettings` owns the sampler defaults that every path used to restate
(``ddpm sample``, ``ddpm eval``, ``ddpm plot reverse``, the training previews): the sampler,
its number of steps and spacing (or an explicit ``timesteps`` grid), the classifier-free
guidance scale (and the noise interval it applies in) and eta. A run's ``[sample]`` section is
the default of every path that samples it (:meth:`SampleSettings.from_section`); flags
override single fields (:meth:`SampleSettings.override`), and
:meth:`SampleSettings.describe` is the log line that says what was used and where it came from.

:func:`draw` runs a sampler over batches with one seed per sample, so sample i is the same
whatever the batch size or the number drawn (its initial noise and, for stochastic samplers,
every step's noise come from ``seed + i``), under bf16 autocast when asked, with the x_0
clipping of the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from ddpmkit.errors import SettingsError
from ddpmkit.sampling import (
    DEFAULT_SPACING,
    DEFAULT_STEPS,
    SAMPLERS,
    SPACINGS,
    STOCHASTIC_ETA,
    VARIANCES,
    Callback,
    initial_noise,
    sampling_timesteps,
)
from ddpmkit.sampling_core import FINAL_STEPS, Guidance, _check_final, make_timesteps
from ddpmkit.schedule import NoiseSchedule

__all__ = ["SampleSettings", "SettingsError", "check_eta", "draw"]


def check_eta(eta: float, sampler: str) -> None:
    """eta in [0, 1], and nonzero only for the samplers whose noise it sets (ddim, dpmpp)."""
    if not 0.0 <= eta <= 1.0:
        raise SettingsError("eta", f"must be in [0, 1], got {eta}")
    if eta != 0.0 and sampler not in STOCHASTIC_ETA:
        raise SettingsError(
            "eta", "applies to sampler ddim or dpmpp; ddpm's noise is set by its variance"
        )


@dataclass(frozen=True)
class SampleSettings:
    """Sampler, time grid, guidance and eta of one sampling call.

    ``steps``/``spacing`` None mean the sampler's defaults (``DEFAULT_STEPS``,
    ``DEFAULT_SPACING``); ``timesteps`` (strictly decreasing indices in [0, T)) replaces both.
    ``guidance_interval`` (sigma_lo, sigma_hi): guide only at steps whose noise level
    sigma_t = sqrt((1 - abar_t) / abar_t) lies in (sigma_lo, sigma_hi] (Kynkaanniemi et al.
    2024; :class:`~ddpmkit.sampling_core.Guidance`); None = every step.
    ``schedule_file`` names the ``ddpm schedule`` file that ``sampler`` and ``timesteps`` were
    read from (the log line and reports say it; :func:`ddpmkit.trained.load` reads it); a
    flag that changes the grid or the sampler drops it.
    ``final_step`` is the step from the last timestep to clean data: "denoise" (x_0 = D, the
    default; right for 8-bit images) or "ode" (the trapezoidal probability-flow step, for
    continuous data; :func:`~ddpmkit.sampling_core.final_x0`).
    ``variance`` is DDPM's reverse variance (sampler "ddpm" only): None = the model's own
    (learned for a learned-variance model, else beta), "beta" (Ho et al.'s sigma_t^2 =
    beta_t), "posterior" (beta~, the better fixed choice for short chains:
    benchmarks/learned_variance.py) or "learned".
    ``origin`` is prose for the log line: where the values came from.
    """

    sampler: str = "dpmpp"
    steps: int | None = None
    spacing: str | None = None
    timesteps: tuple[int, ...] | None = None
    guidance: float = 1.0
    guidance_interval: tuple[float, float] | None = None
    eta: float = 0.0
    schedule_file: str | None = None
    final_step: str = "denoise"
    variance: str | None = None
    origin: str = "ddpmkit's defaults"

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> SampleSettings:
        """The settings a run's ``[sample]`` section names (missing keys: the defaults)."""
        if not section:
            return cls()
        return cls(
            sampler=str(section.get("sampler", cls.sampler)),
            steps=int(section["steps"]) if section.get("steps") else None,
            spacing=str(section["spacing"]) if section.get("spacing") else None,
            guidance=float(section.get("guidance", 1.0)),
            guidance_interval=_interval(section.get("guidance_interval")),
            eta=float(section.get("eta", 0.0)),
            final_step=str(section.get("final_step", "denoise")),
            variance=str(section["variance"]) if section.get("variance") else None,
            origin="the run's [sample] section",
        )

    def override(self, **flags: Any) -> SampleSettings:
        """These settings with the given non-None values replacing theirs.

        A new sampler drops steps/spacing that were not given with it: 20 log-SNR steps of
        DPM-Solver++ are not a sensible grid for DDPM. ``timesteps`` drops steps and spacing;
        any of them drops ``schedule_file`` (the grid is no longer the file's).
        """
        given = {k: v for k, v in flags.items() if v is not None}
        unknown = set(given) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown sampling settings {sorted(unknown)}")
        if not given:
            return self
        new = self
        if "sampler" in given and given["sampler"] != self.sampler:
            new = replace(new, steps=None, spacing=None, timesteps=None, schedule_file=None)
        if "steps" in given or "spacing" in given:
            new = replace(new, timesteps=None, schedule_file=None)
        if "guidance_interval" in given:
            given["guidance_interval"] = _interval(given["guidance_interval"])
        if "timesteps" in given:
            given["timesteps"] = tuple(int(t) for t in given["timesteps"])
            new = replace(new, steps=None, spacing=None, schedule_file=None)
        named = ", ".join(sorted(k for k in given if k != "origin"))
        origin = given.pop("origin", f"{self.origin}, with {named} given")
        return replace(new, **given, origin=origin)

    def resolve(self, schedule: NoiseSchedule, *, conditional: bool) -> SampleSettings:
        """Concrete, checked settings for a model: steps and spacing filled in."""
        if self.sampler not in SAMPLERS:
            raise SettingsError(
                "sampler", f"{self.sampler!r} is not a sampler; expected one of {list(SAMPLERS)}"
            )
        check_eta(self.eta, self.sampler)
        if self.variance is not None:
            if self.variance not in VARIANCES:
                raise SettingsError(
                    "variance", f"{self.variance!r} is not allowed; expected one of {VARIANCES}"
                )
            if self.sampler != "ddpm":
                raise SettingsError(
                    "variance", f"applies to sampler ddpm only (the {self.sampler} solver has none)"
                )
        if self.final_step not in FINAL_STEPS:
            raise SettingsError(
                "final_step", f"{self.final_step!r} is not allowed; expected one of {FINAL_STEPS}"
            )
        if self.guidance != 1.0 and not conditional:
            raise SettingsError(
                "guidance", f"{self.guidance} needs a class-conditional model; this one is not"
            )
        if self.guidance_interval is not None:
            lo, hi = self.guidance_interval
            if not 0.0 <= lo < hi:
                raise SettingsError(
                    "guidance_interval", f"need 0 <= sigma_lo < sigma_hi, got ({lo:g}, {hi:g}]"
                )
        T = schedule.num_steps
        if self.timesteps is not None:
            try:
                ts = sampling_timesteps(schedule, None, "trailing", self.timesteps)
            except ValueError as e:
                raise SettingsError("timesteps", str(e).removeprefix("timesteps: ")) from None
            return replace(self, steps=len(ts), spacing=None, timesteps=tuple(ts))._final_fits(ts)
        default = DEFAULT_STEPS[self.sampler]
        steps = self.steps if self.steps is not None else min(default or T, T)
        if not 1 <= steps <= T:
            raise SettingsError("steps", f"must be in [1, {T}], got {steps}")
        spacing = self.spacing or DEFAULT_SPACING[self.sampler]
        if spacing not in SPACINGS:
            raise SettingsError(
                "spacing", f"{spacing!r} is not allowed; expected one of {SPACINGS}"
            )
        done = replace(self, steps=steps, spacing=spacing)
        if self.final_step == "denoise":  # any grid will do: no need to build it
            return done
        return done._final_fits(make_timesteps(schedule, steps, spacing))

    def _final_fits(self, ts: Sequence[int]) -> SampleSettings:
        """These settings, if their final step suits the grid ``ts`` (``_check_final``)."""
        try:
            _check_final(self.final_step, ts)
        except ValueError as e:
            raise SettingsError("final_step", str(e).removeprefix("final_step=")) from None
        return self

    def guidance_scale(self) -> float | Guidance:
        """What the samplers' ``guidance_scale`` takes: w, or w in the noise interval."""
        if self.guidance_interval is None:
            return self.guidance
        return Guidance(self.guidance, *self.guidance_interval)

    def describe(self) -> str:
        """One line: what a sampling call uses and where the values came from."""
        if self.timesteps is not None and self.schedule_file is not None:
            grid = f"{len(self.timesteps)} timesteps from {self.schedule_file}"
        elif self.timesteps is not None:
            grid = f"{len(self.timesteps)} given timesteps"
        else:
            grid = f"{self.steps or 'default'} {self.spacing or 'default'} steps"
        guide = f"guidance {self.guidance:g}"
        if self.guidance_interval is not None and self.guidance != 1.0:
            lo, hi = self.guidance_interval
            guide += f" at sigma in ({lo:g}, {hi:g}]"
        parts = [self.sampler, grid, guide]
        if self.sampler in STOCHASTIC_ETA:
            parts.append(f"eta {self.eta:g}")
        if self.final_step != "denoise":
            parts.append(f"{self.final_step} final step")
        if self.variance is not None:
            parts.append(f"variance {self.variance}")
        return f"{', '.join(parts)} ({self.origin})"

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (reports, ``.npz`` metadata)."""
        d: dict[str, Any] = {
            "sampler": self.sampler,
            "steps": self.steps,
            "spacing": self.spacing,
            "guidance": self.guidance,
        }
        if self.guidance_interval is not None:
            d["guidance_interval"] = list(self.guidance_interval)
        if self.timesteps is not None:
            d["timesteps"] = list(self.timesteps)
        if self.schedule_file is not None:
            d["schedule_file"] = self.schedule_file
        if self.sampler in STOCHASTIC_ETA:
            d["eta"] = self.eta
        if self.final_step != "denoise":
            d["final_step"] = self.final_step
        if self.variance is not None:
            d["variance"] = self.variance
        return d


def draw(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    settings: SampleSettings,
    *,
    shape: Sequence[int],
    num: int,
    labels: Tensor | None = None,
    seed: int = 0,
    prediction: str = "eps",
    clip_x0: float | None = None,
    bf16: bool = False,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    callback: Callback | None = None,
    log: Callable[[str], None] | None = None,
) -> Tensor:
    """``num`` samples of shape ``shape`` (float32, on the CPU), sample i seeded by seed + i.

    ``settings`` must be resolved (:meth:`SampleSettings.resolve`). ``labels`` (one per sample)
    condition a class-conditional network; ``callback`` sees every step of every batch.
    """
    if num < 1:
        raise SettingsError("num", f"must be >= 1, got {num}")
    if batch_size < 1:
        raise SettingsError("batch_size", f"must be >= 1, got {batch_size}")
    if labels is not None and int(labels.shape[0]) != num:
        raise ValueError(f"got {int(labels.shape[0])} labels for {num} samples")
    device = torch.device(device)
    sampler = SAMPLERS[settings.sampler]
    extra: dict[str, Any] = {"clip_x0": clip_x0} if clip_x0 is not None else {}
    if settings.sampler in STOCHASTIC_ETA:
        extra["eta"] = settings.eta
    if settings.final_step != "denoise":
        extra["final_step"] = settings.final_step
    if settings.variance is not None:
        extra["variance"] = settings.variance
    if settings.timesteps is not None:
        extra["timesteps"] = list(settings.timesteps)
    else:
        extra["num_steps"] = settings.steps
        extra["spacing"] = settings.spacing
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    sched = schedule.to(device)
    chunks = []
    for lo in range(0, num, batch_size):
        hi = min(num, lo + batch_size)
        seeds = [seed + i for i in range(lo, hi)]  # sample i is the same whatever the batch
        x_T = initial_noise((hi - lo, *shape), seeds=seeds).to(device)
        with autocast:
            x = sampler(
                model,
                sched,
                x_T,
                y=None if labels is None else labels[lo:hi].to(device),
                guidance_scale=settings.guidance_scale(),
                seeds=seeds,
                callback=callback,
                prediction=prediction,
                **extra,
            )
        chunks.append(x.float().cpu())
        if log is not None:
            log(f"sampled {hi}/{num}")
    return torch.cat(chunks)


def _interval(value: Any) -> tuple[float, float] | None:
    """A guidance interval from a config value or flag: [lo, hi] / "lo,hi" -> (lo, hi);
    "all", [] or None -> None (every step)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("all", "")):
        return None
    if isinstance(value, str):
        value = value.split(",")
    try:
        vals = tuple(math.inf if str(v).strip().lower() == "inf" else float(v) for v in value)
    except (TypeError, ValueError):
        raise SettingsError(
            "guidance_interval", f"{value!r} is not two numbers sigma_lo,sigma_hi (or 'all')"
        ) from None
    if len(vals) == 0:
        return None
    if len(vals) != 2:
        raise SettingsError(
            "guidance_interval", f"needs two numbers sigma_lo,sigma_hi, got {len(vals)}"
        )
    return (vals[0], vals[1])
