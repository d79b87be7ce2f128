"""Samplers: DDPM ancestral, DDIM, DPM-Solver++(2M), the registry; classifier-free guidance.

The higher-order solvers (DPM-Solver++(3M), UniPC, Heun/EDM) are in :mod:`ddpmkit.solvers`,
the time grids and shared helpers in :mod:`ddpmkit.sampling_core`; both are re-exported here.

Every sampler has one signature (DESIGN 4.3)::

    sample(model, schedule, x_T, *, num_steps=None, y=None, guidance_scale=1.0,
           generator=None, seeds=None, callback=None, prediction="eps", spacing=...,
           timesteps=None, ...) -> x_0

The time grid is ``num_steps`` indices placed by ``spacing`` (:func:`make_timesteps`), or an
explicit strictly decreasing ``timesteps`` list (:func:`sampling_timesteps`).

``model`` is any callable ``model(x_t, t)`` or ``model(x_t, t, y)`` with ``t`` a LongTensor of
indices in ``[0, T)`` (see ``ddpmkit.schedule``), returning the parameterisation named by
``prediction`` ("eps", "x0" or "v"). That contract is public and stable.

Sampling on a subset of timesteps (``num_steps < T``) uses the exact marginals of the kept
steps: a step from t to s < t treats alpha_{t|s} = abar_t / abar_s as its single-step alpha (the
"respacing" of Nichol & Dhariwal 2021, Sec. 4), so DDPM with all T steps is Ho et al.'s
Algorithm 2 exactly, and with fewer steps it is the ancestral sampler of the shorter chain.

Randomness: from ``generator``, or with ``seeds`` (one int per sample) from one generator per
sample, so sample i is identical whatever the batch size it is drawn in.

Classifier-free guidance (Ho & Salimans 2022): eps = eps_uncond + w (eps_cond - eps_uncond);
w = 1 is the plain conditional model, w = 0 the unconditional one. The unconditional branch is
the model called with label ``NULL_LABEL`` (-1); conditional networks in ddpmkit map negative
labels to their learned null embedding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from ddpmkit.diffusion import interpolated_log_variance
from ddpmkit.sampling_core import (
    LAMBDA_MIN,
    NULL_LABEL,
    SPACINGS,
    Callback,
    Guidance,
    Spacing,
    StepInfo,
    _abar,
    _check_final,
    _check_x,
    _guided_eps_x0,
    _guided_eps_x0_v,
    _lam,
    _per_sample_generators,
    _randn,
    final_x0,
    initial_noise,
    make_timesteps,
    sampling_timesteps,
)
from ddpmkit.sampling_core import (
    _distinct_descending as _distinct_descending,  # re-exported for the benchmarks
)
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.solvers import dpm_solver_pp_3m_sample, heun_sample, unipc_sample

__all__ = [
    "DEFAULT_SPACING",
    "DEFAULT_STEPS",
    "Guidance",
    "LAMBDA_MIN",
    "NULL_LABEL",
    "SAMPLERS",
    "SPACINGS",
    "STOCHASTIC_ETA",
    "Sampler",
    "Spacing",
    "StepInfo",
    "VARIANCES",
    "ddim_invert",
    "ddim_sample",
    "ddpm_sample",
    "dpm_solver_pp_3m_sample",
    "dpm_solver_pp_sample",
    "heun_sample",
    "initial_noise",
    "make_timesteps",
    "sampling_timesteps",
    "unipc_sample",
]


# ----------------------------------------------------------------------------- samplers


# DDPM's reverse variances by name (ddpm_sample's ``variance``; None = the model's own)
VARIANCES = ("beta", "posterior", "learned")


@torch.no_grad()
def ddpm_sample(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x_T: Tensor,
    *,
    num_steps: int | None = None,
    y: Tensor | None = None,
    guidance_scale: float | Guidance = 1.0,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
    callback: Callback | None = None,
    prediction: str = "eps",
    spacing: str = "trailing",
    timesteps: Sequence[int] | None = None,
    variance: str | None = None,
    clip_x0: float | None = None,
    final_step: str = "denoise",
) -> Tensor:
    """Ancestral sampling, DDPM Algorithm 2, on the timesteps of ``make_timesteps``.

    Step t -> s: x_s = mu~(x_t, x0_pred) + sigma z, with mu~ the posterior mean (Eq. 7) of the
    (respaced) chain and sigma^2 = beta_{t|s} (``variance="beta"``, Ho et al.'s sigma_t^2 = beta_t)
    or the posterior variance beta~ (``"posterior"``). No noise is added on the last step.
    ``clip_x0`` clamps the x_0 estimate to [-c, c] before the mean is formed (images: 1.0).

    Learned variances (a model returning [prediction; v], twice the channels; Nichol & Dhariwal
    2021): sigma^2 = exp(frac log beta_{t|s} + (1 - frac) log beta~_{t|s}), frac = (v + 1) / 2
    (Eq. 15), with beta_{t|s} = 1 - abar_t / abar_s and beta~_{t|s} = beta_{t|s} (1 - abar_s) /
    (1 - abar_t) of the respaced chain (Sec. 4: the betas recomputed from the kept steps'
    alphas_bar), v from the conditional branch under guidance (which guides the prediction
    half). ``variance=None`` (the default) is "learned" for such a model and "beta" for any
    other; "beta" or "posterior" sample a learned-variance model with that fixed variance;
    "learned" on a model without v is a ValueError.

    ``final_step``: the step from the last timestep to clean data, ``"denoise"`` (x_0 = D, the
    default) or ``"ode"`` (the trapezoidal step of the probability-flow ODE, for continuous
    data; :func:`~ddpmkit.sampling_core.final_x0`).
    """
    if variance is not None and variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; expected None or one of {VARIANCES}")
    _check_x(x_T, y)
    gens = _per_sample_generators(seeds, x_T.shape[0])
    ts = sampling_timesteps(schedule, num_steps, spacing, timesteps)
    _check_final(final_step, ts)
    x = x_T.float()
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        _, x0, v = _guided_eps_x0_v(model, schedule, x, t, y, guidance_scale, prediction)
        if variance == "learned" and v is None:
            raise ValueError(
                "variance='learned' needs a model with learned variances (output [prediction; "
                "v], twice the channels); this one returns x_t's shape"
            )
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        ab_t, ab_s = _abar(schedule, t), _abar(schedule, s)
        alpha_ts = ab_t / ab_s  # single-step alpha of the respaced chain
        beta_ts = 1.0 - alpha_ts
        coef_x0 = math.sqrt(ab_s) * beta_ts / (1.0 - ab_t)
        coef_xt = math.sqrt(alpha_ts) * (1.0 - ab_s) / (1.0 - ab_t)
        mean = coef_x0 * x0 + coef_xt * x
        if s >= 0 and v is not None and variance in (None, "learned"):
            log_var = interpolated_log_variance(
                v, math.log(beta_ts), math.log(beta_ts * (1.0 - ab_s) / (1.0 - ab_t))
            )
            z = _randn(tuple(x.shape), generator, gens, x.device)
            x = mean + torch.exp(0.5 * log_var) * z
        elif s >= 0:
            var = beta_ts if variance in (None, "beta") else beta_ts * (1.0 - ab_s) / (1.0 - ab_t)
            x = mean + math.sqrt(var) * _randn(tuple(x.shape), generator, gens, x.device)
        else:
            x = final_x0(x, mean, ab_t, final_step)  # mean = x0 at s = -1
        if callback is not None:
            callback(StepInfo(i, len(ts), t, x, x0))
    return x


@torch.no_grad()
def ddim_sample(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x_T: Tensor,
    *,
    num_steps: int | None = 50,
    y: Tensor | None = None,
    guidance_scale: float | Guidance = 1.0,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
    callback: Callback | None = None,
    prediction: str = "eps",
    spacing: str = "trailing",
    timesteps: Sequence[int] | None = None,
    eta: float = 0.0,
    clip_x0: float | None = None,
    final_step: str = "denoise",
) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12), deterministic for eta = 0:

        x_s = sqrt(abar_s) x0_pred + sqrt(1 - abar_s - sigma^2) eps_pred + sigma z,
        sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s)      (Eq. 16)

    eta = 1 with all T steps has the DDPM posterior variance.

    ``final_step``: the step from the last timestep to clean data, ``"denoise"`` (x_0 = D, the
    default) or ``"ode"`` (the trapezoidal step of the probability-flow ODE, for continuous
    data; :func:`~ddpmkit.sampling_core.final_x0`).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    _check_x(x_T, y)
    gens = _per_sample_generators(seeds, x_T.shape[0])
    ts = sampling_timesteps(schedule, num_steps, spacing, timesteps)
    _check_final(final_step, ts)
    x = x_T.float()
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        eps, x0 = _guided_eps_x0(model, schedule, x, t, y, guidance_scale, prediction)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = (x - math.sqrt(_abar(schedule, t)) * x0) / math.sqrt(1 - _abar(schedule, t))
        ab_t, ab_s = _abar(schedule, t), _abar(schedule, s)
        sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_s)
        if s < 0:
            x = final_x0(x, x0, ab_t, final_step)
        else:
            x = math.sqrt(ab_s) * x0 + math.sqrt(max(1 - ab_s - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * _randn(tuple(x.shape), generator, gens, x.device)
        if callback is not None:
            callback(StepInfo(i, len(ts), t, x, x0))
    return x


@torch.no_grad()
def dpm_solver_pp_sample(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x_T: Tensor,
    *,
    num_steps: int | None = 20,
    y: Tensor | None = None,
    guidance_scale: float | Guidance = 1.0,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
    callback: Callback | None = None,
    prediction: str = "eps",
    spacing: str = "logsnr",
    timesteps: Sequence[int] | None = None,
    eta: float = 0.0,
    clip_x0: float | None = None,
    final_step: str = "denoise",
) -> Tensor:
    """DPM-Solver++(2M), multistep second order in data prediction (Lu et al. 2022, Alg. 2).

    With alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha/sigma),
    h = lambda_s - lambda_t, each step t -> s is
        x_s = (sigma_s/sigma_t) x_t - alpha_s (e^{-h} - 1) D
    with D = x0_t (first order, DPM-Solver++ 1, i.e. DDIM) on the first step and
        2M:  D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev,  r = h_prev / h
    on the others, except that with fewer than 15 steps the step *into* the last timestep is
    first order too ("lower_order_final" of the DPM-Solver reference code and of diffusers'
    ``DPMSolverMultistepScheduler``). Few steps make that last step long in lambda, and the
    second-order extrapolation overshoots there: on the 8-Gaussian benchmark of
    docs/samplers.md (exact predictor, linear schedule) it lifts the share of samples in a mode
    at 5 log-SNR steps from 0% to 74%, and at 5 quadratic steps from 15% to 94%, for a slightly
    narrower spread at 10 steps (log-SNR: 0.99 to 0.92 of the true one); from 15 steps on the
    second-order step is kept (nothing changes at 20).
    The final step to clean data (sigma = 0) returns the x_0 estimate of the last timestep
    (``final_step="denoise"``) or takes the trapezoidal ODE step (``"ode"``).

    ``eta`` > 0 gives SDE-DPM-Solver++(2M) (Lu et al. 2022, Sec. 4 and App. B; the
    "sde-dpmsolver++" of diffusers and ``sample_dpmpp_2m_sde`` of k-diffusion for eta = 1),
    the exact solution of the linear part of the reverse SDE with eta times its noise:
        x_s = (sigma_s/sigma_t) e^{-eta h} x_t + alpha_s (1 - e^{-(1+eta) h}) D
              + sigma_s sqrt(1 - e^{-2 eta h}) z,
    with the same D. eta = 0 is the ODE solver above (deterministic; ``generator``/``seeds``
    unused). The injected noise corrects part of the errors of an imperfect network, as DDPM's
    does; measured on the trained Fashion-MNIST model in docs/samplers.md.

    ``final_step``: the step from the last timestep to clean data, ``"denoise"`` (x_0 = D, the
    default) or ``"ode"`` (the trapezoidal step of the probability-flow ODE, for continuous
    data; :func:`~ddpmkit.sampling_core.final_x0`).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    _check_x(x_T, y)
    gens = _per_sample_generators(seeds, x_T.shape[0])
    ts = sampling_timesteps(schedule, num_steps, spacing, timesteps)
    _check_final(final_step, ts)
    x = x_T.float()

    # Index of the step into the last timestep, taken first order below 15 steps (-1: none).
    lower_order_step = len(ts) - 2 if len(ts) < 15 else -1
    x0_prev: Tensor | None = None
    h_prev = 0.0
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        _, x0 = _guided_eps_x0(model, schedule, x, t, y, guidance_scale, prediction)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        if s < 0:
            x_next = final_x0(x, x0, _abar(schedule, t), final_step)
        else:
            ab_t, ab_s = _abar(schedule, t), _abar(schedule, s)
            sig_t, sig_s, a_s = math.sqrt(1 - ab_t), math.sqrt(1 - ab_s), math.sqrt(ab_s)
            h = _lam(schedule, s) - _lam(schedule, t)
            if x0_prev is None or i == lower_order_step:
                d = x0
            else:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x_next = (sig_s / sig_t) * math.exp(-eta * h) * x - a_s * math.expm1(-(1 + eta) * h) * d
            if eta > 0:
                noise_std = sig_s * math.sqrt(-math.expm1(-2 * eta * h))
                x_next = x_next + noise_std * _randn(tuple(x.shape), generator, gens, x.device)
            h_prev = h
        x0_prev = x0
        x = x_next
        if callback is not None:
            callback(StepInfo(i, len(ts), t, x, x0))
    return x


