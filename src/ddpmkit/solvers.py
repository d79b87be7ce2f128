"""Higher-order ODE solvers for the reverse process: UniPC, DPM-Solver++(3M), Heun (EDM).

They share the one sampler signature of :mod:`ddpmkit.sampling` (which registers them in
``SAMPLERS``) and its model contract, time grids (:func:`sampling_timesteps`), guidance and
seeding. Notation as in ``sampling``: abar_t, alpha_t = sqrt(abar_t), sigma_t =
sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t) (half the log-SNR), and for a step from
timestep t to s < t, h = lambda_s - lambda_t > 0. D_t = x0_pred(x_t, t) is the model's data
prediction (after guidance and ``clip_x0``). The step out of the last timestep, to clean data
(sigma = 0), returns the x_0 estimate there, as in ``dpm_solver_pp_sample``.

Model evaluations: one per timestep for UniPC and DPM-Solver++(3M) (``num_steps`` of them),
2 ``num_steps`` - 1 for Heun.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ddpmkit.sampling_core import (
    Callback,
    Guidance,
    StepInfo,
    _abar,
    _check_final,
    _check_x,
    _guided_eps_x0,
    _lam,
    _per_sample_generators,
    _randn,
    final_x0,
    sampling_timesteps,
)
from ddpmkit.schedule import NoiseSchedule

__all__ = ["dpm_solver_pp_3m_sample", "heun_sample", "unipc_sample"]


def _x0(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x: Tensor,
    t: int,
    y: Tensor | None,
    guidance_scale: float | Guidance,
    prediction: str,
    clip_x0: float | None,
) -> Tensor:
    _, x0 = _guided_eps_x0(model, schedule, x, t, y, guidance_scale, prediction)
    return x0 if clip_x0 is None else x0.clamp(-clip_x0, clip_x0)


# ----------------------------------------------------------------------------- DPM-Solver++(3M)


@torch.no_grad()
def dpm_solver_pp_3m_sample(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x_T: Tensor,
    *,
    num_steps: int | None = 10,
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
    lower_order_final: bool = True,
    reference_d2: bool = False,
    final_step: str = "denoise",
) -> Tensor:
    """DPM-Solver++(3M): multistep third order in data prediction (Lu et al. 2022, "DPM-Solver++:
    Fast Solver for Guided Sampling of Diffusion Probabilistic Models", Sec. 3.3 / App. A;
    the update of diffusers' ``DPMSolverMultistepScheduler(solver_order=3)`` and of
    k-diffusion's ``sample_dpmpp_3m_sde``, which is it for eta = 0).

    Step t -> s with the x_0 predictions D_0, D_1, D_2 at the current and the two previous
    timesteps, h = lambda_s - lambda_t, h_1, h_2 the two previous steps' lengths,
    r_0 = h_1 / h, r_1 = h_2 / h:

        d1_0 = (D_0 - D_1) / r_0,   d1_1 = (D_1 - D_2) / r_1
        d1 = d1_0 + r_0 / (r_0 + r_1) (d1_0 - d1_1),   d2 = 2 (d1_0 - d1_1) / (r_0 + r_1)
        x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D_0
              + alpha_s phi_2 d1 - alpha_s phi_3 d2,
        phi_2 = (e^{-h} - 1) / h + 1,   phi_3 = phi_2 / h - 1/2

    the second-order Taylor expansion D = D_0 + tau D' + tau^2/2 D'' (tau = lambda - lambda_t)
    inside the exact integral x_s = (sigma_s/sigma_t) x_t + sigma_s int e^lambda D dlambda:
    d1 = h D' + O(h^3), d2 = h^2 D'' + O(h^3), and int_0^h e^{tau - h} tau^2/2 dtau = -h^2 phi_3.
    The reference code (DPM-Solver's ``multistep_dpm_solver_third_order_update``, diffusers'
    ``DPMSolverMultistepScheduler(solver_order=3)``, k-diffusion's ``sample_dpmpp_3m_sde``)
    uses d2 = (d1_0 - d1_1) / (r_0 + r_1) = h^2 D''/2, half the Taylor term: its step's local
    error is O(h^3), its global order 2 (measured in tests/test_solvers.py: error ratios 4.5,
    4.2 at 20 -> 40 -> 80 steps, against 8 with the factor 2; DPM-Solver's single-step
    third-order "taylor" update does have the factor 2). ``reference_d2=True`` gives the
    reference code's update (for comparison; diffusers' numbers).
    The first step is first order (DDIM), the second second order (the d1 term with
    d1 = (D_0 - D_1) / r_0); with ``lower_order_final`` and fewer than 15 steps the step into
    the last timestep is first order and the one before at most second order, as in the
    reference code and diffusers (``lower_order_final``; few steps make the last steps long in
    lambda, where the extrapolation overshoots).

    ``eta`` > 0 is the SDE variant (k-diffusion's ``sample_dpmpp_3m_sde``): h is replaced by
    h_eta = (1 + eta) h in the coefficients of D, the state is multiplied by e^{-eta h} and
    sigma_s sqrt(1 - e^{-2 eta h}) z is added, exactly as in ``dpm_solver_pp_sample``.
    ``num_steps`` model evaluations.

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
    n = len(ts)
    x = x_T.float()
    hist: list[Tensor] = []  # x_0 predictions, newest last (at most 3)
    hs: list[float] = []  # lengths in lambda of the steps taken, newest last
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < n else -1
        x0 = _x0(model, schedule, x, t, y, guidance_scale, prediction, clip_x0)
        hist = [*hist[-2:], x0]
        if s < 0:
            x = final_x0(x, x0, _abar(schedule, t), final_step)
        else:
            order = min(3, i + 1)
            if lower_order_final and n < 15:
                if i == n - 2:
                    order = 1
                elif i == n - 3:
                    order = min(order, 2)
            ab_t, ab_s = _abar(schedule, t), _abar(schedule, s)
            sig_t, sig_s, a_s = math.sqrt(1 - ab_t), math.sqrt(1 - ab_s), math.sqrt(ab_s)
            h = _lam(schedule, s) - _lam(schedule, t)
            h_eta = (1 + eta) * h
            x_next = (sig_s / sig_t) * math.exp(-eta * h) * x - a_s * math.expm1(-h_eta) * x0
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if order == 2:
                r = hs[-1] / h
                x_next = x_next + a_s * phi_2 * ((x0 - hist[-2]) / r)
            elif order == 3:
                r0, r1 = hs[-1] / h, hs[-2] / h
                d1_0 = (x0 - hist[-2]) / r0
                d1_1 = (hist[-2] - hist[-3]) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1) * (1.0 if reference_d2 else 2.0)
                phi_3 = phi_2 / h_eta - 0.5
                x_next = x_next + a_s * phi_2 * d1 - a_s * phi_3 * d2
            if eta > 0:
                noise_std = sig_s * math.sqrt(-math.expm1(-2 * eta * h))
                x_next = x_next + noise_std * _randn(tuple(x.shape), generator, gens, x.device)
            hs.append(h)
            x = x_next
        if callback is not None:
            callback(StepInfo(i, n, t, x, x0))
    return x


# ----------------------------------------------------------------------------- UniPC


def _unipc_coefficients(rks: list[float], h: float, order: int) -> tuple[Tensor, Tensor]:
    """R (order x order) and b (order) of UniPC's bh2 variant, data prediction (hh = -h).

    R[i-1] = r_k^(i-1) over the nodes r_1..r_{order-1}, 1; b_i = i! h phi_{i+1}(hh) / B(h)
    with B(h) = e^{hh} - 1, phi_k the phi functions of the exponential integrator; computed
    by the recursion h phi_{k+1} = h phi_k / hh - 1/k! of the reference code.
    """
    rk = torch.tensor([*rks, 1.0], dtype=torch.float64)
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = math.expm1(hh)
    factorial = 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(rk.pow(i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(rows), torch.tensor(b, dtype=torch.float64)


def _unipc_step(
    x: Tensor,
    lams: list[float],
    x0s: list[Tensor],
    lam_s: float,
    a_s: float,
    sig_ratio: float,
    order: int,
    x0_new: Tensor | None,
) -> Tensor:
    """One UniP step (``x0_new`` None) or UniC correction (``x0_new`` the model at the target).

    ``lams``/``x0s``: lambda and x_0 predictions of the visited timesteps, newest (the start
    of this step) last; ``order`` of them are used.
    """
    lam_0, m0 = lams[-1], x0s[-1]
    h = lam_s - lam_0
    rks = [(lams[-(k + 1)] - lam_0) / h for k in range(1, order)]
    d1s = [(x0s[-(k + 1)] - m0) / r for k, r in zip(range(1, order), rks, strict=True)]
    b_h = math.expm1(-h)
    x_next = sig_ratio * x - a_s * b_h * m0  # h phi_1(hh) = B(h) = e^{-h} - 1 (bh2)
    if x0_new is None:  # predictor UniP-order
        if order == 1:
            return x_next
        if order == 2:
            rhos = [0.5]
        else:
            R, b = _unipc_coefficients(rks, h, order)
            rhos = torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        res = sum(rho * d for rho, d in zip(rhos, d1s, strict=True))
        return x_next - a_s * b_h * res
    # corrector UniC-order (order + 1 overall): the new model output as one more node, r = 1
    if order == 1:
        rhos_c = [0.5]
    else:
        R, b = _unipc_coefficients(rks, h, order)
        rhos_c = torch.linalg.solve(R, b).tolist()
    corr = rhos_c[-1] * (x0_new - m0)
    for rho, d in zip(rhos_c[:-1], d1s, strict=True):
        corr = corr + rho * d
    return x_next - a_s * b_h * corr


@torch.no_grad()
def unipc_sample(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x_T: Tensor,
    *,
    num_steps: int | None = 10,
    y: Tensor | None = None,
    guidance_scale: float | Guidance = 1.0,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
    callback: Callback | None = None,
    prediction: str = "eps",
    spacing: str = "logsnr",
    timesteps: Sequence[int] | None = None,
    clip_x0: float | None = None,
    order: int = 2,
    corrector: bool = True,
    lower_order_final: bool = True,
    final_step: str = "denoise",
) -> Tensor:
    """UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast
    Sampling of Diffusion Models"): the UniP-p predictor with the UniC corrector, data
    prediction, B(h) = e^{-h} - 1 (the "bh2" variant of the reference code and of diffusers'
    ``UniPCMultistepScheduler``, the default there).

    With the x_0 predictions D_0 at the current timestep t and D_k at earlier ones t_k (lambda_k),
    r_k = (lambda_k - lambda_t) / h (negative), Delta_k = (D_k - D_0) / r_k, UniP-p is

        x_s = (sigma_s / sigma_t) x_t - alpha_s B(h) D_0 - alpha_s B(h) sum_{k<p} rho_k Delta_k

    (Alg. 1/2 of the paper) where rho solves R rho = b over the p - 1 earlier nodes
    (R_{ik} = r_k^{i-1}, b_i = i! h phi_{i+1}(-h) / B(h), phi_k the phi functions of the
    exponential integrator), rho = 1/2 for p = 2. After the model is called at s on that
    prediction (D_s; the one call of the step), UniC-p corrects it with D_s as one more node
    (r = 1, Delta = D_s - D_0):

        x_s^c = (sigma_s / sigma_t) x_t - alpha_s B(h) D_0
                - alpha_s B(h) (sum_{k<p} rho^c_k Delta_k + rho^c_p (D_s - D_0)),

    rho^c solving the full p x p system (rho^c = 1/2 for p = 1), which raises the order to
    p + 1 at no extra model call: D_s is reused by the next predictor, which starts from the
    corrected x_s^c. The first steps use lower orders (p = 1, 2, ... while the history fills)
    and with ``lower_order_final`` the k-th step from the end at most order k, as in the
    reference implementation; the last step, to clean data, returns D of the last timestep (its
    correction would be discarded, so it is not computed). ``order`` is p in 1..3;
    ``corrector=False`` gives UniP alone. ``num_steps`` model evaluations; deterministic
    (``generator``/``seeds`` unused).

    ``final_step``: the step from the last timestep to clean data, ``"denoise"`` (x_0 = D, the
    default) or ``"ode"`` (the trapezoidal step of the probability-flow ODE, for continuous
    data; :func:`~ddpmkit.sampling_core.final_x0`).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    _check_x(x_T, y)
    ts = sampling_timesteps(schedule, num_steps, spacing, timesteps)
    _check_final(final_step, ts)
    n = len(ts)
    x = x_T.float()
    lams: list[float] = []
    x0s: list[Tensor] = []
    x_last = x  # state at the previous timestep (the start of the last predictor step)
    last_order = 0
    for i, t in enumerate(ts):
        x0 = _x0(model, schedule, x, t, y, guidance_scale, prediction, clip_x0)
        s = ts[i + 1] if i + 1 < n else -1
        lam_t, ab_t = _lam(schedule, t), _abar(schedule, t)
        if corrector and i > 0 and s >= 0:
            ab_p = _abar(schedule, ts[i - 1])
            x = _unipc_step(
                x_last,
                lams,
                x0s,
                lam_t,
                math.sqrt(ab_t),
                math.sqrt((1 - ab_t) / (1 - ab_p)),
                last_order,
                x0,
            )
        lams, x0s = [*lams[-2:], lam_t], [*x0s[-2:], x0]
        if s < 0:
            x = final_x0(x, x0, ab_t, final_step)
        else:
            p = min(order, i + 1, n - i) if lower_order_final else min(order, i + 1)
            ab_s = _abar(schedule, s)
            x_last = x
            x = _unipc_step(
                x,
                lams,
                x0s,
                _lam(schedule, s),
                math.sqrt(ab_s),
                math.sqrt((1 - ab_s) / (1 - ab_t)),
                p,
                None,
            )
            last_order = p
        if callback is not None:
            callback(StepInfo(i, n, t, x, x0))
    del generator, seeds
    return x


# ----------------------------------------------------------------------------- Heun (EDM)


@torch.no_grad()
def heun_sample(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x_T: Tensor,
    *,
    num_steps: int | None = 10,
    y: Tensor | None = None,
    guidance_scale: float | Guidance = 1.0,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
    callback: Callback | None = None,
    prediction: str = "eps",
    spacing: str = "karras",
    timesteps: Sequence[int] | None = None,
    clip_x0: float | None = None,
    final_step: str = "denoise",
) -> Tensor:
    """Heun's second-order method on the probability-flow ODE, Karras et al. 2022 ("Elucidating
    the Design Space of Diffusion-Based Generative Models", Alg. 1, deterministic), on the VP
    schedule.

    In EDM's variables, sigma = sqrt((1 - abar) / abar) and y = x / sqrt(abar) (so that
    y = x_0 + sigma eps), the ODE is dy/dsigma = (y - D(y; sigma)) / sigma, with
    D(y; sigma_t) = x0_pred(sqrt(abar_t) y, t) (= eps_pred when unclipped). On the time points
    t_0 > ... > t_{n-1} (``num_steps`` = n of them; default spacing ``karras``, EDM's
    rho = 7 schedule, whose sigmas ``make_timesteps`` maps to the nearest timestep index) and
    sigma_n = 0, each step i is

        d_i = (y_i - D(y_i; sigma_i)) / sigma_i
        y~ = y_i + (sigma_{i+1} - sigma_i) d_i                         (Euler)
        d' = (y~ - D(y~; sigma_{i+1})) / sigma_{i+1}
        y_{i+1} = y_i + (sigma_{i+1} - sigma_i) (d_i + d') / 2          (Heun, if sigma_{i+1} > 0)

    and the last step, to sigma = 0, is Euler: y = D(y_{n-1}; sigma_{n-1}). Every sigma is the
    schedule's own sigma at an integer time point of the grid, so the model is only called at
    the grid's timesteps (no interpolation between indices). The result is x_0 = y (abar = 1).
    Model evaluations: 2 n - 1 (two per step, one on the last); n = 3 costs 5.
    Deterministic (``generator``/``seeds`` unused). ``final_step="ode"`` replaces that last
    Euler step by the trapezoidal one, y = (y_{n-1} + D) / 2
    (:func:`~ddpmkit.sampling_core.final_x0`).
    """
    _check_x(x_T, y)
    ts = sampling_timesteps(schedule, num_steps, spacing, timesteps)
    _check_final(final_step, ts)
    n = len(ts)

    def alpha(t: int) -> float:
        return math.sqrt(_abar(schedule, t))

    def sigma(t: int) -> float:
        ab = _abar(schedule, t)
        return math.sqrt((1 - ab) / ab)

    def denoise(y_: Tensor, t: int) -> Tensor:
        return _x0(model, schedule, alpha(t) * y_, t, y, guidance_scale, prediction, clip_x0)

    yk = x_T.float() / alpha(ts[0])
    for i, t in enumerate(ts):
        x0 = denoise(yk, t)
        if i + 1 == n:
            x = final_x0(alpha(t) * yk, x0, _abar(schedule, t), final_step)
            yk = x
        else:
            s = ts[i + 1]
            sig_t, sig_s = sigma(t), sigma(s)
            d = (yk - x0) / sig_t
            y_euler = yk + (sig_s - sig_t) * d
            d2 = (y_euler - denoise(y_euler, s)) / sig_s
            yk = yk + (sig_s - sig_t) * (0.5 * d + 0.5 * d2)
            x = alpha(s) * yk
        if callback is not None:
            callback(StepInfo(i, n, t, x, x0))
    del generator, seeds
    return x
