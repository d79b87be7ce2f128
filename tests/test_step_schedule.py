"""Step schedules chosen by measurement (issue 16.2): ``ddpmkit.step_schedule``, the optimiser
and its file (the command line and a run's ``schedule_file``: tests/test_schedule_file.py).

The optimiser is checked against an independent answer: for Gaussian data x_0 ~ N(mu, s^2) the
probability-flow ODE has the closed-form solution x_t = a_t mu + sqrt(a_t^2 s^2 + sigma_t^2) z
(z constant along the path), and the samplers' last step returns the x_0 estimate at the last
timestep t_n, E[x_0 | x_{t_n}] = mu + a s^2 / (a^2 s^2 + sigma^2) (x_{t_n} - a mu). So the exact
answer of every sampler from x_T, had it no discretisation error, is known without any solver;
the optimised grid must come closer to it than the fixed spacings on noise it never saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ddpmkit.cli_sample import parse_timesteps
from ddpmkit.errors import SettingsError
from ddpmkit.evaluation.oracle import GaussianOracle, MixtureOracle, ring_means
from ddpmkit.sampling import SAMPLERS, make_timesteps
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.step_schedule import (
    StepSchedule,
    load_schedule,
    optimise_timesteps,
    save_schedule,
)

MU, STD, DIM = 0.5, 0.1, 4


def ode_answer(sched: NoiseSchedule, x_T: torch.Tensor, t_last: int) -> torch.Tensor:
    """The closed form above, from x_T at T-1 to E[x_0 | x_{t_last}] (float64)."""
    ab = sched.alphas_bar.double()
    a_T, a = ab[-1].sqrt(), ab[t_last].sqrt()
    z = (x_T.double() - a_T * MU) / (ab[-1] * STD**2 + 1 - ab[-1]).sqrt()
    x_t = a * MU + (ab[t_last] * STD**2 + 1 - ab[t_last]).sqrt() * z
    return MU + a * STD**2 / (ab[t_last] * STD**2 + 1 - ab[t_last]) * (x_t - a * MU)


def mse(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.double() - y.double()).pow(2).mean())


@pytest.fixture(scope="module")
def gauss() -> tuple[NoiseSchedule, GaussianOracle]:
    sched = NoiseSchedule.from_name("linear", 1000)
    return sched, GaussianOracle(sched, MU, STD)


def test_closed_form_is_the_many_step_limit(gauss: tuple[NoiseSchedule, GaussianOracle]) -> None:
    # The independent answer itself: unipc on 300 log-SNR steps lands on it (t_last = 0) to
    # float32 accuracy (RMS 3e-4 of an x_0 of std 0.1), far below the few-step errors below.
    sched, oracle = gauss
    x_T = torch.randn(64, DIM, generator=torch.Generator().manual_seed(3))
    x = SAMPLERS["unipc"](oracle, sched, x_T, num_steps=300)
    assert mse(x, ode_answer(sched, x_T, 0)) < 1e-7


@pytest.mark.parametrize("sampler", ["dpmpp3m", "unipc"])
def test_optimised_5_steps_beat_the_fixed_spacings_on_unseen_noise(
    gauss: tuple[NoiseSchedule, GaussianOracle], sampler: str
) -> None:
    sched, oracle = gauss
    x_opt = torch.randn(64, DIM, generator=torch.Generator().manual_seed(1))
    res = optimise_timesteps(oracle, sched, x_opt, sampler, 5, max_evals=40)
    x_T = torch.randn(256, DIM, generator=torch.Generator().manual_seed(7))  # unseen noise
    exact = ode_answer(sched, x_T, 0)  # the ODE's answer, to t = 0 and its x_0 estimate

    def err(ts: list[int]) -> float:
        return mse(SAMPLERS[sampler](oracle, sched, x_T, timesteps=ts), exact)

    optimised = err(list(res.timesteps))
    for spacing in ("trailing", "linspace", "logsnr", "quadratic", "karras"):
        fixed = err(make_timesteps(sched, 5, spacing))
        assert optimised < 0.5 * fixed, (spacing, optimised, fixed)
    # and the data's spread comes out right: sqrt(mean (x - mu)^2) / std within 5%
    x = SAMPLERS[sampler](oracle, sched, x_T, timesteps=list(res.timesteps))
    assert abs(float((x.double() - MU).pow(2).mean().sqrt()) / STD - 1) < 0.05


def test_never_worse_than_its_start_and_objective_is_recomputable() -> None:
    # 8 narrow modes: J is not convex in the grid; whatever the descent finds is no worse than
    # where it started, and the reported J is the MSE of the returned grid to the reference.
    sched = NoiseSchedule.from_name("cosine", 1000)
    oracle = MixtureOracle(sched, ring_means(8, 0.8), 0.05)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    for start in ([999, 600, 300, 100], [999, 998, 997, 0]):
        res = optimise_timesteps(
            oracle, sched, x_T, "dpmpp", 4, start=start, max_evals=15, end_at_zero=False
        )
        ref = SAMPLERS["unipc"](oracle, sched, x_T, num_steps=100, spacing="logsnr")
        j_start = mse(SAMPLERS["dpmpp"](oracle, sched, x_T, timesteps=start), ref)
        j_end = mse(SAMPLERS["dpmpp"](oracle, sched, x_T, timesteps=list(res.timesteps)), ref)
        assert res.baseline == pytest.approx(j_start, rel=1e-9)
        assert res.objective == pytest.approx(j_end, rel=1e-9)
        assert j_end <= j_start
        assert res.evaluations <= 15
    # from the fixed spacings: baseline is the best of them, and the result no worse
    res = optimise_timesteps(oracle, sched, x_T, "unipc", 4, max_evals=12)
    assert res.baseline == min(res.spacings.values())
    assert res.spacings[res.start_spacing] == res.baseline
    assert res.objective <= res.baseline
    assert "leading" not in res.spacings  # it never starts at T-1


@pytest.mark.parametrize(
    ("sampler", "steps"), [("ddim", 1), ("ddim", 2), ("heun", 3), ("unipc", 6)]
)
def test_the_grid_is_valid_and_deterministic(sampler: str, steps: int) -> None:
    sched = NoiseSchedule.from_name("linear", 100)
    oracle = MixtureOracle(sched, ring_means(4, 1.0), 0.1)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(5))
    kw = {"reference_steps": 50, "max_evals": 15}
    a = optimise_timesteps(oracle, sched, x_T, sampler, steps, **kw)  # type: ignore[arg-type]
    b = optimise_timesteps(oracle, sched, x_T, sampler, steps, **kw)  # type: ignore[arg-type]
    free = optimise_timesteps(oracle, sched, x_T, sampler, steps, end_at_zero=False, **kw)  # type: ignore[arg-type]
    ts = list(a.timesteps)
    assert len(ts) == steps and ts[0] == 99
    assert all(isinstance(t, int) and 0 <= t <= 99 for t in ts)
    assert all(u > v for u, v in zip(ts, ts[1:], strict=False))
    assert a == b
    assert steps == 1 or ts[-1] == 0  # the default keeps the last timestep at 0
    fs = list(free.timesteps)
    assert len(fs) == steps and fs[0] == 99 and fs[-1] >= 0
    assert all(u > v for u, v in zip(fs, fs[1:], strict=False))


def test_end_at_zero_keeps_the_last_timestep() -> None:
    sched = NoiseSchedule.from_name("linear", 100)
    oracle = MixtureOracle(sched, ring_means(4, 1.0), 0.1)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(5))
    res = optimise_timesteps(oracle, sched, x_T, "dpmpp", 4, reference_steps=50, max_evals=15)
    assert res.timesteps[0] == 99 and res.timesteps[-1] == 0
    assert "trailing" not in res.spacings  # it ends at 24, not 0
    assert res.objective <= res.baseline == min(res.spacings.values())
    with pytest.raises(SettingsError, match="ending at 0"):
        optimise_timesteps(oracle, sched, x_T, "dpmpp", 3, start=[99, 50, 10])


def test_bad_arguments_are_settings_errors(gauss: tuple[NoiseSchedule, GaussianOracle]) -> None:
    sched, oracle = gauss
    x_T = torch.zeros(4, DIM)
    with pytest.raises(SettingsError, match="adds noise"):
        optimise_timesteps(oracle, sched, x_T, "ddpm", 5)
    with pytest.raises(SettingsError, match=r"steps: must be in \[1, 999\]"):
        optimise_timesteps(oracle, sched, x_T, "unipc", 0)
    with pytest.raises(SettingsError, match="reference_steps"):
        optimise_timesteps(oracle, sched, x_T, "unipc", 10, reference_steps=10)
    with pytest.raises(SettingsError, match="eta"):
        optimise_timesteps(oracle, sched, x_T, "ddim", 5, sampler_kwargs={"eta": 1.0})


# ----------------------------------------------------------------------------- files


def _schedule(**kw: object) -> StepSchedule:
    base = dict(
        timesteps=(99, 40, 7, 0),
        sampler="unipc",
        steps=4,
        objective=0.25,
        baseline=0.5,
        start_spacing="logsnr",
        num_train_steps=100,
        spacings={"logsnr": 0.5, "karras": 0.75},
        reference={"sampler": "unipc", "steps": 50, "spacing": "logsnr"},
        batch=32,
        seed=10_000,
        evaluations=12,
    )
    base.update(kw)
    return StepSchedule(**base)  # type: ignore[arg-type]


def test_file_round_trip_and_the_timesteps_flag_reads_it(tmp_path: Path) -> None:
    path = save_schedule(tmp_path / "steps_4.json", _schedule())
    assert load_schedule(path, 100) == _schedule()
    data = json.loads(path.read_text())
    assert data["timesteps"] == [99, 40, 7, 0] and data["objective"] == 0.25
    assert data["baseline"] == 0.5 and data["sampler"] == "unipc" and data["steps"] == 4
    assert parse_timesteps(str(path)) == [99, 40, 7, 0]  # ddpm sample --timesteps FILE.json
    assert [p.name for p in tmp_path.iterdir()] == ["steps_4.json"]  # no temporary left


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "missing"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"sampler": "unipc"}', 'no "timesteps" list'),
        ('{"timesteps": [99, 50.5, 0], "sampler": "unipc"}', 'no "timesteps" list'),
        ('{"timesteps": [99, 50, 50, 0], "sampler": "unipc"}', "strictly decreasing"),
        ('{"timesteps": [0, 50, 99], "sampler": "unipc"}', "strictly decreasing"),
        ('{"timesteps": [99, 50, 0], "steps": 4, "sampler": "unipc"}', '"steps" is 4'),
        ('{"timesteps": [120, 50, 0], "sampler": "unipc"}', r"in \[0, 100\)"),
        ('{"timesteps": [99, 0], "sampler": "unipc", "num_train_steps": 1000}', "T = 1000"),
        ('{"timesteps": [99, 0], "sampler": "euler"}', "'euler' is not one of"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "s.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError, match=message) as info:
        load_schedule(path, 100)
    assert info.value.as_flag().startswith(f"--schedule-from: {path}")
    assert "\n" not in str(info.value)