@torch.no_grad()
def ddim_invert(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    num_steps: int | None = 50,
    y: Tensor | None = None,
    guidance_scale: float | Guidance = 1.0,
    prediction: str = "eps",
    spacing: str = "trailing",
    timesteps: Sequence[int] | None = None,
) -> Tensor:
    """Deterministic DDIM run backwards, x_0 -> x_T (Song et al. 2021, Sec. 4.3 / Eq. 13).

    Each step from s to t > s reuses the eps predicted at (x_s, s), the usual approximation;
    feeding the result to :func:`ddim_sample` with the same steps reconstructs x_0 closely.
    """
    _check_x(x0, y)
    ts = list(reversed(sampling_timesteps(schedule, num_steps, spacing, timesteps)))  # increasing
    x = x0.float()
    prev = -1
    for t in ts:
        if prev < 0:
            # From clean data the model has no timestep to be called at; use the first step's.
            eps, _ = _guided_eps_x0(model, schedule, x, t, y, guidance_scale, prediction)
            x0_est = x
        else:
            eps, x0_est = _guided_eps_x0(model, schedule, x, prev, y, guidance_scale, prediction)
        ab_t = _abar(schedule, t)
        x = math.sqrt(ab_t) * x0_est + math.sqrt(1 - ab_t) * eps
        prev = t
    return x


