"""Faults and hostile files, with real processes: disk full, NaN loss, Ctrl-C, pickle payloads,
wrong architecture. Nothing is lost; nothing from a file is executed."""

from __future__ import annotations

import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from _processes import catches, kill_matching, restore_sigint
from ddpmkit.cli import main
from ddpmkit.training import checkpoint as ckpt

# sample.steps=2: the final preview (1,000 points through the sampler, the toys' figures) is most
# of a short moons run; no test here looks at it.
SMALL = [
    "--no-progress", "--set", "train.sample_every=0", "--set", "train.log_every=5",
    "--set", "sample.steps=2",
]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


@pytest.fixture(autouse=True)
def _kill_what_the_test_started(tmp_path: Path) -> Iterator[None]:
    # Every child names tmp_path (--out); a failed assertion must not leave one training.
    yield
    kill_matching(str(tmp_path))


def _cli(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ddpmkit.cli", *args], env=_env(), capture_output=True, text=True,
        timeout=300, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))


def test_write_error_during_checkpoint_keeps_the_previous_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = ["train", "moons", "--out", str(run), *SMALL, "--set", "train.checkpoint_every=10"]
    # The runs before and after the full disk are set-up, in this process; only the one that
    # must meet the file-size limit is a real process.
    assert main([*base, "--set", "train.steps=10"]) == 0
    before = ckpt.load_checkpoint(run)
    r = _cli([*base, "--set", "train.steps=20", "--resume"], preexec_fn=_limit_file_size)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr
    assert lines[-1].startswith("ddpm: error: could not write the checkpoint of step 20"), lines
    assert "step_00000010 is intact" in lines[-1] and "Traceback" not in r.stderr
    after = ckpt.load_checkpoint(run)  # still loads, checksums verified
    assert after.path == before.path and after.state["step"] == 10
    assert not any(ckpt.is_temporary(p.name) for p in (run / "checkpoints").iterdir())
    # With space back, resume finishes.
    assert main([*base, "--set", "train.steps=20", "--resume"]) == 0
    assert ckpt.load_checkpoint(run).state["step"] == 20


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = ["train", "moons", "--out", str(run), *SMALL, "--set", "train.checkpoint_every=4"]
    assert main([*base, "--set", "train.steps=4"]) == 0  # a good checkpoint at step 4 (set-up)
    # Then the learning rate explodes: the first update makes the weights infinite.
    r = _cli([
        *base, "--resume", "--set", "train.steps=200", "--set", "train.max_bad_steps=3",
        "--set", "train.lr=1e30", "--set", "train.warmup_steps=0", "--set", "train.grad_clip=0",
    ])  # fmt: skip
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "non-finite for 3 consecutive steps" in last and "lower train.lr" in last
    assert "last good checkpoint" in last and "Traceback" not in r.stderr
    assert r.stderr.count("step skipped") == 3
    found = ckpt.load_checkpoint(run)
    weights = list(found.model.values()) + list(found.ema.values())
    assert all(torch.isfinite(w).all() for w in weights)  # what was kept is usable


def test_ctrl_c_writes_a_final_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # SIGINT back to the default in the child: launched from a background job (`cmd &`, nohup)
    # the test runner ignores SIGINT, and an ignored SIGINT would be inherited by the child.
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddpmkit.cli", "train", "moons", "--out", str(run), *SMALL,
         "--set", "train.steps=1000000", "--set", "train.checkpoint_every=50"],
        env=_env(), stderr=subprocess.PIPE, text=True, preexec_fn=restore_sigint,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and ckpt.find_latest(run) is None and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)
        assert proc.poll() is None, "ddpm train exited before it was interrupted"
        assert catches(proc.pid, signal.SIGINT)  # the child's Python installed its handler
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    step = int(err.split("interrupted at step ")[1].split(";")[0])
    assert ckpt.load_checkpoint(run).state["step"] == step
    assert (run / "model" / "model.safetensors").is_file()


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payloads_never_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "moons", "--out", str(run), "--steps", "4", *SMALL]) == 0
    capsys.readouterr()
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Payload(marker))
    # 1. A planted pickle in place of the weights (what torch.load would execute).
    found = ckpt.find_latest(run)
    assert found is not None
    (found / "ema.safetensors").write_bytes(evil)
    (run / "model" / "model.safetensors").write_bytes(evil)
    for target in (str(found), str(run / "model")):
        assert (
            main(["sample", target, "--num", "2", "--steps", "2", "--out", str(tmp_path / "o")])
            == 2
        )
        err = capsys.readouterr().err
        assert "checksum" in err or "not a readable safetensors" in err
    # 2. A pickle/.pt file handed over directly is not a model folder.
    torch.save({"x": _Payload(marker)}, tmp_path / "model.pt")
    assert main(["sample", str(tmp_path / "model.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "not a ddpmkit run, checkpoint or model folder" in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "o").exists()


def test_wrong_architecture_and_garbage_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["train", "moons", "--out", str(run), "--steps", "4", *SMALL]) == 0
    capsys.readouterr()
    cfg_path = run / "model" / "config.json"
    meta = json.loads(cfg_path.read_text())
    meta["config"]["model"]["hidden"] = 64  # weights are for hidden = 128
    cfg_path.write_text(json.dumps(meta))
    assert main(["sample", str(run / "model"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("ddpm: error: ")
        and "wrong architecture" in err
        and len(err.splitlines()) == 1
    )
    cfg_path.write_text("{truncated")
    assert main(["sample", str(run / "model"), "--out", str(tmp_path / "o")]) == 2
    assert "config.json: not valid JSON" in capsys.readouterr().err


def test_resume_on_another_dataset_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["train", "moons", "--out", str(run), "--steps", "4", *SMALL]) == 0
    capsys.readouterr()
    code = main(["train", "moons", "--out", str(run), "--steps", "8", "--resume", *SMALL,
                 "--set", 'data.name="swiss_roll"'])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("ddpm: error: ")
    assert "trained on other data (dataset 'moons' there, 'swiss_roll' here)" in err[-1]
    assert ckpt.load_checkpoint(run).state["step"] == 4  # nothing was overwritten
