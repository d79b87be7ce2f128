"""Beta schedules and NoiseSchedule constants, checked against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from ddpmkit.schedule import SCHEDULES, NoiseSchedule, make_betas


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("T", [1, 10, 1000])
def test_named_schedules_are_valid(name: str, T: int) -> None:
    s = NoiseSchedule.from_name(name, T)
    assert s.num_steps == T
    assert ((s.betas > 0) & (s.betas < 1)).all()
    assert (s.alphas_bar[1:] < s.alphas_bar[:-1]).all()
    assert s.alphas_bar[0] == pytest.approx(1 - float(s.betas[0]), rel=1e-6, abs=1e-6)
    assert s.posterior_variance[0] == 0.0
    assert ((s.posterior_variance[1:] > 0) & (s.posterior_variance[1:] <= s.betas[1:])).all()
    for f in ("betas", "alphas_bar", "posterior_variance"):
        assert getattr(s, f).dtype == torch.float32


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_alphas_bar_equals_running_product_of_one_minus_beta(name: str) -> None:
    betas = make_betas(name, 1000)
    s = NoiseSchedule.from_betas(betas)
    running, expected = 1.0, []
    for b in betas.tolist():  # plain Python float64 loop, independent of torch.cumprod
        running *= 1.0 - b
        expected.append(running)
    assert torch.allclose(
        s.alphas_bar.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-12
    )


def test_reference_values() -> None:
    lin = make_betas("linear", 1000)
    assert float(lin[0]) == pytest.approx(1e-4) and float(lin[-1]) == pytest.approx(0.02)
    # Seed 002's sigmoid, written out as in the seed.
    x = torch.linspace(-6, 6, 100, dtype=torch.float64)
    seed = torch.sigmoid(x) * (0.5e-2 - 1e-5) + 1e-5
    assert torch.allclose(make_betas("sigmoid", 100), seed)
    # Cosine: alpha_bar(t) = cos^2(((t+1)/T + s)/(1+s) pi/2) / cos^2(s/(1+s) pi/2), before clipping.
    T, s_ = 1000, 0.008
    f = lambda u: math.cos((u / T + s_) / (1 + s_) * math.pi / 2) ** 2  # noqa: E731
    ab = NoiseSchedule.from_name("cosine", T).alphas_bar
    for t in (0, 10, 500, 900):
        assert float(ab[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-5)
    assert float(make_betas("cosine", T).max()) <= 0.999
    q = make_betas("quadratic", 1000)
    assert float(q[0]) == pytest.approx(1e-4) and float(q[-1]) == pytest.approx(0.02)
    assert float(q[500]) == pytest.approx(
        (math.sqrt(1e-4) + 500 / 999 * (math.sqrt(0.02) - 0.01)) ** 2
    )


@pytest.mark.parametrize(
    "betas, match",
    [
        ([0.1, 1.0], r"betas\[1\] = 1.0 is outside \(0, 1\)"),
        ([0.0, 0.1], r"outside \(0, 1\)"),
        ([0.1, float("nan")], "NaN"),
        ([], "non-empty"),
    ],
)
def test_invalid_betas(betas: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NoiseSchedule.from_betas(betas)


def test_invalid_names_and_lengths() -> None:
    with pytest.raises(ValueError, match=r"unknown schedule 'cosin'; expected one of \['cosine'"):
        NoiseSchedule.from_name("cosin", 10)
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        NoiseSchedule.from_name("linear", 0)


def test_schedule_is_not_a_parameter() -> None:
    # A frozen value object: cannot be assigned to, and holds no requires_grad tensors.
    s = NoiseSchedule.from_name("linear", 10)
    with pytest.raises(AttributeError):
        s.betas = torch.zeros(10)  # type: ignore[misc]
    assert not any(getattr(s, f).requires_grad for f in s.__dataclass_fields__)
