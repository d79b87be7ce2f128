"""Classifier-free guidance in a limited noise interval (Kynkaanniemi et al. 2024)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import ddpmkit
from ddpmkit.cli import main
from ddpmkit.errors import ConfigError
from ddpmkit.sampling import SAMPLERS
from ddpmkit.sampling_core import NULL_LABEL, Guidance
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.training.config import load_config


def _model(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
    """A conditional eps-predictor whose two branches differ (null label -> no offset)."""
    off = torch.zeros(x.shape[0]) if y is None else torch.where(y == NULL_LABEL, 0.0, 0.3 + 0.1 * y)
    return 0.2 * x + off.view(-1, 1) * (t.view(-1, 1).float() / 1000.0)


def test_scale_is_w_exactly_where_sigma_is_in_the_interval() -> None:
    sched = NoiseSchedule.from_name("linear", 1000)
    g = Guidance(3.0, 0.5, 2.0)
    for t in range(0, 1000, 37):
        ab = float(sched.alphas_bar[t])
        sigma = math.sqrt((1 - ab) / ab)  # EDM noise level, computed here from abar directly
        assert g.at(sched, t) == (3.0 if 0.5 < sigma <= 2.0 else 1.0), t


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp", "unipc"])
def test_interval_edges_give_plain_guidance_and_no_guidance(sampler: str) -> None:
    sched = NoiseSchedule.from_name("linear", 1000)
    x_T = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % 3
    run = SAMPLERS[sampler]

    def draw(w: float | Guidance) -> Tensor:
        return run(_model, sched, x_T, num_steps=8, y=y, guidance_scale=w)

    everywhere, nowhere = Guidance(2.5), Guidance(2.5, 1e6, 1e7)
    assert torch.equal(draw(everywhere), draw(2.5))
    assert torch.equal(draw(nowhere), draw(1.0))
    partial = draw(Guidance(2.5, 0.3, 3.0))
    assert not torch.equal(partial, draw(2.5)) and not torch.equal(partial, draw(1.0))


def test_bad_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="sigma_lo < sigma_hi"):
        Guidance(2.0, 3.0, 1.0)


# --- the setting, end to end: [sample] section, model API, ddpm sample / ddpm eval flags ---

TINY_IMG = [
    "--set", 'data.name="digits"',
    "--set", "model.base_channels=16",
    "--set", "model.patch_size=1",
    "--set", "model.channel_mults=[1, 2]",
    "--set", "model.attention_resolutions=[4]",
    "--set", "model.groups=4",
    "--set", "diffusion.num_steps=100",
    "--set", "train.batch_size=32",
    "--set", "train.preview_every_min=0",
    "--set", "train.checkpoint_every=20",
    "--set", "sample.steps=5",
    "--set", "sample.num=12",
    "--set", "sample.guidance=3.0",
    "--set", "sample.guidance_interval=[0.5, 4.0]",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gi") / "img"
    argv = ["train", "fashion_mnist", "--out", str(out), "--steps", "20", "--no-progress"]
    assert main([*argv, *TINY_IMG]) == 0
    return out


def test_the_runs_interval_is_the_default_and_all_turns_it_off(run: Path) -> None:
    model = ddpmkit.load(run)
    assert model.settings.guidance_interval == (0.5, 4.0)
    assert "guidance 3 at sigma in (0.5, 4]" in model.resolve_settings().describe()
    default = model.sample(6, seed=3)
    everywhere = model.sample(6, seed=3, guidance_interval="all")
    nowhere = model.sample(6, seed=3, guidance_interval=(1e6, 1e7))
    plain = model.sample(6, seed=3, guidance=1.0, guidance_interval="all")
    assert np.array_equal(nowhere, plain)
    assert not np.array_equal(default, everywhere) and not np.array_equal(default, plain)
    # the interval's steps are guided as w = 3 everywhere would guide them: same as Guidance
    ts = model.resolve_settings().timesteps
    assert ts is None  # steps + spacing, not an explicit grid


def test_cli_flag_overrides_and_bad_values_are_one_line_errors(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s"
    argv = ["sample", str(run), "--num", "4", "--out", str(out), "--guidance-interval", "all"]
    assert main(argv) == 0
    line = capsys.readouterr().err.splitlines()[0]
    assert "guidance 3," in line and "at sigma" not in line  # guided at every step
    want = ddpmkit.load(run).sample(4, guidance_interval="all")  # (N, H, W, C)
    got = np.load(out / "samples.npz")["images"]  # (N, C, H, W)
    assert np.array_equal(np.moveaxis(got, 1, -1), want)
    for bad, says in [("x,y", "not two numbers"), ("1,2,3", "two numbers"), ("5,1", "sigma_lo <")]:
        code = main(["sample", str(run), "--num", "2", "--out", str(tmp_path / "b"),
                     "--guidance-interval", bad])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and err[-1].startswith("ddpm: error: --guidance-interval:")
        assert says in err[-1]
        assert "Traceback" not in "\n".join(err)


def test_config_rejects_a_bad_interval() -> None:
    with pytest.raises(ConfigError, match="guidance_interval"):
        load_config("fashion_mnist", ["sample.guidance_interval=[3.0, 1.0]"])
    with pytest.raises(ConfigError, match="guidance_interval"):
        load_config("fashion_mnist", ["sample.guidance_interval=[1.0]"])
