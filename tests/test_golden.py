"""Golden numbers: every sampler on a fixed tiny network, pinned in tests/golden/samplers.json.

The formula tests (test_sampling.py) check each sampler against its equations on exact
predictors; these pin what the code computes today, so that numerical drift (a changed
coefficient, an op order, a step count, a spacing, the noise drawn) shows up as a failure.

Regenerate after an *intended* change of sampler numerics, and say why in the commit:

    DDPMKIT_REGEN_GOLDEN=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_golden.py

(which writes the JSON file and skips the comparisons), then run the file again without it.

The network is a fixed function of (x, t, y) with weights from closed-form tables (no RNG, no
torch init), computed in float64 and returned as float32; the noise comes from per-sample
seeds. Tolerance rtol 1e-5 / atol 1e-6: float32 results of 10 steps differ between CPUs by a
few ulps (~1e-7 relative, from vectorised vs scalar kernels), a real change by far more.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ddpmkit.sampling import SAMPLERS, ddim_invert, initial_noise
from ddpmkit.schedule import NoiseSchedule

GOLDEN = Path(__file__).parent / "golden" / "samplers.json"
REGEN = os.environ.get("DDPMKIT_REGEN_GOLDEN") == "1"
RTOL, ATOL = 1e-5, 1e-6

T, D, H, CLASSES = 100, 3, 8, 3
SCHEDULE = NoiseSchedule.from_name("linear", T)
SEEDS = [11, 12, 13, 14]
Y = torch.tensor([0, 2, -1, 1])  # -1: the null label
GUIDANCE = 2.5
STEPS = 10


def _table(rows: int, cols: int, a: float, b: float, scale: float) -> torch.Tensor:
    i = torch.arange(rows, dtype=torch.float64)[:, None]
    j = torch.arange(cols, dtype=torch.float64)[None, :]
    return scale * torch.sin(a * i + b * j + 0.5)


W1 = _table(D, H, 0.9, 1.7, 0.8)
W2 = _table(H, D, 1.3, 0.4, 0.5)
Y_EMB = _table(CLASSES + 1, H, 2.3, 0.7, 0.6)  # row CLASSES: the null label
T_FREQ = 1.0 + torch.arange(H, dtype=torch.float64)
T_PHASE = 0.3 * torch.arange(H, dtype=torch.float64)


ABAR = SCHEDULE.alphas_bar.double()
STD = 0.7  # the data the net is close to denoising: N(0, STD^2)


def tiny_net(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """eps(x, t, y) = the exact eps of N(0, STD^2) data + 0.2 tanh(x W1 + temb(t) + yemb(y)) W2.

    The exact part, b x / (a^2 STD^2 + b^2) with a^2 = abar_t, b = sqrt(1 - abar_t), keeps
    every sampler's output of order 1; the tanh layer makes the function nonlinear in x and
    dependent on t and y. float64 inside, float32 out.
    """
    xd = x.double()
    a2 = ABAR[t][:, None]
    h = xd @ W1 + 0.5 * torch.sin(t.double()[:, None] / T * 2.1 * T_FREQ + T_PHASE)
    if y is not None:
        h = h + Y_EMB[torch.where(y < 0, CLASSES, y)]
    exact = torch.sqrt(1 - a2) * xd / (a2 * STD**2 + 1 - a2)
    return (exact + 0.2 * torch.tanh(h) @ W2).float()


def _x_T() -> torch.Tensor:
    return initial_noise((len(SEEDS), D), seeds=SEEDS)


def _x0() -> torch.Tensor:
    return _table(len(SEEDS), D, 0.37, 1.1, 1.2).float()


def _sampler(name: str, guided: bool, **kw: object) -> Callable[[], torch.Tensor]:
    cond: dict[str, object] = {"y": Y, "guidance_scale": GUIDANCE} if guided else {}

    def run() -> torch.Tensor:
        return SAMPLERS[name](
            tiny_net, SCHEDULE, _x_T(), num_steps=STEPS, seeds=SEEDS, **cond, **kw
        )

    return run


def _invert(guided: bool) -> Callable[[], torch.Tensor]:
    cond: dict[str, object] = {"y": Y, "guidance_scale": GUIDANCE} if guided else {}
    return lambda: ddim_invert(tiny_net, SCHEDULE, _x0(), num_steps=STEPS, **cond)


CASES: dict[str, Callable[[], torch.Tensor]] = {}
for _guided in (False, True):
    _g = "_guided" if _guided else ""
    CASES[f"ddpm{_g}"] = _sampler("ddpm", _guided)
    for _eta in (0.0, 1.0):
        CASES[f"ddim_eta{_eta:g}{_g}"] = _sampler("ddim", _guided, eta=_eta)
        CASES[f"dpmpp_eta{_eta:g}{_g}"] = _sampler("dpmpp", _guided, eta=_eta)
    CASES[f"ddim_invert{_g}"] = _invert(_guided)
    for _eta in (0.0, 1.0):
        CASES[f"dpmpp3m_eta{_eta:g}{_g}"] = _sampler("dpmpp3m", _guided, eta=_eta)
    CASES[f"unipc{_g}"] = _sampler("unipc", _guided)
    CASES[f"heun{_g}"] = _sampler("heun", _guided)
CASES["unipc_order3"] = _sampler("unipc", False, order=3)
CASES["dpmpp3m_eta0_reference_d2"] = _sampler("dpmpp3m", False, reference_d2=True)
CASES["ddim_eta0_v_prediction"] = _sampler("ddim", False, prediction="v")


def _summary(out: torch.Tensor) -> dict[str, object]:
    v = out.double()
    return {
        "shape": list(out.shape),
        "sum": float(v.sum()),
        "abs_sum": float(v.abs().sum()),
        "values": [float(a) for a in v.flatten()],
    }


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, object]]:
    if REGEN:
        cases = {name: _summary(run()) for name, run in CASES.items()}
        data = {"torch": torch.__version__, "cases": cases}
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        pytest.skip(f"DDPMKIT_REGEN_GOLDEN=1: wrote {GOLDEN}; run again without it")
    return json.loads(GOLDEN.read_text(encoding="utf-8"))["cases"]  # type: ignore[no-any-return]


def test_every_sampler_has_golden_numbers(golden: dict[str, dict[str, object]]) -> None:
    assert set(golden) == set(CASES)
    for name in SAMPLERS:  # a new sampler needs its own golden cases, plain and guided
        assert any(c.startswith(name) and not c.endswith("_guided") for c in golden), name
        assert any(c.startswith(name) and c.endswith("_guided") for c in golden), name


@pytest.mark.parametrize("case", list(CASES))
def test_sampler_output_matches_its_golden_numbers(
    case: str, golden: dict[str, dict[str, object]]
) -> None:
    want = golden[case]
    out = CASES[case]()
    assert list(out.shape) == want["shape"] and out.dtype == torch.float32
    got = out.double()
    values = torch.tensor(want["values"], dtype=torch.float64)
    torch.testing.assert_close(got.flatten(), values, rtol=RTOL, atol=ATOL)
    abs_sum = float(want["abs_sum"])  # type: ignore[arg-type]
    assert float(got.sum()) == pytest.approx(want["sum"], abs=RTOL * abs_sum + ATOL)
    assert float(got.abs().sum()) == pytest.approx(abs_sum, rel=RTOL)
    assert math.isfinite(abs_sum) and abs_sum > 0.1  # a real output, not zeros


def test_golden_cases_differ_from_each_other(golden: dict[str, dict[str, object]]) -> None:
    # Each case pins something of its own: eta, guidance, the sampler, the options all matter.
    sums = {name: round(float(g["sum"]), 4) for name, g in golden.items()}  # type: ignore[arg-type]
    assert len(set(sums.values())) == len(sums), sums
