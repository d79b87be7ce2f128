"""Step schedules in use (issue 16.2): ``ddpm schedule``, ``ddpm sample/eval --schedule-from``
and a run's ``[sample] schedule_file`` (the optimiser itself: tests/test_step_schedule.py).

One tiny 2-D run for the whole file (s_curve, 20 training steps, T = 100; its [sample] sampler
is ddpm) whose config says ``schedule_file = "steps_4.json"``; ``ddpm schedule RUN --steps 4``
writes that file (unipc), and every way of sampling it is compared bit for bit: the run's
default, ``--schedule-from``, and the library's explicit ``timesteps=``. Precedence is in
ddpmkit/trained.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpmkit
from ddpmkit.cli import main
from ddpmkit.errors import ConfigError, SettingsError
from ddpmkit.step_schedule import StepSchedule, load_schedule, save_schedule
from ddpmkit.training.config import RunConfig, config_from_dict, validate_config

# ------------------------------------------------------- ddpm schedule, ddpm sample --schedule-from


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sched") / "toy"
    argv = ["train", "s_curve", "--out", str(out), "--steps", "20", "--no-progress"]
    sets = ["train.sample_every=0", "train.checkpoint_every=20", "train.batch_size=64"]
    sets += ["data.num_points=2000", 'sample.schedule_file="steps_4.json"']
    assert main([*argv, *[a for s in sets for a in ("--set", s)]]) == 0
    assert not (out / "steps_4.json").exists()  # written by `ddpm schedule` (fixture run)
    return out


@pytest.fixture(scope="module")
def run(toy_run: Path) -> Path:
    """The run with its schedule_file written by ``ddpm schedule`` (no --out: the run's file)."""
    argv = ["schedule", str(toy_run), "--steps", "4", "--batch", "8", "--reference-steps", "20"]
    assert main([*argv, "--max-evals", "6"]) == 0
    assert (toy_run / "steps_4.json").is_file()
    return toy_run


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("ddpm: error")]
    assert len(lines) == 1, lines
    return lines[0]


