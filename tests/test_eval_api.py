"""The evaluation as a library call: ``evaluate(source, EvalOptions(...))`` without argparse,
the same report and the same one-line errors as ``ddpm eval``, and flags that match the options'
fields and defaults. Inputs are samples files (no model is trained)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import ddpmkit.evaluation
from ddpmkit.cli import build_parser, main
from ddpmkit.errors import ConfigError
from ddpmkit.evaluation import EvalOptions, evaluate


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's ~/.cache: the default cache goes under the test's folder."""
    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path / "ddpmkit_cache"))


def real_digits(tmp_path: Path, n: int = 300) -> tuple[Path, np.ndarray]:
    """n digits training images with their labels in an .npz, and the indices picked."""
    from ddpmkit.data.digits import load_digits_data

    d = load_digits_data()
    assert d.labels is not None
    pick = np.random.default_rng(0).permutation(len(d.images))[:n]
    path = tmp_path / "real.npz"
    np.savez(path, images=d.images.numpy()[pick], labels=d.labels.numpy()[pick])
    return path, pick


def test_flags_are_the_options_fields_with_their_defaults() -> None:
    args = vars(build_parser().parse_args(["eval", "SRC"]))
    flags = {k: v for k, v in args.items() if k not in ("command", "source", "handler")}
    assert flags == dataclasses.asdict(EvalOptions())
    with pytest.raises(dataclasses.FrozenInstanceError):
        EvalOptions().num = 5  # type: ignore[misc]


def test_library_call_on_a_samples_file_matches_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ddpmkit.evaluation.evaluate is evaluate
    src, pick = real_digits(tmp_path)
    lines: list[str] = []
    opts = EvalOptions(dataset="digits", memorisation=4, out=tmp_path / "lib", no_cache=True)
    report, files = evaluate(src, opts, log=lines.append)
    out = tmp_path / "lib"
    assert files == [out / "eval.json", out / "nearest.png", out / "nearest.npz"]
    assert json.loads(files[0].read_text()) == json.loads(json.dumps(report))
    assert any("extracting features of 300 samples" in line for line in lines)
    assert report["source"] == {"kind": "npz", "path": str(src)}
    assert report["samples"] == {
        "num": 300, "shape": [1, 8, 8], "weights": None, "labels": "from the file"
    }  # fmt: skip
    assert report["reference"]["dataset"] == "digits" and report["reference_cache"] == "off"
    m = report["metrics"]
    assert set(m) == {"fd", "precision", "recall", "inception_score", "class_accuracy"}
    # Real digits: FD 3.9 on 300 samples (uniform noise: 427), every one classified right.
    assert m["fd"] < 10 and m["precision"] > 0.85 and m["recall"] > 0.85
    assert m["class_accuracy"] > 0.97 and m["inception_score"] > 8
    # Training images "generated": every one is an exact copy of a training image.
    mem = report["memorisation"]
    assert mem["exact_copies"] == 300 and len(mem["closest"]) == 4
    assert all(int(pick[c["sample"]]) == c["train"] for c in mem["closest"])

    # ddpm eval with the same options writes the same report.
    cli_out = tmp_path / "cli"
    argv = ["eval", str(src), "--dataset", "digits", "--memorisation", "4", "--no-cache"]
    assert main([*argv, "--out", str(cli_out)]) == 0, capsys.readouterr().err
    assert json.loads((cli_out / "eval.json").read_text()) == json.loads(json.dumps(report))

    # The first N samples of the file, without the memorisation check.
    small, files = evaluate(src, dataclasses.replace(opts, num=50, memorisation=0), log=str)
    assert small["samples"]["num"] == 50 and small["memorisation"] is None
    assert files == [out / "eval.json"] and small["metrics"]["fd"] > m["fd"]


def test_library_call_on_2d_points(tmp_path: Path) -> None:
    from ddpmkit.data.toy2d import make_toy

    src = tmp_path / "points.npz"
    np.savez(src, points=make_toy("moons", 500, seed=3).numpy())
    report, files = evaluate(src, EvalOptions(dataset="moons", out=tmp_path / "o"), log=str)
    assert files == [tmp_path / "o" / "eval.json"]
    m = report["metrics"]
    assert report["samples"]["num"] == 500 and report["reference"]["size"] == 500
    # Fresh data against fresh data: at the level of the data floor.
    assert m["sliced_wasserstein"] < 3 * m["sliced_wasserstein_data_floor"] + 0.02
    assert report["likelihood"] is None and report["memorisation"] is None


@pytest.mark.parametrize(
    ("options", "flags", "message"),
    [
        (dict(num=2), ["--num", "2"], "--num: must be >= 4, got 2"),
        (dict(batch_size=0), ["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
        (dict(ref_num=3), ["--ref-num", "3"], "--ref-num: must be > 3, got 3"),
        (dict(memorisation=-1), ["--memorisation", "-1"], "--memorisation: must be >= 0, got -1"),
        (dict(steps=5), ["--steps", "5"], "--steps: only for a model SOURCE"),
        (dict(raw=True, seed=1), ["--raw", "--seed", "1"], "--seed, --raw: only for a model"),
    ],
)
def test_bad_options_raise_the_command_lines_one_line_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: dict[str, object],
    flags: list[str],
    message: str,
) -> None:
    src, _ = real_digits(tmp_path, n=10)
    out = tmp_path / "out"
    opts = EvalOptions(dataset="digits", out=out, **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as e:
        evaluate(src, opts, log=str)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    code = main(["eval", str(src), "--dataset", "digits", *flags, "--out", str(out)])
    assert code == 2
    assert capsys.readouterr().err == f"ddpm: error: {e.value}\n"
    assert not out.exists()


def test_library_only_checks(tmp_path: Path) -> None:
    """What argparse's choices catch on the command line, check() catches for library calls."""
    src, _ = real_digits(tmp_path, n=10)
    bad = EvalOptions(dataset="digits", ref_split="val", out=tmp_path / "o")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^--ref-split: must be one of test, train, got 'val'$"):
        evaluate(src, bad, log=str)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="--out: .* exists and is not a folder"):
        EvalOptions(out=tmp_path / "file").check()
    assert not (tmp_path / "o").exists()
