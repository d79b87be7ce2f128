"""Checkpoint files: round trip, atomic layout, corruption detected, pruning, no pickle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ddpmkit.training import checkpoint as ckpt
from ddpmkit.training.ema import EMA


def _trained_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 2))
    net = net.to(memory_format=torch.channels_last)  # non-contiguous weights must still save
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 1, 4, 4)).square().mean().backward()
        opt.step()
    return net, opt


def _save(
    run: Path, step: int, net: torch.nn.Module, opt: torch.optim.Optimizer, keep: int = 3
) -> Path:
    g = torch.Generator().manual_seed(step)
    return ckpt.save_checkpoint(
        run,
        step,
        model=net.state_dict(),
        ema=net.state_dict(),
        optimizer=opt.state_dict(),
        rng={"data": g.get_state()},
        meta={"config": {"name": "x"}, "ema_updates": step},
        keep=keep,
    )


def test_round_trip_is_exact(tmp_path: Path) -> None:
    net, opt = _trained_optimizer()
    path = _save(tmp_path, 7, net, opt)
    assert path.name == "step_00000007"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000007"
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.state["step"] == 7 and loaded.state["ema_updates"] == 7
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.model[k], v)
    opt2 = torch.optim.AdamW(net.parameters(), lr=1e-3)
    assert loaded.optimizer is not None
    opt2.load_state_dict(loaded.optimizer)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(
                torch.as_tensor(s1["state"][i][k]), torch.as_tensor(s2["state"][i][k])
            )
    assert s1["param_groups"] == s2["param_groups"]
    g = torch.Generator()
    g.set_state(loaded.rng["data"])
    assert torch.equal(
        torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(7))
    )
    # Only safetensors and JSON on disk: nothing that would be unpickled.
    names = sorted(p.name for p in path.iterdir())
    assert names == [
        "ema.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
    ]


def test_keeps_last_n_and_latest_falls_back(tmp_path: Path) -> None:
    net, opt = _trained_optimizer()
    for s in (1, 2, 3, 4):
        _save(tmp_path, s, net, opt, keep=2)
    dirs = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert dirs == ["step_00000003", "step_00000004"]
    # A broken 'latest' pointer falls back to the newest complete checkpoint.
    (tmp_path / "checkpoints" / "latest").write_text("garbage")
    assert ckpt.find_latest(tmp_path) == tmp_path / "checkpoints" / "step_00000004"
    # An incomplete folder (no state.json: a crash before the rename cannot leave one, but a
    # hand-copied partial one might) is never chosen.
    (tmp_path / "checkpoints" / "step_00000009").mkdir()
    assert ckpt.find_latest(tmp_path) == tmp_path / "checkpoints" / "step_00000004"


def test_pruning_interrupted_midway_leaves_no_partial_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the SIGKILL test (test_resume.py): a kill while keep-last-N deleted an old
    # folder left a step_* folder without state.json. The deletion now renames the folder to a
    # .tmp- name first; here it is interrupted after its first file, as a kill would.
    net, opt = _trained_optimizer()
    for s in (1, 2):
        _save(tmp_path, s, net, opt, keep=2)
    real_rmtree = shutil.rmtree

    def killed_midway(path: str | Path, ignore_errors: bool = False) -> None:
        if Path(path).name.startswith(".tmp-delete-"):
            next(Path(path).iterdir()).unlink()  # the first file goes, then the "kill"
            raise KeyboardInterrupt
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 3, net, opt, keep=2)  # written, then pruning step 1 is cut short
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    steps = sorted(p.name for p in root.iterdir() if p.name.startswith("step_"))
    assert steps == ["step_00000002", "step_00000003"]
    assert all((root / name / "state.json").is_file() for name in steps)
    assert ckpt.clean_temporaries(tmp_path) == 1  # the half-deleted folder, under a .tmp- name
    assert ckpt.load_checkpoint(tmp_path).state["step"] == 3


def test_an_incomplete_folder_of_the_same_step_is_replaced(tmp_path: Path) -> None:
    net, opt = _trained_optimizer()
    broken = tmp_path / "checkpoints" / "step_00000005"
    broken.mkdir(parents=True)
    (broken / "model.safetensors").write_bytes(b"partial")
    path = _save(tmp_path, 5, net, opt)
    assert path == broken and (path / "state.json").is_file()
    assert ckpt.load_checkpoint(tmp_path).state["step"] == 5  # checksums verified


def test_temporaries_are_cleaned(tmp_path: Path) -> None:
    net, opt = _trained_optimizer()
    _save(tmp_path, 1, net, opt)
    tmp = tmp_path / "checkpoints" / ".tmp-step_00000002-999"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"partial")
    # A kill while 'latest' is rewritten leaves its temporary file (seen once in CI).
    pointer = tmp_path / "checkpoints" / ".latest.tmp-999"
    pointer.write_text("step_000")
    assert ckpt.is_temporary(tmp.name) and ckpt.is_temporary(pointer.name)
    assert not ckpt.is_temporary("latest") and not ckpt.is_temporary("step_00000001")
    assert ckpt.find_latest(tmp_path) == tmp_path / "checkpoints" / "step_00000001"
    assert ckpt.clean_temporaries(tmp_path) == 2
    assert not tmp.exists() and not pointer.exists()
    assert ckpt.find_latest(tmp_path) == tmp_path / "checkpoints" / "step_00000001"


def test_truncated_file_is_detected(tmp_path: Path) -> None:
    net, opt = _trained_optimizer()
    path = _save(tmp_path, 1, net, opt)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors: contents do not match"):
        ckpt.load_checkpoint(path)


def test_bit_flip_is_detected(tmp_path: Path) -> None:
    net, opt = _trained_optimizer()
    path = _save(tmp_path, 1, net, opt)
    f = path / "optimizer.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="optimizer.safetensors: contents do not match"):
        ckpt.load_checkpoint(path)


def test_future_version_and_garbage_state(tmp_path: Path) -> None:
    net, opt = _trained_optimizer()
    path = _save(tmp_path, 1, net, opt)
    st = json.loads((path / "state.json").read_text())
    st["format_version"] = ckpt.FORMAT_VERSION + 1
    (path / "state.json").write_text(json.dumps(st))
    with pytest.raises(ckpt.CheckpointError, match="newer than this ddpmkit supports"):
        ckpt.load_checkpoint(path)
    (path / "state.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="state.json: not valid JSON"):
        ckpt.load_checkpoint(path)


def test_ema_never_touches_integer_buffers_and_warms_up() -> None:
    # Parameters and float buffers (BatchNorm's running statistics) are averaged with the
    # warm-up decay d_n = decay * min(1, n / warmup), n = earlier updates; integer buffers
    # (num_batches_tracked) are copied. Expected values are computed by hand below.
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    bn = net[1]
    ema = EMA(net, decay=0.9, warmup=10)
    ema_bn = ema.model[1]
    assert ema.current_decay() == 0.0  # first update copies the weights
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(4.0)
        bn.num_batches_tracked.fill_(7)
    ema.update(net)
    assert torch.equal(ema.model[0].weight, torch.ones(2, 2))
    assert torch.equal(ema_bn.running_mean, torch.ones(2))
    assert torch.equal(ema_bn.running_var, torch.full((2,), 4.0))
    assert ema_bn.num_batches_tracked.dtype == torch.int64
    assert int(ema_bn.num_batches_tracked) == 7
    with torch.no_grad():
        net[0].weight.fill_(3.0)
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(2.0)
        bn.num_batches_tracked.fill_(12)
    assert ema.current_decay() == pytest.approx(0.09)  # 0.9 * 1 / 10
    ema.update(net)
    # 0.09 * 1 + 0.91 * 3 = 2.82; 0.09 * 4 + 0.91 * 2 = 2.18
    torch.testing.assert_close(ema.model[0].weight, torch.full((2, 2), 2.82))
    torch.testing.assert_close(ema_bn.running_mean, torch.full((2,), 2.82))
    torch.testing.assert_close(ema_bn.running_var, torch.full((2,), 2.18))
    assert int(ema_bn.num_batches_tracked) == 12  # copied, not averaged (would be 11.55)
    # A skipped update (weight 0, the sync-free loop's non-finite step) moves no float value.
    with torch.no_grad():
        bn.running_mean.fill_(100.0)
        bn.num_batches_tracked.fill_(13)
    ema.update(net, weight=torch.tensor(0.0))
    torch.testing.assert_close(ema_bn.running_mean, torch.full((2,), 2.82))
    torch.testing.assert_close(ema.model[0].weight, torch.full((2, 2), 2.82))
    assert int(ema_bn.num_batches_tracked) == 13
    assert ema.num_updates == 3 and ema.current_decay() == pytest.approx(0.27)
    # The live model's buffers are untouched by the EMA.
    assert torch.equal(bn.running_mean, torch.full((2,), 100.0))
    assert not any(p.requires_grad for p in ema.model.parameters())