Sampler = Literal["ddpm", "ddim", "dpmpp", "dpmpp3m", "unipc", "heun"]
SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpmpp": dpm_solver_pp_sample,
    "dpmpp3m": dpm_solver_pp_3m_sample,
    "unipc": unipc_sample,
    "heun": heun_sample,
}
# Steps of each sampler when nothing names them (None = all T steps of the schedule), and its
# spacing: DPM-Solver++ is built for uniform log-SNR steps (Lu et al. 2022), DDIM/DDPM use
# trailing (Lin et al. 2024), Heun the rho = 7 sigmas of Karras et al. 2022. For heun the steps
# are time points (2 n - 1 model evaluations); the frontier of docs/samplers.md chose the others.
# Every path that samples takes these through SampleSettings.
DEFAULT_STEPS: dict[str, int | None] = {
    "ddpm": None,
    "ddim": 50,
    "dpmpp": 20,
    "dpmpp3m": 10,
    "unipc": 10,
    "heun": 10,
}
DEFAULT_SPACING: dict[str, str] = {
    "ddpm": "trailing",
    "ddim": "trailing",
    "dpmpp": "logsnr",
    "dpmpp3m": "logsnr",
    "unipc": "logsnr",
    "heun": "karras",
}
STOCHASTIC_ETA = ("ddim", "dpmpp", "dpmpp3m")  # samplers whose extra noise is set by eta
