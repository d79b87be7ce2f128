"""The model API: ``ddpmkit.load(run).sample(...)``, and ``ddpm sample`` going through it.

A tiny class-conditional U-Net on the 8x8 digits (the fashion preset's [sample] section:
DPM-Solver++, log-SNR spacing, guidance 3 in a noise interval) and a tiny s_curve MLP (its
preset samples with ancestral DDPM) are trained for real; every assertion compares sampled values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpmkit
from ddpmkit.cli import main
from ddpmkit.errors import SettingsError
from ddpmkit.sampling import make_timesteps
from ddpmkit.viz.grid import to_uint8

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
]  # fmt: skip


@pytest.fixture(scope="module")
def img_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("api") / "img"
    argv = ["train", "fashion_mnist", "--out", str(out), "--steps", "20", "--no-progress"]
    assert main([*argv, *TINY_IMG]) == 0
    return out


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("api") / "toy"
    argv = ["train", "s_curve", "--out", str(out), "--steps", "200", "--no-progress"]
    assert (
        main([*argv, "--set", "train.sample_every=0", "--set", "train.checkpoint_every=200"]) == 0
    )
    return out


def test_load_exposes_network_schedule_config_and_names(img_run: Path) -> None:
    model = ddpmkit.load(img_run)
    assert isinstance(model, ddpmkit.TrainedModel)
    assert model.sample_shape == (1, 8, 8) and model.num_classes == 10 and model.is_image
    assert model.class_names == [str(c) for c in range(10)]
    assert model.schedule.num_steps == 100
    assert not model.network.training  # eval mode
    s = model.settings  # the run's [sample] section (fashion preset, steps/num overridden)
    assert (s.sampler, s.steps, s.spacing, s.guidance) == ("dpmpp", 5, "logsnr", 3.0)
    assert s.guidance_interval == (0.28, 5.42)
    assert s.origin == "the run's [sample] section"


def test_sample_forms_and_the_run_defaults(img_run: Path) -> None:
    model = ddpmkit.load(img_run)
    u8 = model.sample(4, seed=1)
    x = model.sample(4, seed=1, output="tensor")
    assert isinstance(u8, np.ndarray) and u8.dtype == np.uint8 and u8.shape == (4, 8, 8, 1)
    assert isinstance(x, torch.Tensor) and x.shape == (4, 1, 8, 8)
    assert float(x.abs().max()) <= 1.0 + 1e-6  # images: x0 clipped to [-1, 1]
    assert np.array_equal(u8, to_uint8(x).permute(0, 2, 3, 1).numpy())
    # the defaults are the run's own: naming them changes nothing, another guidance does
    named = model.sample(
        4, seed=1, sampler="dpmpp", steps=5, spacing="logsnr", guidance=3.0,
        guidance_interval=(0.28, 5.42),
    )  # fmt: skip
    assert np.array_equal(u8, named)
    assert not np.array_equal(u8, model.sample(4, seed=1, guidance=1.0))


@pytest.mark.parametrize(
    ("sampler", "eta"),
    [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0), ("dpmpp", 0.0), ("dpmpp", 1.0)],
)
def test_sample_i_depends_only_on_seed_plus_i(img_run: Path, sampler: str, eta: float) -> None:
    model = ddpmkit.load(img_run)
    kw = dict(sampler=sampler, steps=4, eta=eta, output="tensor")
    torch.manual_seed(123)  # the global RNG must play no part
    five = model.sample(5, seed=10, batch_size=2, **kw)  # type: ignore[arg-type]
    torch.manual_seed(456)
    one = model.sample(1, seed=13, labels=[3], **kw)  # type: ignore[arg-type]
    # sample 3 of seed 10 has class 3 and seed 13; batches of 2 and 1 may round differently
    torch.testing.assert_close(five[3], one[0], atol=1e-4, rtol=0)
    assert float((five[0] - five[1]).abs().max()) > 0.1


def test_labels_by_name_and_explicit_timesteps(img_run: Path) -> None:
    model = ddpmkit.load(img_run)
    by_name = model.sample(3, labels=["7"], seed=0, output="tensor")
    by_index = model.sample(3, labels=[7], seed=0, output="tensor")
    assert torch.equal(by_name, by_index)  # type: ignore[arg-type]
    grid = make_timesteps(model.schedule, 5, "logsnr")
    explicit = model.sample(3, labels=[7], timesteps=grid, seed=0, output="tensor")
    assert torch.equal(explicit, by_index)  # type: ignore[arg-type]
    other = model.sample(3, labels=[7], timesteps=[99, 60, 30, 10, 0], seed=0, output="tensor")
    assert not torch.equal(other, by_index)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(steps=101), "steps: must be in [1, 100], got 101"),
        (dict(sampler="ddpm", eta=0.5), "eta: applies to sampler ddim or dpmpp"),
        (dict(eta=2.0), "eta: must be in [0, 1], got 2.0"),
        (dict(spacing="cubic"), "spacing: 'cubic' is not allowed"),
        (dict(labels=["sock"]), "label: 'sock' is not a class of this model"),
        (dict(labels=[10]), "label: 10 is not a class of this model (0..9)"),
        (dict(timesteps=[10, 50]), "timesteps: must be strictly decreasing"),
        (dict(timesteps=[100, 0]), "timesteps: every index must be in [0, 100)"),
    ],
)
def test_bad_settings_are_one_line_errors(img_run: Path, kwargs: dict, message: str) -> None:
    model = ddpmkit.load(img_run)
    with pytest.raises(SettingsError) as e:
        model.sample(2, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_ddpm_sample_without_flags_uses_the_runs_sample_section(
    img_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["sample", str(img_run), "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert (
        "sampling 12: dpmpp, 5 logsnr steps, guidance 3 at sigma in (0.28, 5.42], eta 0 "
        "(the run's [sample] section)" in err
    )
    z = np.load(tmp_path / "a" / "samples.npz")
    assert z["images"].shape == (12, 1, 8, 8)  # sample.num
    assert z["labels"].tolist() == [i % 10 for i in range(12)]
    want = ddpmkit.load(img_run).sample(
        12, sampler="dpmpp", steps=5, guidance=3.0, guidance_interval=(0.28, 5.42)
    )
    assert np.array_equal(z["images"], np.asarray(want).transpose(0, 3, 1, 2))
    # a flag overrides one setting and the log line says so
    assert main(["sample", str(img_run), "--guidance", "1", "--out", str(tmp_path / "b")]) == 0
    assert "guidance 1, eta 0 (the run's [sample] section, with guidance given)" in (
        capsys.readouterr().err
    )


def test_ddpm_sample_dpmpp_with_eta_is_seeded(img_run: Path, tmp_path: Path) -> None:
    """--sampler dpmpp --eta 1 used torch's global RNG (seeds=None): neither --seed nor
    "sample i uses seed + i" held. Sample i must not depend on --num or on earlier calls."""
    common = ["sample", str(img_run), "--sampler", "dpmpp", "--eta", "1", "--steps", "4"]
    assert main([*common, "--num", "5", "--out", str(tmp_path / "five")]) == 0
    assert main([*common, "--num", "3", "--batch-size", "2", "--out", str(tmp_path / "three")]) == 0
    five = np.load(tmp_path / "five" / "samples.npz")["images"]
    three = np.load(tmp_path / "three" / "samples.npz")["images"]
    diff = np.abs(five[:3].astype(int) - three.astype(int))  # batch 2 vs 5: float rounding
    assert diff.max() <= 1 and diff.mean() < 0.01
    assert main([*common, "--num", "3", "--seed", "1", "--out", str(tmp_path / "s1")]) == 0
    shifted = np.load(tmp_path / "s1" / "samples.npz")["images"]
    # seed 1's sample 0 is seed 0's sample 1 only in its noise; its label differs (0 vs 1)
    assert np.abs(shifted.astype(int) - three.astype(int)).mean() > 5


def test_s_curve_run_samples_as_its_preset_says(
    toy_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ddpmkit.load(toy_run)
    saved = json.loads((toy_run / "config.json").read_text())["sample"]
    assert (model.settings.sampler, model.settings.steps) == (saved["sampler"], saved["steps"])
    assert saved["sampler"] == "ddpm"
    capsys.readouterr()
    assert main(["sample", str(toy_run), "--num", "300", "--out", str(tmp_path / "s")]) == 0
    assert f"sampling 300: ddpm, {saved['steps']} trailing steps" in capsys.readouterr().err
    points = np.load(tmp_path / "s" / "samples.npz")["points"]
    want = model.sample(300, sampler="ddpm", steps=saved["steps"])
    assert points.shape == (300, 2) and np.array_equal(points, np.asarray(want))
    dpm = model.sample(300, sampler="dpmpp")  # the old default of ddpm sample: another path
    assert not np.allclose(points, np.asarray(dpm))