def test_schedule_then_sample_from_it(
    toy_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "steps_4.json"
    argv = ["schedule", str(toy_run), "--steps", "4", "--batch", "32", "--reference-steps", "30"]
    assert main([*argv, "--max-evals", "12", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    # s_curve samples with ddpm, which has no per-sample reference: unipc is optimised instead
    assert data["sampler"] == "unipc" and data["steps"] == 4 and data["num_train_steps"] == 100
    assert data["timesteps"][0] == 99 and len(data["timesteps"]) == 4
    assert data["objective"] <= data["baseline"] and data["evaluations"] <= 12
    assert data["seed"] == 10_000 and data["batch"] == 32
    capsys.readouterr()
    a, b = tmp_path / "a", tmp_path / "b"
    assert (
        main(["sample", str(toy_run), "--schedule-from", str(out), "--num", "6", "--out", str(a)])
        == 0
    )
    assert f"unipc, 4 timesteps from {out}" in capsys.readouterr().err
    ts = ",".join(str(t) for t in data["timesteps"])
    explicit = ["--sampler", "unipc", "--timesteps", ts, "--num", "6", "--out", str(b)]
    assert main(["sample", str(toy_run), *explicit]) == 0
    pa, pb = np.load(a / "samples.npz")["points"], np.load(b / "samples.npz")["points"]
    assert np.array_equal(pa, pb) and np.isfinite(pa).all()


def test_default_output_path_without_a_schedule_file(toy_run: Path, tmp_path: Path) -> None:
    # a run whose config names no schedule_file (every run before the key): CHECKPOINT/steps_N
    old = shutil.copytree(toy_run, tmp_path / "old")
    for meta in [*old.glob("checkpoints/step_*/state.json"), old / "model" / "config.json"]:
        data = json.loads(meta.read_text())
        del data["config"]["sample"]["schedule_file"]
        meta.write_text(json.dumps(data))
    argv = ["schedule", str(old), "--sampler", "ddim", "--steps", "2", "--batch", "8"]
    assert main([*argv, "--reference-steps", "20", "--max-evals", "6"]) == 0
    saved = load_schedule(old / "steps_2.json", 100)
    assert saved.sampler == "ddim" and len(saved.timesteps) == 2
    assert ddpmkit.load(old).resolve_settings().sampler == "ddpm"  # its [sample] sampler


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, [], "--schedule-from: .*missing; run `ddpm schedule"),
        ("{oops", [], "--schedule-from: .*not valid JSON"),
        ('{"timesteps": [99, 40, 0], "steps": 5, "sampler": "unipc"}', [], '"steps" is 5'),
        ('{"timesteps": [99, 0, 40], "sampler": "unipc"}', [], "strictly decreasing"),
        ('{"timesteps": [99, 40, 0], "sampler": "unipc"}', ["--steps", "3"], "replaces --steps"),
        ('{"timesteps": [99, 40, 0], "sampler": "unipc"}', ["--sampler", "ddim"], "for unipc"),
    ],
)  # fmt: skip
def test_sample_schedule_from_bad_inputs(
    toy_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    extra: list[str],
    message: str,
) -> None:
    path = tmp_path / "s.json"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    argv = ["sample", str(toy_run), "--schedule-from", str(path), "--out", str(out), *extra]
    assert main(argv) == 2
    line = _err(capsys)
    assert re.search(message, line), line
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], r"--steps: must be in \[1, 99\]"),
        (["--steps", "100"], r"--steps: must be in \[1, 99\]"),
        (["--steps", "5", "--reference-steps", "5"], r"--reference-steps: must be in \[6, 100\]"),
        (["--batch", "0"], "--batch: must be >= 1"),
    ],
)
def test_schedule_bad_inputs(
    toy_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "s.json"
    assert main(["schedule", str(toy_run), "--out", str(out), *extra]) == 2
    assert re.search(message, _err(capsys))
    assert not out.exists()


def test_schedule_of_a_missing_run_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schedule", str(tmp_path / "nothing"), "--out", str(tmp_path / "s.json")]) == 2
    assert "nothing" in _err(capsys)
    assert not (tmp_path / "s.json").exists()


# ------------------------------------------------------------- the run's schedule_file, ddpm eval


def _points(folder: Path) -> np.ndarray:
    return np.load(folder / "samples.npz")["points"]


def _copy(run: Path, tmp_path: Path) -> Path:
    """The run without its schedule file (to break the file without touching the fixture)."""
    dst = shutil.copytree(run, tmp_path / "run")
    (dst / "steps_4.json").unlink()
    return dst


def test_schedule_file_is_the_default_and_equals_schedule_from_and_timesteps(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = load_schedule(run / "steps_4.json", 100)
    assert grid.sampler == "unipc" and len(grid.timesteps) == 4  # ddpm has no ODE: unipc
    capsys.readouterr()
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["sample", str(run), "--num", "6", "--out", str(a)]) == 0
    assert f"unipc, 4 timesteps from {run / 'steps_4.json'}" in capsys.readouterr().err
    argv = ["sample", str(run), "--schedule-from", str(run / "steps_4.json"), "--num", "6"]
    assert main([*argv, "--out", str(b)]) == 0
    model = ddpmkit.load(run)
    explicit = model.sample(6, sampler="unipc", timesteps=grid.timesteps, output="tensor")
    assert isinstance(explicit, torch.Tensor)
    assert np.array_equal(_points(a), explicit.numpy()) and np.isfinite(_points(a)).all()
    assert np.array_equal(_points(a), _points(b))
    # the library's default is the same, and so is the model loaded from the checkpoint or the
    # exported folder (a relative schedule_file is read from the run folder)
    assert np.array_equal(model.sample(6, output="tensor").numpy(), _points(a))  # type: ignore[union-attr]
    s = model.resolve_settings()
    assert (s.sampler, s.timesteps, s.schedule_file) == (
        "unipc",
        grid.timesteps,
        str(run / "steps_4.json"),
    )
    ckpt = sorted((run / "checkpoints").glob("step_*"))[-1]
    for folder in (ckpt, run / "model"):
        assert ddpmkit.load(folder).schedule_file == run / "steps_4.json"


def test_explicit_grid_or_other_sampler_replaces_the_file_with_a_note(run: Path) -> None:
    model = ddpmkit.load(run)
    own = str(run / "steps_4.json")
    steps = model.resolve_settings(steps=3)  # the section's sampler (ddpm), 3 steps
    assert (steps.sampler, steps.steps, steps.schedule_file) == ("ddpm", 3, None)
    assert steps.describe().endswith(f"with steps given; its schedule_file {own} not used)")
    other = model.resolve_settings(sampler="ddim")
    assert (other.sampler, other.timesteps, other.schedule_file) == ("ddim", None, None)
    assert "not used" in other.describe()
    same = model.resolve_settings(sampler="unipc")  # the file's own sampler keeps the file
    assert same.schedule_file == own and "not used" not in same.describe()


def test_eval_reports_the_schedule_file(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two = save_schedule(
        tmp_path / "ddim_2.json",
        StepSchedule((99, 0), "ddim", 2, 0.0, 0.0, "trailing", num_train_steps=100),
    )
    cases = {
        "own": ([], run / "steps_4.json", "unipc", 4),
        "given": (["--schedule-from", str(two)], two, "ddim", 2),
    }
    for name, (extra, path, sampler, steps) in cases.items():
        out = tmp_path / name
        assert main(["eval", str(run), "--num", "8", "--out", str(out), *extra]) == 0
        report = json.loads((out / "eval.json").read_text())
        s = report["samples"]
        assert (s["schedule_file"], s["sampler"], s["steps"]) == (str(path), sampler, steps)
        assert f"{sampler} sampler, {steps} steps (timesteps from {path})" in report["depends_on"]
        assert f"timesteps from {path}" in capsys.readouterr().out  # the printed table


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, [], r"^ddpm: error: sample\.schedule_file: .*steps_4\.json is missing; write it "
                   r"with `ddpm schedule .*--out"),
        ("{oops", [], r"^ddpm: error: sample\.schedule_file: .*not valid JSON"),
        ('{"timesteps": [99, 0], "sampler": "unipc", "num_train_steps": 1000}', [],
         r"sample\.schedule_file: .*made for a model with T = 1000"),
        ('{"timesteps": [99, 0], "sampler": "euler"}', [], r"sample\.schedule_file: .*'euler'"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_a_bad_runs_file_is_one_line_and_an_explicit_grid_bypasses_it(
    run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    content: str | None,
    extra: list[str],
    message: str,
) -> None:
    copy = _copy(run, tmp_path)
    if content is not None:
        (copy / "steps_4.json").write_text(content)
    out = tmp_path / "out"
    num = ["--num", "8"]
    assert main([command, str(copy), *num, "--out", str(out), *extra]) == 2
    line = _err(capsys)
    assert re.search(message, line), line
    assert not out.exists()
    # --steps asks for another grid: the run's file is not read
    assert main([command, str(copy), *num, "--steps", "3", "--out", str(out)]) == 0


@pytest.mark.parametrize(
    ("command", "content", "extra", "message"),
    [
        ("eval", None, [], r"--schedule-from: .*s\.json: missing; run `ddpm schedule"),
        ("eval", "[1]", [], r"--schedule-from: .*expected a JSON object"),
        ("eval", "GRID", ["--steps", "3"], "--schedule-from: replaces --steps; give one"),
        ("eval", "GRID", ["--sampler", "ddim"], "optimised for unipc, not ddim; give no sampler"),
        ("sample", "GRID", ["--sampler", "ddim"], "optimised for unipc, not ddim; give no sampler"),
        ("sample", "GRID", ["--timesteps", "99,0"], "--schedule-from: replaces --timesteps"),
    ],
)  # fmt: skip
def test_schedule_from_bad_inputs_are_one_line(
    run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    content: str | None,
    extra: list[str],
    message: str,
) -> None:
    path = tmp_path / "s.json"
    if content == "GRID":
        shutil.copy(run / "steps_4.json", path)
    elif content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    argv = [command, str(run), "--schedule-from", str(path), "--num", "8", "--out", str(out)]
    assert main([*argv, *extra]) == 2
    line = _err(capsys)
    assert re.search(message, line), line
    assert not out.exists()


def test_schedule_from_on_samples_already_drawn_is_refused(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    npz = tmp_path / "pts.npz"
    np.savez(npz, points=np.zeros((8, 2), dtype=np.float32))
    argv = ["eval", str(npz), "--dataset", "s_curve", "--schedule-from", str(run / "steps_4.json")]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "--schedule-from: only for a model SOURCE" in _err(capsys)


def test_library_schedule_from_and_config_checks(run: Path) -> None:
    model = ddpmkit.load(run)
    with pytest.raises(SettingsError, match="schedule_from: replaces steps; give one"):
        model.sample(2, schedule_from=run / "steps_4.json", steps=3)
    x = model.sample(2, schedule_from=run / "steps_4.json", output="tensor")
    y = model.sample(2, output="tensor")
    assert torch.equal(x, y)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"sample\.schedule_file: .* leading or trailing"):
        validate_config(config_from_dict(RunConfig, {"sample": {"schedule_file": " s.json"}}))
