"""The higher-order solvers (UniPC, DPM-Solver++(3M), Heun/EDM) against independent derivations.

1. Exact Gaussian data x_0 ~ N(mu, s^2): the exact E[eps | x_t] is b (x_t - a mu) / (a^2 s^2 + b^2)
   (a = sqrt(abar), b = sqrt(1 - abar)) and the probability-flow ODE keeps the standardised
   value z = (x_t - a mu) / sqrt(a^2 s^2 + b^2) constant, so its solution from x_T at the first
   timestep to the last timestep t_end is closed form; every solver returns D(x_{t_end}) (the
   x_0 estimate there), so the exact answer is D of the exact state. The orders are measured on
   a schedule uniform in lambda = log(a / b) (T = 1601, lambda from 5 to -5), where the grids
   range(1600, -1, -k) are exactly uniform in lambda (no rounding of the grid to integers).
2. A 2-D Gaussian mixture (nonlinear ODE) on the linear schedule: scipy's RK45 at rtol 1e-10 on
   dy/dlog(sigma) = y - D(y; sigma) (EDM variables, y = x / a, sigma = b / a), with the mixture's
   posterior mean written out here in float64 at any sigma, is the reference at 50+ steps.
3. Guidance, clip_x0, timesteps=, model evaluation counts, options. (Per-sample seeds of the
   stochastic DPM-Solver++(3M) are in tests/test_sampler_seeds.py with every sampler.)

Measured error ratios (max |error| over 11 starting points, 10 -> 20 -> 40 -> 80 steps on the
uniform-lambda schedule): Heun 4.6, 4.3, 4.1 (order 2); UniPC order 1 (UniP-1 + UniC: 2) 3.3,
3.8, 4.0; order 2 (3) 5.2, 7.2, 7.8; order 3 (nominally 4) 83, 15, 8.2 and 9.7 at 80 -> 160:
third order here, not fourth; DPM-Solver++(3M) 21, 15, 15 (at least 3). With the reference
code's d2 coefficient (``reference_d2=True``, diffusers' and k-diffusion's 3M) 9.2, 5.4, 4.5:
second order, see ``dpm_solver_pp_3m_sample``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from ddpmkit.sampling import (
    NULL_LABEL,
    SAMPLERS,
    STOCHASTIC_ETA,
    StepInfo,
    ddim_sample,
    dpm_solver_pp_3m_sample,
    heun_sample,
    make_timesteps,
    unipc_sample,
)
from ddpmkit.schedule import NoiseSchedule

scipy_integrate = pytest.importorskip("scipy.integrate")

MU, S = 0.5, 0.3
T_UNI = 1601
LAM = torch.linspace(5.0, -5.0, T_UNI, dtype=torch.float64)
_ABAR = torch.sigmoid(2 * LAM)  # abar / (1 - abar) = e^{2 lambda}
UNIFORM = NoiseSchedule.from_betas(
    1 - _ABAR / torch.cat([torch.ones(1, dtype=torch.float64), _ABAR[:-1]])
)
LINEAR = NoiseSchedule.from_name("linear", 1000)
X_T = torch.linspace(-2.5, 2.5, 11)[:, None]

Model = Callable[..., torch.Tensor]


def gaussian_eps(schedule: NoiseSchedule) -> Model:
    abar = schedule.alphas_bar.double()

    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        a2 = abar[t][:, None]
        return (torch.sqrt(1 - a2) * (x.double() - a2.sqrt() * MU) / (a2 * S**2 + 1 - a2)).float()

    return model


def exact_gaussian(schedule: NoiseSchedule, ts: list[int]) -> torch.Tensor:
    """D(x_{t_end}) of the exact PF-ODE solution from X_T at ts[0] (module docstring)."""
    abar = schedule.alphas_bar.double()
    a0, a1 = abar[ts[0]], abar[ts[-1]]
    z = (X_T.double() - a0.sqrt() * MU) / torch.sqrt(a0 * S**2 + 1 - a0)
    x_end = a1.sqrt() * MU + torch.sqrt(a1 * S**2 + 1 - a1) * z
    return MU + a1.sqrt() * S**2 * (x_end - a1.sqrt() * MU) / (a1 * S**2 + 1 - a1)


def gaussian_error(run: Model, ts: list[int], **kw: object) -> float:
    out = run(gaussian_eps(UNIFORM), UNIFORM, X_T, timesteps=ts, **kw)
    return float((out.double() - exact_gaussian(UNIFORM, ts)).abs().max())


def uniform_grid(intervals: int) -> list[int]:
    """range(1600, -1, -k): ``intervals`` steps uniform in lambda (+ the final step to data)."""
    k = (T_UNI - 1) // intervals
    return list(range(T_UNI - 1, -1, -k))


# (sampler, options, measured order, step counts (intervals) whose error ratios are checked)
ORDERS = [
    ("heun", heun_sample, {}, 2, (10, 20, 40)),
    ("unipc-p1", unipc_sample, {"order": 1}, 2, (20, 40, 80)),
    ("unipc-p2", unipc_sample, {"order": 2}, 3, (20, 40, 80)),
    ("unipc-p3", unipc_sample, {"order": 3}, 3, (20, 40, 80)),  # nominally 4 (docstring)
    ("dpmpp3m", dpm_solver_pp_3m_sample, {"lower_order_final": False}, 3, (20, 40, 80)),
    (
        "dpmpp3m-reference-d2",
        dpm_solver_pp_3m_sample,
        {"lower_order_final": False, "reference_d2": True},
        2,
        (20, 40, 80),
    ),
]


@pytest.mark.parametrize("name, run, kw, order, steps", ORDERS, ids=[o[0] for o in ORDERS])
def test_error_falls_at_the_solvers_order_on_exact_gaussian(
    name: str, run: Model, kw: dict[str, object], order: int, steps: tuple[int, ...]
) -> None:
    errs = [gaussian_error(run, uniform_grid(n), **kw) for n in steps]
    ratios = [a / b for a, b in zip(errs, errs[1:], strict=False)]
    assert all(r >= 2**order * 0.7 for r in ratios), (errs, ratios)
    assert errs[-1] < 0.01, errs


def test_dpmpp3m_is_the_diffusers_third_order_update_written_out() -> None:
    # Three steps on the uniform grid by hand: DDIM, then the 2nd-order step, then the 3rd
    # (d2 = 2 (d1_0 - d1_1) / (r0 + r1) = d1_0 - d1_1 for equal steps).
    model = gaussian_eps(UNIFORM)
    ts = [1600, 1200, 800, 400]
    got = dpm_solver_pp_3m_sample(model, UNIFORM, X_T, timesteps=ts, lower_order_final=False)
    abar = UNIFORM.alphas_bar.double()
    lam = {t: float(LAM[t]) for t in ts}
    x = X_T.double()
    d = []
    for i, t in enumerate(ts):
        a, b = abar[t].sqrt(), (1 - abar[t]).sqrt()
        eps = model(x.float(), torch.full((11,), t)).double()
        d.append((x - b * eps) / a)
        if i == 3:
            break
        s = ts[i + 1]
        h = lam[s] - lam[t]
        a_s, b_s = abar[s].sqrt(), (1 - abar[s]).sqrt()
        x_new = b_s / b * x - a_s * math.expm1(-h) * d[-1]
        if i >= 1:  # every step has the same h here: r0 = r1 = 1
            d1_0 = d[-1] - d[-2]
            if i == 1:
                x_new = x_new + a_s * (math.expm1(-h) / h + 1) * d1_0
            else:
                d1_1 = d[-2] - d[-3]
                d1 = d1_0 + 0.5 * (d1_0 - d1_1)
                d2 = d1_0 - d1_1
                x_new = (
                    x_new
                    + a_s * (math.expm1(-h) / h + 1) * d1
                    - a_s * ((math.expm1(-h) + h) / h**2 - 0.5) * d2
                )
        x = x_new
    torch.testing.assert_close(got.double(), d[-1], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- reference ODE

MEANS = torch.tensor([[0.8, 0.0], [0.0, 0.8], [-0.8, 0.0], [0.0, -0.8]], dtype=torch.float64)
MIX_STD = 0.25


def mixture_x0(x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """E[x_0 | x_t] of the 4-Gaussian mixture at any abar (float64, x (B, 2), abar (B, 1)):
    responsibilities r_k of N(x; a m_k, v I), v = a^2 s^2 + b^2, times each component's
    Gaussian posterior mean m_k + a s^2 (x - a m_k) / v."""
    a = abar.sqrt()
    v = abar * MIX_STD**2 + 1 - abar
    diff = x[:, None, :] - a[:, :, None] * MEANS[None]  # (B, K, 2)
    r = torch.softmax(-0.5 * diff.pow(2).sum(-1) / v, dim=1)  # (B, K)
    post = MEANS[None] + (a * MIX_STD**2 / v)[:, :, None] * diff
    return (r[:, :, None] * post).sum(1)


def mixture_eps(schedule: NoiseSchedule) -> Model:
    abar = schedule.alphas_bar.double()

    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        ab = abar[t][:, None]
        x0 = mixture_x0(x.double(), ab)
        return ((x.double() - ab.sqrt() * x0) / (1 - ab).sqrt()).float()

    return model


X_MIX = torch.randn(24, 2, generator=torch.Generator().manual_seed(0))


def _mixture_x0_np(x: np.ndarray, ab: float) -> np.ndarray:
    """``mixture_x0`` in numpy at one abar (for the reference integrator's right-hand side)."""
    means, a, v = MEANS.numpy(), math.sqrt(ab), ab * MIX_STD**2 + 1 - ab
    diff = x[:, None, :] - a * means[None]
    logits = -0.5 * (diff**2).sum(-1) / v
    r = np.exp(logits - logits.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return (r[:, :, None] * (means[None] + (a * MIX_STD**2 / v) * diff)).sum(1)


def reference_ode(schedule: NoiseSchedule, ts: list[int]) -> torch.Tensor:
    """RK45 (rtol = atol = 1e-10) on dy/du = y - D(y; e^u), u = log sigma, from sigma(ts[0]) to
    sigma(ts[-1]); returns D there (what every solver returns). DOP853 at the same tolerance
    agrees to 5e-11."""
    abar = schedule.alphas_bar.double()
    a0, a1 = float(abar[ts[0]]), float(abar[ts[-1]])
    u0, u1 = 0.5 * math.log((1 - a0) / a0), 0.5 * math.log((1 - a1) / a1)
    n = X_MIX.shape[0]

    def f(u: float, yv: np.ndarray) -> np.ndarray:
        y = yv.reshape(n, 2)
        ab = 1 / (1 + math.exp(2 * u))
        return (y - _mixture_x0_np(math.sqrt(ab) * y, ab)).ravel()

    y0 = (X_MIX.double().numpy() / math.sqrt(a0)).ravel()
    sol = scipy_integrate.solve_ivp(f, (u0, u1), y0, method="RK45", rtol=1e-10, atol=1e-10)
    assert sol.success
    y_end = sol.y[:, -1].reshape(n, 2)
    return torch.as_tensor(_mixture_x0_np(math.sqrt(a1) * y_end, a1))


@pytest.fixture(scope="module")
def reference() -> dict[tuple[int, str], torch.Tensor]:
    return {}


# (sampler, spacing, steps, max error): about twice the measured max errors over 24 points
# (unipc 4.5e-4 / 1.1e-4, dpmpp3m 6.3e-4 / 1.5e-4 at 50 / 100 log-SNR steps; heun 5.8e-3 /
# 1.4e-3 at 50 / 100 Karras steps; for comparison DPM-Solver++(2M) 2.6e-3 / 6.2e-4, DDIM
# 3.8e-2 / 1.9e-2). The log-SNR grid's rounding to integer timesteps near t = 0 keeps the ratios
# between 50 and 100 steps below the orders (about 4); the orders are measured above.
REFERENCE_CASES = [
    ("unipc", "logsnr", 50, 1e-3),
    ("unipc", "logsnr", 100, 2.5e-4),
    ("dpmpp3m", "logsnr", 50, 1.3e-3),
    ("dpmpp3m", "logsnr", 100, 3e-4),
    ("heun", "karras", 50, 1.2e-2),
    ("heun", "karras", 100, 3e-3),
]


@pytest.mark.parametrize("name, spacing, steps, tol", REFERENCE_CASES)
def test_solver_matches_a_tight_reference_integration_of_the_ode(
    name: str, spacing: str, steps: int, tol: float, reference: dict[tuple[int, str], torch.Tensor]
) -> None:
    ts = make_timesteps(LINEAR, steps, spacing)
    key = (steps, spacing)
    if key not in reference:
        reference[key] = reference_ode(LINEAR, ts)
    out = SAMPLERS[name](mixture_eps(LINEAR), LINEAR, X_MIX, num_steps=steps, spacing=spacing)
    err = float((out.double() - reference[key]).abs().max())
    assert err < tol, err


# ----------------------------------------------------------------------------- the signature

NEW = ("unipc", "dpmpp3m", "heun")


def counting(model: Model) -> tuple[Model, list[int]]:
    calls: list[int] = []

    def wrapped(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        calls.append(int(t[0]))
        return model(x, t) if y is None else model(x, t, y)

    return wrapped, calls


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_model_evaluations_and_timesteps_argument(name: str, n: int) -> None:
    model, calls = counting(gaussian_eps(LINEAR))
    ts = make_timesteps(LINEAR, n, "logsnr")
    a = SAMPLERS[name](model, LINEAR, X_T, timesteps=ts)
    want = 2 * n - 1 if name == "heun" else n
    assert len(calls) == want
    assert set(calls) == set(ts)  # the model only ever sees the grid's timesteps
    b = SAMPLERS[name](gaussian_eps(LINEAR), LINEAR, X_T, num_steps=n, spacing="logsnr")
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("name", NEW)
def test_callback_reports_every_step_with_the_final_sample_last(name: str) -> None:
    seen: list[StepInfo] = []
    out = SAMPLERS[name](gaussian_eps(LINEAR), LINEAR, X_T, num_steps=6, callback=seen.append)
    ts = make_timesteps(LINEAR, 6, SAMPLERS_SPACING[name])
    assert [s.index for s in seen] == list(range(6)) and [s.t for s in seen] == ts
    assert torch.equal(seen[-1].x_t, out) and torch.equal(seen[-1].x0_pred, out)


SAMPLERS_SPACING = {"unipc": "logsnr", "dpmpp3m": "logsnr", "heun": "karras"}


def cond_net(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    s = (t.double() / 1000)[:, None]
    base = 0.5 * x.double() + 0.2 * torch.sin(3 * s + x.double())
    if y is not None:
        base = base + 0.3 * torch.where(y < 0, -1.0, y.double())[:, None] * (1 - s)
    return base.float()


@pytest.mark.parametrize("name", NEW)
def test_guidance_is_the_combined_eps_of_both_branches(name: str) -> None:
    y = torch.tensor([0, 1, 2, 1, 0, 2, 1, 0, 2, 1, 0])
    w = 2.5

    def combined(x: torch.Tensor, t: torch.Tensor, _y: torch.Tensor | None = None) -> torch.Tensor:
        u = cond_net(x, t, torch.full_like(y, NULL_LABEL)).double()
        c = cond_net(x, t, y).double()
        return (u + w * (c - u)).float()

    got = SAMPLERS[name](cond_net, LINEAR, X_T, num_steps=6, y=y, guidance_scale=w)
    want = SAMPLERS[name](combined, LINEAR, X_T, num_steps=6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    plain = SAMPLERS[name](cond_net, LINEAR, X_T, num_steps=6, y=y)
    assert float((plain - got).abs().max()) > 1e-3


@pytest.mark.parametrize("name", NEW)
def test_clip_x0_bounds_the_estimates_and_the_result(name: str) -> None:
    far = lambda x, t, y=None: (x - 3.0).float()  # noqa: E731  eps pointing far from the data
    seen: list[StepInfo] = []
    out = SAMPLERS[name](far, LINEAR, 2 * X_T, num_steps=5, clip_x0=1.0, callback=seen.append)
    assert float(out.abs().max()) <= 1.0 + 1e-6
    assert all(float(s.x0_pred.abs().max()) <= 1.0 + 1e-6 for s in seen)
    free = SAMPLERS[name](far, LINEAR, 2 * X_T, num_steps=5)
    assert float(free.abs().max()) > 1.5  # the clip did something
    loose = SAMPLERS[name](far, LINEAR, 2 * X_T, num_steps=5, clip_x0=1e6)
    torch.testing.assert_close(loose, free)


def test_unipc_order_one_without_corrector_is_ddim() -> None:
    model = mixture_eps(LINEAR)
    a = unipc_sample(model, LINEAR, X_MIX, num_steps=8, order=1, corrector=False)
    b = ddim_sample(model, LINEAR, X_MIX, num_steps=8, spacing="logsnr")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_corrector_lowers_the_error() -> None:
    # UniC raises UniP-2's order by one at no extra model call.
    ts = uniform_grid(20)
    with_c = gaussian_error(unipc_sample, ts, order=2)
    without = gaussian_error(unipc_sample, ts, order=2, corrector=False)
    assert with_c < 0.7 * without, (with_c, without)


def test_dpmpp3m_eta_is_its_only_stochastic_option_and_is_checked() -> None:
    assert "dpmpp3m" in STOCHASTIC_ETA and "unipc" not in STOCHASTIC_ETA
    assert "heun" not in STOCHASTIC_ETA
    with pytest.raises(ValueError, match="eta"):
        dpm_solver_pp_3m_sample(cond_net, LINEAR, X_T, eta=1.5)
    with pytest.raises(ValueError, match="order"):
        unipc_sample(cond_net, LINEAR, X_T, order=4)


def test_sde_dpmpp3m_recovers_the_gaussian() -> None:
    # eta = 1 on exact Gaussian data: the samples' moments are N(MU, S^2) (4,000 draws, 5 SE).
    x_T = torch.randn(4000, 1, generator=torch.Generator().manual_seed(1))
    out = dpm_solver_pp_3m_sample(
        gaussian_eps(LINEAR), LINEAR, x_T, num_steps=50, eta=1.0,
        generator=torch.Generator().manual_seed(2),
    )  # fmt: skip
    assert float(out.mean()) == pytest.approx(MU, abs=5 * S / math.sqrt(4000))
    assert float(out.std()) == pytest.approx(S, abs=5 * S / math.sqrt(2 * 4000) + 0.01)
