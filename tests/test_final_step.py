"""The samplers' last step to clean data: ``final_step="denoise"`` (x_0 = D) and ``"ode"``
(the trapezoidal step of the probability-flow ODE), against the exact ODE map of Gaussian data.

For x_0 ~ N(mu, s^2) the probability-flow ODE is linear, and it maps x_t (std
sqrt(abar_t s^2 + 1 - abar_t)) to x_0 = mu + s (x_t - sqrt(abar_t) mu) / sqrt(abar_t s^2 +
1 - abar_t) (both are Gaussian and the map is monotone, so it is the quantile map). That
closed form is the reference here; no sampler code computes it.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpmkit.evaluation.oracle import GaussianOracle, MixtureOracle, mode_stats, ring_means
from ddpmkit.sample_settings import SampleSettings, SettingsError, draw
from ddpmkit.sampling import SAMPLERS
from ddpmkit.sampling_core import final_x0
from ddpmkit.schedule import NoiseSchedule

MU, S = 0.3, 0.05  # a Gaussian as narrow as the rings' modes: sigma_0 / s = 0.2 (linear)


def exact_flow_map(x_T: torch.Tensor, abar_T: float) -> torch.Tensor:
    """The ODE's x_T -> x_0 for N(MU, S^2) data, in closed form (module docstring)."""
    x = x_T.double()
    return MU + S * (x - math.sqrt(abar_T) * MU) / math.sqrt(abar_T * S**2 + 1 - abar_T)


