"""DDP with real processes (torchrun, gloo on CPU).

1. Two processes at batch B and one process at batch 2B draw the same global batches (see
   training/loop.py) and DDP averages the two halves' gradients, so after a few AdamW steps both
   reach the same weights up to float summation order. Tolerance: Adam divides by
   sqrt(v) + eps, so a relative gradient difference of ~1e-7 (fp32 reduction order) becomes a
   parameter difference of at most ~lr * 1e-7-ish per step where gradients are large, and up to
   ~lr where |g| ~ eps; with lr = 1e-3, 5 steps and atol = 1e-5 the check is tight yet robust.
2. A 2-process run killed with SIGKILL resumes under torchrun and finishes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _processes import kill_matching as _kill_matching
from ddpmkit.cli import main
from ddpmkit.training import checkpoint as ckpt

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

COMMON = [
    "--no-progress",
    "--set",
    "train.log_every=1",
    "--set",
    "train.sample_every=0",
    "--set",
    "train.lr=1e-3",
    "--set",
    "train.warmup_steps=0",
    "--set",
    'train.precision="fp32"',
    "--set",
    "train.num_threads=1",
]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
        "OMP_NUM_THREADS": "1",
    }


def _torchrun(n: int, args: list[str], port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={n}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "-m",
        "ddpmkit.cli",
        *args,
    ]


@pytest.fixture(autouse=True)
def _kill_what_the_test_started(tmp_path: Path) -> Iterator[None]:
    # Every child names tmp_path (--out): a failed assertion must not leave one running.
    yield
    _kill_matching(str(tmp_path))


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    # An in-process `ddpm train` with train.num_threads=1 sets torch's thread count.
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


PORTS = {"mlp": 29511, "unet": 29512, "mlp-sync-free": 29513}  # distinct: tests run in parallel


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    found = ckpt.find_latest(run)
    assert found is not None
    return load_file(found / "model.safetensors")


@pytest.mark.parametrize("model", ["mlp", "unet", "mlp-sync-free"])
def test_two_processes_match_one_process_with_double_batch(tmp_path: Path, model: str) -> None:
    # "mlp-sync-free": both runs with the sync-free step loop (fused AdamW, device-side skip of
    # non-finite steps; the default on CUDA), whose decision must agree across ranks too.
    if model.startswith("mlp"):
        # sample.steps=2: rank 0's final preview (1,000 points through the sampler) is most of
        # a 5-step moons run and plays no part in the weights compared here.
        extra = ["moons", "--set", "train.steps=5", "--set", "train.batch_size=32"]
        extra += ["--set", "sample.steps=2"]
        if model == "mlp-sync-free":
            extra += ["--set", 'train.sync_free="on"']
        double = ["--set", "train.batch_size=64"]
    else:
        extra = [
            "moons",
            "--set",
            'data.name="digits"',
            "--set",
            'model.kind="unet"',
            "--set",
            "model.base_channels=16",
            "--set",
            "model.channel_mults=[1, 2]",
            "--set",
            "model.attention_resolutions=[4]",
            "--set",
            "model.groups=4",
            "--set",
            "model.num_res_blocks=1",
            "--set",
            "diffusion.num_steps=100",
            "--set",
            "sample.steps=3",
            "--set",
            "sample.num=4",
            "--set",
            "train.steps=4",
            "--set",
            "train.batch_size=8",
        ]
        double = ["--set", "train.batch_size=16"]
    two = tmp_path / "two"
    one = tmp_path / "one"
    r = subprocess.run(
        _torchrun(2, ["train", *extra, "--out", str(two), *COMMON], PORTS[model]),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("sync-free step loop" in r.stderr) == (model == "mlp-sync-free")
    # The one-process references need no process of their own: `ddpm train` in this one (its
    # train.num_threads=1 is undone by the _restore_threads fixture).
    assert main(["train", *extra, *double, "--out", str(one), *COMMON]) == 0
    a, b = _final_weights(two), _final_weights(one)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst
    # Only rank 0 wrote logs: one line per step, not two.
    assert len((two / "metrics.jsonl").read_text().splitlines()) == len(
        (one / "metrics.jsonl").read_text().splitlines()
    )
    # A genuinely different run (another seed: other initial weights and batches) ends far
    # outside that tolerance, so the comparison above can fail.
    other = tmp_path / "other"
    assert (
        main(["train", *extra, *double, "--out", str(other), *COMMON, "--set", "train.seed=1"]) == 0
    )
    c = _final_weights(other)
    assert c.keys() == b.keys()
    different = max(float((c[k] - b[k]).abs().max()) for k in b)
    assert different > 100 * 1e-5, different


def test_two_process_run_killed_and_resumed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = [
        "train",
        "moons",
        "--out",
        str(run),
        *COMMON,
        "--set",
        "train.checkpoint_every=10",
        "--set",
        "train.batch_size=64",
        "--set",
        "sample.steps=2",  # the final preview after the resume: not what this test is about
    ]
    proc = subprocess.Popen(
        _torchrun(2, [*base, "--set", "train.steps=1000000"], 29521),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        found = ckpt.find_latest(run)
        if found is not None and int(found.name[5:]) >= 20:
            break
        time.sleep(0.1)
    # SIGKILL the launcher and both workers (torchrun starts workers in their own process
    # groups, so kill every process whose command line names this run folder).
    _kill_matching(str(run))
    proc.wait(timeout=30)
    found = ckpt.find_latest(run)
    assert found is not None
    step = ckpt.load_checkpoint(found).state["step"]
    assert step >= 20
    r = subprocess.run(
        _torchrun(2, [*base, "--set", f"train.steps={step + 10}", "--resume"], 29522),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    final = ckpt.find_latest(run)
    assert final is not None and final.name == f"step_{step + 10:08d}"
    state = ckpt.load_checkpoint(final).state
    assert state["world_size"] == 2
    assert set(load_file(final / "rng.safetensors")) == {"data", "torch_rank0", "torch_rank1"}
    shutil.rmtree(run)


def test_text_alignment_under_two_processes_matches_one_process(tmp_path: Path) -> None:
    # text.align_steps runs on every rank before DDP wraps the model, from the same seed on
    # the same (unsharded) captioned images, so the two ranks' aligned text side is the one
    # process's, bit for bit; then the diffusion steps match as in the test above. A tiny
    # captioned folder, the "tiny" encoder, the layout map (model.unet.text_layout) and a
    # one-block refiner: the region alignment's path end to end under torchrun.
    from test_text_train import TINY, _folder

    root = _folder(tmp_path / "images")
    args = [
        "train", "fashion_mnist", *TINY, "--set", f'data.root="{root}"',
        "--set", "model.unet.text_layout=true", "--set", "model.unet.text_refiner_layers=1",
        "--set", "text.align_steps=5", "--set", "text.align_batch=8",
        "--set", "train.steps=3", "--set", "train.sample_every=0",
        "--set", "train.checkpoint_every=3", *COMMON,
    ]  # fmt: skip
    two, one = tmp_path / "two", tmp_path / "one"
    r = subprocess.run(
        _torchrun(2, [*args, "--out", str(two)], 29514),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "text alignment: 5 steps" in r.stderr, r.stderr[-3000:]
    double = ["--set", "train.batch_size=16"]
    assert main([*args, *double, "--out", str(one)]) == 0
    meta = json.loads((two / "model" / "config.json").read_text())
    assert meta["text_align"]["steps"] == 5 and "region_accuracy" in meta["text_align"]
    a, b = _final_weights(two), _final_weights(one)
    assert a.keys() == b.keys()
    layout = [k for k in a if "text_layout" in k]
    assert layout and all(torch.equal(a[k], b[k]) for k in layout)  # aligned, then frozen
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst
    # without the alignment the layout map keeps its initial weights: the check above can fail
    plain = tmp_path / "plain"
    assert main([*args, *double, "--set", "text.align_steps=0", "--out", str(plain)]) == 0
    c = _final_weights(plain)
    assert any(not torch.equal(c[k], b[k]) for k in layout)
