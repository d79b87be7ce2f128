"""The shared ground of the samplers: names, time grids, noise, the guided model call.

Everything here is re-exported by :mod:`ddpmkit.sampling` (the public module, whose samplers
and registry sit on top), and used by :mod:`ddpmkit.solvers` (the higher-order solvers), so
that the registry in ``sampling`` can import the solvers without a circular import. The
layering is sampling_core -> solvers -> sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from ddpmkit.diffusion import model_output_to_eps_x0, split_variance_output
from ddpmkit.schedule import NoiseSchedule

__all__ = [
    "LAMBDA_MIN",
    "NULL_LABEL",
    "SPACINGS",
    "FINAL_STEPS",
    "Callback",
    "FinalStep",
    "Guidance",
    "Spacing",
    "StepInfo",
    "final_x0",
    "initial_noise",
    "make_timesteps",
    "sampling_timesteps",
]

NULL_LABEL = -1
Spacing = Literal["leading", "trailing", "linspace", "quadratic", "logsnr", "karras"]
SPACINGS: tuple[str, ...] = get_args(Spacing)
FinalStep = Literal["denoise", "ode"]
FINAL_STEPS: tuple[str, ...] = get_args(FinalStep)
# Lower end of the log-SNR range that ``logsnr``/``karras`` spread their steps over (diffusers'
# ``lambda_min_clipped`` for the cosine schedule). The cosine schedule's last step (beta clipped
# at 0.999) drops lambda from -6.5 to -9.9; spacing over that whole range put 8 of 20 steps on
# t >= 991, where the signal is below 1% (measured in docs/samplers.md). The linear schedule ends
# at lambda = -5.06 and is unaffected.
LAMBDA_MIN = -5.1


@dataclass(frozen=True)
class StepInfo:
    """What a sampler reports after each step, for trajectories and progress bars."""

    index: int  # 0-based number of the step just taken
    num_steps: int  # total number of steps
    t: int  # timestep index of the input x_t of this step
    x_t: Tensor  # state after the step (x at the next, smaller timestep; x_0 after the last)
    x0_pred: Tensor  # the model's estimate of x_0 at this step


Callback = Callable[[StepInfo], None]


# ----------------------------------------------------------------------------- timesteps


def make_timesteps(
    schedule: NoiseSchedule, num_steps: int | None = None, spacing: str = "trailing"
) -> list[int]:
    """Strictly decreasing timestep indices in [0, T) that a sampler visits, length num_steps.

    Spacings (all include t = T-1 except ``leading``, which is the DDIM paper's original):
      leading: 0, k, 2k, ... (k = T // n), reversed (DDIM's choice; misses the noisiest steps).
      trailing: T-1, T-1-k', ... rounded from arange(T, 0, -T/n) - 1 (Lin et al. 2024).
      linspace: round(linspace(0, T-1, n)).
      quadratic: T * linspace(0, sqrt(0.8), n)^2 (DDIM paper's quadratic choice), T-1 kept.
      logsnr: uniform in log-SNR lambda = log(abar / (1 - abar)) / 2 between lambda(0) and
        max(lambda(T-1), LAMBDA_MIN) (DPM-Solver's choice, with diffusers' clip), T-1 kept.
      karras: sigma = sqrt((1 - abar)/abar) spaced with rho = 7 (Karras et al. 2022, Eq. 5)
        over the same range, each mapped to the nearest timestep, T-1 kept.
    Collisions created by rounding (several targets on one integer step, e.g. log-SNR spacing
    where the schedule is steep) are resolved by moving steps to the nearest free index, so
    exactly n distinct steps are always returned.
    """
    T = schedule.num_steps
    n = T if num_steps is None else int(num_steps)
    if n < 1 or n > T:
        raise ValueError(f"num_steps must be in [1, {T}] for this schedule, got {num_steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {list(SPACINGS)}")
    if n == T:
        return list(range(T - 1, -1, -1))
    if spacing == "leading":
        k = T // n
        ts = [i * k for i in range(n)]
    elif spacing == "trailing":
        ts = [round(T - i * T / n) - 1 for i in range(n)]
    elif spacing == "linspace":
        ts = [round(v) for v in torch.linspace(0, T - 1, n, dtype=torch.float64).tolist()]
    elif spacing == "quadratic":
        ts = [int(v) for v in (torch.linspace(0, math.sqrt(T * 0.8), n, dtype=torch.float64) ** 2)]
        ts[-1] = T - 1
    else:
        abar = schedule.alphas_bar.double()
        log_sigma = 0.5 * torch.log((1 - abar) / abar)  # = -lambda, increasing in t, shape (T,)
        lo, hi = float(log_sigma[0]), min(float(log_sigma[-1]), -LAMBDA_MIN)
        if spacing == "logsnr":
            targets = torch.linspace(lo, hi, n, dtype=torch.float64)
        else:  # karras
            rho = 7.0
            smin, smax = math.exp(lo), math.exp(hi)
            ramp = torch.linspace(0, 1, n, dtype=torch.float64)
            sig = (smin ** (1 / rho) + ramp * (smax ** (1 / rho) - smin ** (1 / rho))) ** rho
            targets = sig.log()
        ts = [int(torch.argmin((log_sigma - v).abs())) for v in targets]
        ts[-1] = T - 1  # x_T is drawn at the last timestep: always start there
    return _distinct_descending(ts, T)


def sampling_timesteps(
    schedule: NoiseSchedule,
    num_steps: int | None,
    spacing: str,
    timesteps: Sequence[int] | None = None,
) -> list[int]:
    """The time grid a sampler visits: ``timesteps`` if given, else ``make_timesteps``.

    ``timesteps`` is an explicit grid (as k-diffusion's samplers take ``sigmas``): strictly
    decreasing integer indices in [0, T), e.g. a searched or stored schedule. It replaces
    ``num_steps`` and ``spacing``, which are then not used (the samplers' ``num_steps``
    defaults cannot be told from a caller's value).
    """
    if timesteps is None:
        return make_timesteps(schedule, num_steps, spacing)
    T = schedule.num_steps
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("timesteps: empty; give at least one timestep index")
    if any(t != v for t, v in zip(ts, timesteps, strict=True)):
        raise ValueError(f"timesteps: must be integers, got {list(timesteps)!r}")
    if not all(0 <= t < T for t in ts):
        raise ValueError(f"timesteps: every index must be in [0, {T}), got {ts}")
    if any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
        raise ValueError(f"timesteps: must be strictly decreasing, got {ts}")
    return ts


def _distinct_descending(ts: list[int], T: int) -> list[int]:
    """n distinct indices in [0, T) close to the given ones, in decreasing order (needs n <= T)."""
    asc = sorted(min(max(int(v), 0), T - 1) for v in ts)
    n = len(asc)
    for i in range(1, n):  # push up collisions ...
        asc[i] = max(asc[i], asc[i - 1] + 1)
    for i in range(n - 1, -1, -1):  # ... and keep the top ones inside [0, T)
        asc[i] = min(asc[i], T - 1 - (n - 1 - i))
        if i + 1 < n:
            asc[i] = min(asc[i], asc[i + 1] - 1)
    return asc[::-1]


def initial_noise(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """x_T ~ N(0, I) of the given shape; with ``seeds`` (one per sample) row i uses seeds[i]."""
    gens = _per_sample_generators(seeds, shape[0])
    return _randn(tuple(shape), generator, gens, device)


# ----------------------------------------------------------------------------- helpers


def _per_sample_generators(seeds: Sequence[int] | None, batch: int) -> list[torch.Generator] | None:
    if seeds is None:
        return None
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}; give one seed per sample")
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _randn(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    gens: list[torch.Generator] | None,
    device: torch.device | str,
) -> Tensor:
    # Noise is drawn on the CPU so results do not depend on the device's RNG implementation.
    if gens is not None:
        return torch.stack([torch.randn(shape[1:], generator=g) for g in gens]).to(device)
    return torch.randn(shape, generator=generator).to(device)


def final_x0(x_t: Tensor, x0: Tensor, abar_t: float, final_step: str = "denoise") -> Tensor:
    """The last step of a sampler: from x_t at its last timestep t to clean data (sigma = 0).

    With y = x / sqrt(abar) and sigma = sqrt((1 - abar) / abar) the probability-flow ODE is
    dy/dsigma = (y - D(y; sigma)) / sigma (Karras et al. 2022, Eq. 4 with s = 1), D the x_0
    estimate (Tweedie's E[x_0 | x_t]). Over [0, sigma_t]:

    * ``denoise`` (every sampler's usual end, and the default): one Euler step,
      x_0 = D(x_t). For data that are locally Gaussian with std s it shrinks each sample's
      distance to its local mean by s / sqrt(s^2 + sigma_t^2), i.e. by a factor
      1 - (sigma_t / s)^2 / 2 + O((sigma_t / s)^4) (2% for s = 0.05 at the linear
      schedule's sigma_0 = 0.010). Right for data that are sharp at the scale sigma_t, such as
      8-bit images (levels 0.0078 apart in [-1, 1]): there the exact answer is D itself.
    * ``ode``: the trapezoidal (Heun) step, with the ODE's velocity at sigma = 0 taken as its
      limit 0 (it is sigma (y - mu) / s^2 -> 0 for a density that is smooth at the scale
      sigma_t): y_0 = y_t - sigma_t ((y_t - D) / sigma_t + 0) / 2, i.e.

          x_0 = (x_t / sqrt(abar_t) + D(x_t)) / 2.

      For the locally Gaussian data above this is the exact ODE map up to
      (sigma_t / s)^4 / 8 (0.02% at sigma_t / s = 0.2): right for continuous data (2-D toys,
      measurements) whose structure is much wider than the last noise level. For data that
      are sharp at that scale it leaves about sigma_t / 2 of noise.
    """
    _check_final(final_step)
    if final_step == "ode":
        return 0.5 * (x_t / math.sqrt(abar_t) + x0)
    return x0


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance scale w, applied only where sigma_t lies in (sigma_lo, sigma_hi].

    sigma_t = sqrt((1 - abar_t) / abar_t) is the EDM noise level of timestep t. Outside the
    interval the conditional output is used alone (w = 1), which also saves the unconditional
    half of the model call. Kynkaanniemi et al. 2024 ("Applying guidance in a limited interval
    improves sample and distribution quality in diffusion models"): guidance at high noise
    levels pulls samples towards a few class prototypes (lower recall, worse FD), at low noise
    levels it changes little; they guide in the middle. ``Guidance(w)`` guides at every step.
    Every sampler's ``guidance_scale`` takes a float or a ``Guidance``.
    """

    scale: float
    sigma_lo: float = 0.0
    sigma_hi: float = math.inf

    def __post_init__(self) -> None:
        if not 0.0 <= self.sigma_lo < self.sigma_hi:
            raise ValueError(
                f"guidance interval: need 0 <= sigma_lo < sigma_hi, got "
                f"({self.sigma_lo:g}, {self.sigma_hi:g}]"
            )

    def at(self, schedule: NoiseSchedule, t: int) -> float:
        """The scale used at timestep t: w inside (sigma_lo, sigma_hi], else 1."""
        ab = _abar(schedule, t)
        sigma = math.sqrt((1.0 - ab) / ab) if ab > 0 else math.inf
        return self.scale if self.sigma_lo < sigma <= self.sigma_hi else 1.0


def _guided_eps_x0_v(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x: Tensor,
    t: int,
    y: Tensor | None,
    guidance_scale: float | Guidance,
    prediction: str,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Model call at timestep t -> (eps, x0, v), with classifier-free guidance when y is given.

    v: the variance values of a learned-variance model (output [prediction; v], twice the
    channels along dim 1; :func:`ddpmkit.diffusion.split_variance_output`), else None. Guidance
    combines the prediction halves; v is the conditional branch's (as improved-diffusion's and
    GLIDE's guided samplers do: the unconditional variance is not used).
    """
    b = x.shape[0]
    tt = torch.full((b,), t, dtype=torch.long, device=x.device)
    if isinstance(guidance_scale, Guidance):
        guidance_scale = guidance_scale.at(schedule, t)
    if y is None:
        out, v = split_variance_output(model(x, tt).float(), x)
    elif guidance_scale == 1.0:
        out, v = split_variance_output(model(x, tt, y).float(), x)
    else:
        # One batched call for both branches: [cond; uncond].
        null = torch.full_like(y, NULL_LABEL)
        both = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null])).float()
        out_c, v = split_variance_output(both[:b], x)
        out_u, _ = split_variance_output(both[b:], x)
        out = out_u + guidance_scale * (out_c - out_u)
    # Guidance is applied to the raw output; for eps/v/x0 it is linear, so it equals guiding eps.
    eps, x0 = model_output_to_eps_x0(schedule, x, tt, out, prediction)
    return eps, x0, v


def _guided_eps_x0(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x: Tensor,
    t: int,
    y: Tensor | None,
    guidance_scale: float | Guidance,
    prediction: str,
) -> tuple[Tensor, Tensor]:
    """Model call at timestep t -> (eps, x0), with classifier-free guidance when y is given;
    the variance values of a learned-variance model are dropped (the deterministic samplers)."""
    eps, x0, _ = _guided_eps_x0_v(model, schedule, x, t, y, guidance_scale, prediction)
    return eps, x0


def _abar(schedule: NoiseSchedule, t: int) -> float:
    """abar_t as a Python float, with abar_{-1} = 1 (clean data)."""
    return 1.0 if t < 0 else float(schedule.alphas_bar[t])


def _lam(schedule: NoiseSchedule, t: int) -> float:
    """lambda_t = log(alpha_t / sigma_t) = log(abar_t / (1 - abar_t)) / 2 (half log-SNR)."""
    ab = _abar(schedule, t)
    return 0.5 * math.log(ab / (1 - ab))


def _check_final(final_step: str, ts: Sequence[int] | None = None) -> None:
    """A known final step; "ode" only on a grid that ends at t = 0, where sigma is the
    schedule's smallest (its zero-velocity assumption does not hold at a larger sigma)."""
    if final_step not in FINAL_STEPS:
        raise ValueError(f"final_step must be one of {list(FINAL_STEPS)}, got {final_step!r}")
    if final_step == "ode" and ts is not None and ts[-1] != 0:
        raise ValueError(
            f"final_step='ode' needs a time grid that ends at t = 0, this one ends at {ts[-1]}; "
            "use spacing logsnr, karras, quadratic or linspace, or timesteps ending in 0"
        )


def _check_x(x_T: Tensor, y: Tensor | None) -> None:
    if y is not None and (y.ndim != 1 or y.shape[0] != x_T.shape[0]):
        raise ValueError(f"y must have shape ({x_T.shape[0]},), got {tuple(y.shape)}")