@pytest.fixture(scope="module")
def linear() -> NoiseSchedule:
    return NoiseSchedule.from_name("linear", 1000)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_last_step_from_the_exact_state_at_t0(name: str, linear: NoiseSchedule) -> None:
    # Start every sampler at the exact ODE state at t = 0 (the flow map to abar_0) and give it
    # the one-step grid [0]: its output is the last step alone, with no solver error before it.
    a0 = float(linear.alphas_bar[0])
    z = torch.randn(4096, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_t0 = (math.sqrt(a0) * MU + math.sqrt(a0 * S**2 + 1 - a0) * z).float()
    exact = MU + S * z  # the ODE's map from x_t0 to sigma = 0
    oracle = GaussianOracle(linear, MU, S)
    kw = {"timesteps": [0], "seeds": list(range(4096))}
    out = {end: SAMPLERS[name](oracle, linear, x_t0, final_step=end, **kw).double()
           for end in ("denoise", "ode")}  # fmt: skip
    slope = {end: float(((x - MU) * z).sum() / (S * (z**2).sum())) for end, x in out.items()}
    e = (1 - a0) / a0 / S**2  # (sigma_0 / s)^2 = 0.04
    assert slope["denoise"] == pytest.approx(1 / math.sqrt(1 + e), abs=1e-4)  # Tweedie: 0.981
    assert slope["ode"] == pytest.approx(1 + e**2 / 8, abs=1e-4)  # the trapezoid: 1.0002
    assert float((out["ode"] - exact).abs().max()) < 1e-3 * S  # sample by sample


def test_a_converged_solver_with_the_ode_end_keeps_the_spread(linear: NoiseSchedule) -> None:
    # UniPC on all 1,000 steps from x_T, against the closed-form flow map x_T -> x_0. The
    # discrete grid's first steps are long in log sigma (sigma_0 = 0.010, sigma_1 = 0.015), so
    # the state at t = 0 is itself 0.2-0.3% off; the ends' ratio is the last step's alone.
    x_T = torch.randn(4096, 1, generator=torch.Generator().manual_seed(0))
    ref = exact_flow_map(x_T, float(linear.alphas_bar[-1]))
    oracle = GaussianOracle(linear, MU, S)
    slope = {}
    for end in ("denoise", "ode"):
        x = SAMPLERS["unipc"](oracle, linear, x_T, num_steps=1000, final_step=end).double()
        slope[end] = float(((x - MU) * (ref - MU)).sum() / ((ref - MU) ** 2).sum())
    a0 = float(linear.alphas_bar[0])
    e = (1 - a0) / a0 / S**2
    assert slope["ode"] == pytest.approx(1.0, abs=5e-3)
    assert slope["denoise"] == pytest.approx(1 / math.sqrt(1 + e), abs=5e-3)
    assert slope["denoise"] / slope["ode"] == pytest.approx(
        1 / math.sqrt(1 + e) / (1 + e**2 / 8), abs=1e-4
    )


def test_final_x0_closed_forms() -> None:
    # One step from x_t at abar to sigma = 0 for N(MU, S^2): D is the Gaussian posterior mean.
    abar = 0.9999
    sigma2 = (1 - abar) / abar
    y = MU + math.sqrt(S**2 + sigma2) * torch.linspace(-3, 3, 13, dtype=torch.float64)
    x_t = math.sqrt(abar) * y
    d = MU + S**2 / (S**2 + sigma2) * (y - MU)
    exact = MU + S / math.sqrt(S**2 + sigma2) * (y - MU)
    e = sigma2 / S**2
    ode = final_x0(x_t, d, abar, "ode")
    torch.testing.assert_close(final_x0(x_t, d, abar, "denoise"), d)
    # the trapezoid's factor on y - MU is (1 + 1 / (1 + e)) / 2, the exact one (1 + e)^(-1/2):
    # they differ by e^2 / 8 + O(e^3) (7e-4 of the shrink Tweedie's end leaves, 1 - 0.981)
    gap = (2 + e) / (2 * (1 + e)) - (1 + e) ** -0.5
    torch.testing.assert_close(ode - exact, (y - MU) * gap, rtol=1e-9, atol=1e-15)
    assert gap == pytest.approx(e**2 / 8, rel=0.1)


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_ode_end_restores_the_mode_spread_on_a_narrow_ring(schedule_name: str) -> None:
    # The hardest row: 8 modes of std 0.05 on a ring of radius 0.8.
    sched = NoiseSchedule.from_name(schedule_name, 1000)
    means = ring_means(8, 0.8)
    oracle = MixtureOracle(sched, means, 0.05)
    x_T = torch.randn(8000, 2, generator=torch.Generator().manual_seed(3))
    spreads = {}
    for end in ("denoise", "ode"):
        x = SAMPLERS["unipc"](oracle, sched, x_T, num_steps=1000, final_step=end)
        stats = mode_stats(x, means, 0.05)
        assert stats["share_in_mode"] > 0.99
        spreads[end] = stats["within_mode_std"]
    sigma0 = math.sqrt((1 - float(sched.alphas_bar[0])) / float(sched.alphas_bar[0]))
    expected_shrink = 1 / math.sqrt(1 + (sigma0 / 0.05) ** 2)
    # the same x_T: the two ends differ by the last step alone
    assert spreads["denoise"] / spreads["ode"] == pytest.approx(expected_shrink, abs=3e-3)
    # exact draws score 0.997 (the 99.9% truncation); 8,000 samples: ~0.6% noise
    assert spreads["ode"] == pytest.approx(0.997, abs=0.025)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_takes_final_step(name: str, linear: NoiseSchedule) -> None:
    oracle = GaussianOracle(linear, MU, S)
    x_T = torch.randn(64, 1, generator=torch.Generator().manual_seed(1))
    kw = {"timesteps": [999, 700, 400, 200, 80, 20, 5, 0], "seeds": list(range(64))}
    default = SAMPLERS[name](oracle, linear, x_T, **kw)
    denoise = SAMPLERS[name](oracle, linear, x_T, final_step="denoise", **kw)
    ode = SAMPLERS[name](oracle, linear, x_T, final_step="ode", **kw)
    torch.testing.assert_close(default, denoise, rtol=0, atol=0)
    assert not torch.equal(ode, denoise)
    # both are the last state pushed through final_x0: the difference is (x_t/sqrt(abar) - D)/2,
    # small against the data's std at t = 0
    assert float((ode - denoise).abs().max()) < 0.05 * S * 4


def test_bad_final_step_fails_before_any_model_call(linear: NoiseSchedule) -> None:
    calls = []

    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        calls.append(1)
        return torch.zeros_like(x)

    for fn in SAMPLERS.values():
        with pytest.raises(ValueError, match="final_step must be one of"):
            fn(model, linear, torch.zeros(2, 1), num_steps=4, final_step="tweedie")
    with pytest.raises(ValueError, match="ends at t = 0, this one ends at 124"):
        SAMPLERS["ddim"](model, linear, torch.zeros(2, 1), num_steps=8, final_step="ode")
    assert calls == []


def test_settings_carry_final_step(linear: NoiseSchedule) -> None:
    s = SampleSettings.from_section({"sampler": "dpmpp", "steps": 10, "final_step": "ode"})
    assert s.final_step == "ode"
    r = s.resolve(linear, conditional=False)
    assert "ode final step" in r.describe()
    assert r.as_dict()["final_step"] == "ode"
    assert "final_step" not in SampleSettings().resolve(linear, conditional=False).as_dict()
    oracle = GaussianOracle(linear, MU, S)
    x_ode = draw(oracle, linear, r, shape=(1,), num=16, seed=4)
    x_den = draw(oracle, linear, r.override(final_step="denoise"), shape=(1,), num=16, seed=4)
    x_T = torch.cat(
        [torch.randn(1, generator=torch.Generator().manual_seed(4 + i)) for i in range(16)]
    )
    direct = SAMPLERS["dpmpp"](oracle, linear, x_T[:, None], num_steps=10, final_step="ode")
    torch.testing.assert_close(x_ode, direct)
    assert not torch.equal(x_ode, x_den)
    with pytest.raises(SettingsError, match="final_step"):
        SampleSettings(final_step="tweedie").resolve(linear, conditional=False)
    trailing = SampleSettings(sampler="ddim", steps=8, final_step="ode")  # ends at t = 124
    with pytest.raises(SettingsError, match="final_step: .*ends at t = 0"):
        trailing.resolve(linear, conditional=False)
    assert trailing.override(spacing="logsnr").resolve(linear, conditional=False).steps == 8
