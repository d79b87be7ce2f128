"""Resume is exact, and a SIGKILL at a random moment never leaves an unusable checkpoint."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _processes import kill_matching
from ddpmkit.fit import train
from ddpmkit.training import checkpoint as ckpt
from ddpmkit.training.config import load_config

TINY_UNET = [
    'data.name="digits"',
    'model.kind="unet"',
    "model.base_channels=16",
    "model.channel_mults=[1, 2]",
    "model.attention_resolutions=[4]",
    "model.groups=4",
    "model.num_res_blocks=1",
    "model.dropout=0.1",  # dropout makes the global RNG matter for exactness
    "diffusion.num_steps=100",
    "train.batch_size=16",
    "train.log_every=2",
    "train.sample_every=0",
    "train.checkpoint_every=1000",
    'train.precision="fp32"',
    "sample.steps=3",
    "sample.num=4",
]


@pytest.fixture(autouse=True)
def _kill_what_the_test_started(tmp_path: Path) -> Iterator[None]:
    # Every child names tmp_path (its run folder): a failed assertion must not leave one running.
    yield
    kill_matching(str(tmp_path))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    found = ckpt.find_latest(run)
    assert found is not None
    return {
        **load_file(found / "model.safetensors"),
        **{f"ema.{k}": v for k, v in load_file(found / "ema.safetensors").items()},
    }


@pytest.mark.parametrize(
    # sample.steps=2: the final preview is most of an 8-step moons run and no part of its weights.
    "extra",
    [
        ['model.kind="mlp"', 'data.name="moons"', 'train.precision="fp32"', "sample.steps=2"],
        TINY_UNET,
    ],
)
def test_half_plus_resume_equals_full(tmp_path: Path, extra: list[str]) -> None:
    n = 8
    extra = [*extra, "train.log_every=2"]
    full = load_config(
        "moons", [*extra, f'out_dir="{(tmp_path / "full").as_posix()}"', f"train.steps={n}"]
    )
    train(full, progress=False, log=lambda s: None)
    half = load_config(
        "moons", [*extra, f'out_dir="{(tmp_path / "half").as_posix()}"', f"train.steps={n}"]
    )
    train(half, progress=False, log=lambda s: None, stop_after=n // 2)
    assert ckpt.find_latest(tmp_path / "half").name == f"step_{n // 2:08d}"
    train(half, resume=True, progress=False, log=lambda s: None)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "half")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The metrics of the resumed run continue the same losses.
    la = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "half" / "metrics.jsonl").read_text().splitlines()
    import json

    assert [json.loads(x)["loss"] for x in la] == [json.loads(x)["loss"] for x in lb]


def test_sigkill_at_random_moments_leaves_loadable_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "ddpmkit.cli",
        "train",
        "moons",
        "--out",
        str(run),
        "--no-progress",
        "--set",
        "train.steps=100000",
        "--set",
        "train.checkpoint_every=5",
        "--set",
        "train.keep_checkpoints=2",
        "--set",
        "train.log_every=5",
        "--set",
        "train.sample_every=0",
        "--set",
        "sample.steps=2",  # the final run's preview: not what this test is about
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    rnd = random.Random(0)
    last_step = 0
    for trial in range(5):
        cmd = args + (["--resume"] if trial else [])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait until the run has checkpointed at least once past where it was, then kill at random.
        deadline = time.time() + 60
        while time.time() < deadline:
            found = ckpt.find_latest(run)
            if found is not None and int(found.name[5:]) > last_step:
                break
            time.sleep(0.05)
        time.sleep(rnd.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        found = ckpt.find_latest(run)
        assert found is not None
        loaded = ckpt.load_checkpoint(found)  # verifies the checksums of every file
        assert loaded.state["step"] >= last_step
        last_step = loaded.state["step"]
        # Nothing half-written where a loader looks: only complete step folders, 'latest' and
        # temporaries that loaders ignore (a kill while 'latest' is rewritten leaves its
        # '.latest.tmp-PID' file; CI caught that case once).
        for p in (run / "checkpoints").iterdir():
            assert p.name == "latest" or ckpt.is_temporary(p.name) or (p / "state.json").is_file()
    # A final resume runs to completion from the last checkpoint.
    r = subprocess.run(
        [*args, "--set", f"train.steps={last_step + 10}", "--resume"],  # later --set wins
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    final = ckpt.find_latest(run)
    assert final is not None and final.name == f"step_{last_step + 10:08d}"
    assert not any(ckpt.is_temporary(p.name) for p in (run / "checkpoints").iterdir())
