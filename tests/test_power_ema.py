"""Power-function EMAs (EDM2): the exponent, the averaging profile, the files, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import ddpmkit
from ddpmkit.errors import ConfigError
from ddpmkit.fit import train
from ddpmkit.training.config import load_config
from ddpmkit.training.power_ema import (
    PowerEMA,
    gamma_from_sigma_rel,
    power_ema_dir,
    sigma_rel_of_gamma,
)


@pytest.mark.parametrize(("sigma_rel", "gamma"), [(0.05, 16.97), (0.10, 6.94)])
def test_gamma_matches_edm2s_published_values(sigma_rel: float, gamma: float) -> None:
    # Karras et al. 2024, Sec. 3: sigma_rel 0.05 <-> gamma 16.97, 0.10 <-> 6.94.
    assert gamma_from_sigma_rel(sigma_rel) == pytest.approx(gamma, abs=0.01)


def test_sigma_rel_of_gamma_is_the_std_of_the_power_profile() -> None:
    # The profile (gamma + 1) s^gamma on [0, 1]: moments by numerical integration.
    for gamma in (0.0, 2.5, 10.0):
        s = torch.linspace(0, 1, 200_001, dtype=torch.float64)
        p = (gamma + 1) * s**gamma
        mean = torch.trapezoid(s * p, s)
        var = torch.trapezoid((s - mean) ** 2 * p, s)
        assert sigma_rel_of_gamma(gamma) == pytest.approx(math.sqrt(float(var)), rel=1e-4)


def test_gamma_from_sigma_rel_rejects_lengths_out_of_range() -> None:
    for bad in (0.0, 0.29, -0.1):
        with pytest.raises(ValueError, match="sigma_rel"):
            gamma_from_sigma_rel(bad)


def test_the_average_weights_step_i_as_a_power_profile_of_relative_std_sigma_rel() -> None:
    # The EMA is linear in the weight sequence: feeding w_i = (1, i, i^2) gives the profile's
    # total mass, mean and second moment. Continuous limit (N large): mass 1, mean
    # N (gamma + 1) / (gamma + 2), std sigma_rel * N.
    n, sigma_rel = 4000, 0.1
    net = nn.Linear(3, 1, bias=False).double()
    ema = PowerEMA(net, sigma_rel)
    for i in range(1, n + 1):
        with torch.no_grad():
            net.weight.copy_(torch.tensor([[1.0, i, float(i) ** 2]], dtype=torch.float64))
        ema.update(net)
    mass, m1, m2 = ema.model.weight[0].tolist()
    g = ema.gamma
    assert mass == pytest.approx(1.0, abs=1e-9)
    assert m1 / n == pytest.approx((g + 1) / (g + 2), rel=2e-3)
    assert math.sqrt(m2 - m1**2) / n == pytest.approx(sigma_rel, rel=1e-2)


TINY = [
    'model.kind="mlp"',
    'train.precision="fp32"',
    "train.log_every=2",
    "train.sample_every=0",
    "sample.steps=3",
    "sample.num=4",
    "train.ema_sigma_rels=[0.05, 0.2]",
]


def test_config_rejects_bad_lengths() -> None:
    with pytest.raises(ConfigError, match="ema_sigma_rels"):
        load_config("moons", ["train.ema_sigma_rels=[0.5]"])
    with pytest.raises(ConfigError, match="repeat"):
        load_config("moons", ["train.ema_sigma_rels=[0.1, 0.1]"])


def test_each_average_is_a_loadable_model_and_resume_continues_it(tmp_path: Path) -> None:
    n = 8

    def cfg(name: str):  # noqa: ANN202
        out = (tmp_path / name).as_posix()
        return load_config("moons", [*TINY, f'out_dir="{out}"', f"train.steps={n}"])

    train(cfg("full"), progress=False, log=lambda s: None)
    half = cfg("half")
    train(half, progress=False, log=lambda s: None, stop_after=n // 2)
    train(half, resume=True, progress=False, log=lambda s: None)
    for sr in (0.05, 0.2):
        a, b = power_ema_dir(tmp_path / "full", sr), power_ema_dir(tmp_path / "half", sr)
        ma, mb = ddpmkit.load(a), ddpmkit.load(b)
        # Resume continues each average exactly (training itself resumes bit-exactly).
        for (k, va), (_, vb) in zip(
            ma.network.state_dict().items(), mb.network.state_dict().items(), strict=True
        ):
            assert torch.equal(va, vb), (sr, k)
        assert ma.sample(4, seed=1).shape == (4, 2)
    # The two lengths are different averages, and neither is the classic EMA.
    w = [
        next(iter(ddpmkit.load(p).network.state_dict().values()))
        for p in (power_ema_dir(tmp_path / "full", 0.05), power_ema_dir(tmp_path / "full", 0.2))
    ]
    assert not torch.equal(w[0], w[1])


def test_an_average_missing_on_resume_restarts_and_says_so(tmp_path: Path) -> None:
    out = (tmp_path / "run").as_posix()
    cfg = load_config("moons", [*TINY, f'out_dir="{out}"', "train.steps=6"])
    train(cfg, progress=False, log=lambda s: None, stop_after=3)
    folder = power_ema_dir(tmp_path / "run", 0.05)
    (folder / "model.safetensors").write_bytes(b"broken")
    lines: list[str] = []
    train(cfg, resume=True, progress=False, log=lines.append)
    assert any("sigma_rel 0.05" in s and "restarts" in s for s in lines), lines
    assert ddpmkit.load(folder).sample(2, seed=0).shape == (2, 2)


def test_the_runs_own_average_can_be_a_power_ema_and_resumes_exactly(tmp_path: Path) -> None:
    # train.ema_sigma_rel = 0.1: the run's model/ is the power EMA that the callback also keeps
    # for ema_sigma_rels = [0.1] (two copies of one average, updated by different paths).
    n = 8

    def cfg(name: str):  # noqa: ANN202
        out = (tmp_path / name).as_posix()
        extra = [*TINY[:-1], "train.ema_sigma_rels=[0.1]", "train.ema_sigma_rel=0.1"]
        return load_config("moons", [*extra, f'out_dir="{out}"', f"train.steps={n}"])

    train(cfg("full"), progress=False, log=lambda s: None)
    half = cfg("half")
    train(half, progress=False, log=lambda s: None, stop_after=n // 2)
    train(half, resume=True, progress=False, log=lambda s: None)
    own = ddpmkit.load(tmp_path / "full").network.state_dict()
    side = ddpmkit.load(power_ema_dir(tmp_path / "full", 0.1)).network.state_dict()
    resumed = ddpmkit.load(tmp_path / "half").network.state_dict()
    for k in own:
        assert torch.allclose(own[k], side[k], atol=1e-6), k
        assert torch.equal(own[k], resumed[k]), k
    classic = load_config(
        "moons", [*TINY[:-1], f'out_dir="{(tmp_path / "c").as_posix()}"', f"train.steps={n}"]
    )
    train(classic, progress=False, log=lambda s: None)
    other = ddpmkit.load(tmp_path / "c").network.state_dict()
    assert any(not torch.allclose(own[k], other[k]) for k in own)
    with pytest.raises(ConfigError, match="ema_sigma_rel"):
        load_config("moons", ["train.ema_sigma_rel=0.3"])
