"""User mistakes on the CLI: one clear line on stderr, exit 2, no traceback, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpmkit.cli import main


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("ddpm: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, err = run_main(["train", str(tmp_path / "nope.toml"), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "nope.toml", "does not exist")
    assert not out.exists()


def test_malformed_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "bad.toml", "[train\nsteps = 3\n")
    out = tmp_path / "run"
    code, err = run_main(["train", str(cfg), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "bad.toml", "not valid TOML")
    assert not out.exists()


def test_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "c.toml", '[data]\nname = "moons"\n[train]\nstepz = 3\n')
    out = tmp_path / "run"
    code, err = run_main(["train", str(cfg), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "unknown key 'train.stepz'", "steps")
    assert not out.exists()


@pytest.mark.parametrize(
    "override, needle",
    [
        ('diffusion.schedule="cosin"', "diffusion.schedule: 'cosin' is not allowed"),
        ("diffusion.num_steps=0", "diffusion.num_steps: must be >= 1"),
        ('train.lr="fast"', "train.lr: expected a number"),
        ("train.ema_decay=1.5", "train.ema_decay"),
        ('sample.sampler="euler"', "sample.sampler"),
        ('name="../escape"', "plain folder name"),
    ],
)
def test_invalid_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, needle: str
) -> None:
    out = tmp_path / "run"
    code, err = run_main(["train", "moons", "--out", str(out), "--set", override], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_invalid_custom_betas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(
        tmp_path / "c.toml",
        '[data]\nname = "moons"\n[model]\nkind = "mlp"\n'
        '[diffusion]\nschedule = "custom"\nnum_steps = 3\nbetas = [0.1, 0.2, 1.5]\n'
        "[sample]\nsteps = 3\n",
    )
    out = tmp_path / "run"
    code, err = run_main(["train", str(cfg), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "diffusion.betas", "outside (0, 1)")
    assert not out.exists()


def test_model_that_does_not_fit_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, err = run_main(
        ["train", "moons", "--out", str(out), "--set", 'model.kind="unet"'], capsys
    )
    assert_one_line_error(code, err, "model.kind", "needs image data")
    assert not out.exists()


def test_wrong_shaped_model_output_is_caught_before_training(tmp_path: Path) -> None:
    from ddpmkit.training.build import TrainData
    from ddpmkit.training.config import ConfigError
    from ddpmkit.training.loop import _preflight

    data = TrainData(torch.zeros(10, 2), None, [], "toy", "test")
    bad = torch.nn.Linear(2, 3)
    with pytest.raises(
        ConfigError, match=r"output shape \[2, 3\] differs from input shape \[2, 2\]"
    ):
        _preflight(lambda x, t: bad(x), data, torch.device("cpu"))  # type: ignore[arg-type]


def test_sample_from_a_folder_that_is_not_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "junk").mkdir()
    out = tmp_path / "out"
    code, err = run_main(["sample", str(tmp_path / "junk"), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "not a ddpmkit run, checkpoint or model folder")
    assert not out.exists()


def test_real_process_prints_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    r = subprocess.run(
        [sys.executable, "-m", "ddpmkit.cli", "train", str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"ddpm: error: config file {str(tmp_path / 'missing.toml')!r} does not exist"
    ]
    assert not (tmp_path / "runs").exists()
