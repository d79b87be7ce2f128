"""The sync-free step loop (``train.sync_free``, the default on CUDA) and ``train.compile``.

It must train like the synchronous loop, resume exactly, and keep the non-finite-loss rules: a
bad step changes nothing, ``max_bad_steps`` in a row stop the run with the last good checkpoint,
and a checkpoint with non-finite weights is never written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddpmkit.fit import train
from ddpmkit.training import checkpoint as ckpt
from ddpmkit.training.config import load_config
from ddpmkit.training.ema import EMA
from ddpmkit.training.loop import TrainingError

# sample.steps=4: each run's final preview (1,000 points through the sampler) is most of a short
# moons run; the tests compare weights, losses and checkpoints, never the preview.
MOONS = [
    'model.kind="mlp"', 'train.precision="fp32"', "train.log_every=2", "train.sample_every=0",
    "sample.steps=4",
]  # fmt: skip


def _run(tmp: Path, name: str, extra: list[str], **kw: object) -> Path:
    out = tmp / name
    cfg = load_config("moons", [*MOONS, *extra, f'out_dir="{out.as_posix()}"'])
    lines: list[str] = []
    try:
        train(cfg, progress=False, log=lines.append, **kw)  # type: ignore[arg-type]
    finally:
        (out / "test.log").write_text("\n".join(lines))
    return out


def _latest(run: Path) -> dict[str, torch.Tensor]:
    found = ckpt.find_latest(run)
    assert found is not None
    return {
        **load_file(found / "model.safetensors"),
        **{f"ema.{k}": v for k, v in load_file(found / "ema.safetensors").items()},
    }


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if "loss" in json.loads(x)]


def test_sync_free_trains_like_the_synchronous_loop(tmp_path: Path) -> None:
    steps = ["train.steps=40"]
    sync = _run(tmp_path, "sync", [*steps, 'train.sync_free="off"'])
    free = _run(tmp_path, "free", [*steps, 'train.sync_free="on"'])
    assert "sync-free step loop (fused AdamW)" in (free / "test.log").read_text()
    assert "sync-free" not in (sync / "test.log").read_text()
    a, b = _latest(sync), _latest(free)
    # Same batches, same maths; only the AdamW implementation differs (fused vs for-each), so
    # the weights agree to float32 rounding accumulated over 40 steps.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    la, lb = _losses(sync), _losses(free)
    assert len(la) == len(lb) == 20
    assert la == pytest.approx(lb, rel=1e-4)


def test_sync_free_resume_is_exact(tmp_path: Path) -> None:
    extra = ["train.steps=8", 'train.sync_free="on"']
    full = _run(tmp_path, "full", extra)
    half = _run(tmp_path, "half", extra, stop_after=4)
    _run(tmp_path, "half", extra, resume=True)
    a, b = _latest(full), _latest(half)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sync_free_non_finite_steps_stop_with_the_last_good_checkpoint(tmp_path: Path) -> None:
    base = ['train.sync_free="on"', "train.checkpoint_every=4", "train.log_every=5"]
    _run(tmp_path, "run", [*base, "train.steps=4"])  # a good checkpoint at step 4
    good = _latest(tmp_path / "run")
    # The learning rate explodes: the first update makes the weights infinite, every later
    # loss is non-finite. The checkpoint at step 8 must not be written (its weights are bad),
    # and the run stops at the first log step with 3 bad steps in a row.
    bad = [
        *base, "train.steps=200", "train.max_bad_steps=3", "train.lr=1e30",
        "train.warmup_steps=0", "train.grad_clip=0",
    ]  # fmt: skip
    with pytest.raises(TrainingError) as e:
        _run(tmp_path, "run", bad, resume=True)
    msg = str(e.value)
    assert "consecutive steps" in msg and "lower train.lr" in msg
    assert "last good checkpoint" in msg and "step_00000004" in msg
    assert ckpt.find_latest(tmp_path / "run").name == "step_00000004"  # type: ignore[union-attr]
    kept = _latest(tmp_path / "run")
    for k in good:
        assert torch.equal(good[k], kept[k]), k


def test_ema_update_with_weight_zero_changes_nothing() -> None:
    model = torch.nn.Linear(4, 4)
    ema = EMA(model, decay=0.9, warmup=0)
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, weight=torch.tensor(0.0))
    assert all(torch.equal(a, b) for a, b in zip(before, ema.model.parameters(), strict=True))
    ema.update(model, weight=torch.tensor(1.0))
    for a, b, p in zip(before, ema.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b, 0.9 * a + 0.1 * p)  # the plain update: d = 0.9


def test_compiled_training_matches_eager(tmp_path: Path) -> None:
    # train.compile = "on" compiles only the training forward/backward (inductor on this CPU);
    # the same 6 steps must give the same weights up to float reordering inside fused kernels.
    steps = ["train.steps=6"]
    eager = _run(tmp_path, "eager", steps)
    compiled = _run(tmp_path, "compiled", [*steps, 'train.compile="on"'])
    assert "torch.compile" in (compiled / "test.log").read_text()
    a, b = _latest(eager), _latest(compiled)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
