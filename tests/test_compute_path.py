"""Path selection (bf16 / fp32, NHWC / NCHW) on CPUs with and without native bf16.

The CPU kind is faked by replacing the detection function; the paths themselves run for real:
a short training run and ``ddpm sample`` of its model, on the path each kind of CPU takes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ddpmkit.fit import train
from ddpmkit.nn import compute_path
from ddpmkit.nn.compute_path import choose_path
from ddpmkit.nn.groupnorm import fused_kernel_available
from ddpmkit.previews import PreviewClock
from ddpmkit.training.config import load_config

CPU = torch.device("cpu")

TINY = [
    'data.name="digits"',
    "model.base_channels=16",
    "model.channel_mults=[1, 2]",
    "model.attention_resolutions=[4]",
    "model.groups=4",
    "model.num_res_blocks=1",
    "diffusion.num_steps=50",
    "train.steps=3",
    "train.batch_size=8",
    "train.log_every=1",
    "train.sample_every=0",
    "train.checkpoint_every=1000",
    "sample.steps=2",
    "sample.num=4",
]


def _fake_cpu(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    monkeypatch.setattr(compute_path, "cpu_has_native_bf16", lambda: native_bf16)


@pytest.mark.parametrize("native", [True, False])
def test_auto_path_by_cpu_kind(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    _fake_cpu(monkeypatch, native)
    p = choose_path(CPU)
    assert p.bf16 is native
    # NHWC only with bf16 and the fused GroupNorm (fp32 NHWC measured 0.81x on AVX2)
    assert p.channels_last is (native and fused_kernel_available())
    assert ("without native bf16" in p.reason) is (not native)


def test_forced_choices_win_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cpu(monkeypatch, False)
    p = choose_path(CPU, precision="bf16", channels_last="on")
    assert p.bf16 and p.channels_last
    assert "emulated" in p.reason  # forcing bf16 where it is slow is allowed, and flagged
    _fake_cpu(monkeypatch, True)
    assert not choose_path(CPU, precision="fp32").bf16
    assert not choose_path(CPU, channels_last="off").channels_last
    assert not choose_path(CPU, images=False).bf16  # 2-D MLPs: fp32 unless asked
    assert not choose_path(CPU, images=False, channels_last="on").channels_last


@pytest.mark.parametrize("native", [True, False])
def test_loader_never_samples_in_emulated_bf16(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    _fake_cpu(monkeypatch, native)
    # a bf16-trained model: bf16 only where native; an fp32-trained one: always fp32
    assert choose_path(CPU, trained_bf16=True).bf16 is native
    assert not choose_path(CPU, trained_bf16=False).bf16


@pytest.mark.parametrize("native", [True, False])
def test_training_and_sampling_run_on_each_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, native: bool
) -> None:
    """A real run on the path each CPU kind takes; its first line names the path and why;
    its model samples through ``ddpm sample`` in the loader's path."""
    from ddpmkit.cli import main

    _fake_cpu(monkeypatch, native)
    lines: list[str] = []
    cfg = load_config("fashion_mnist", [*TINY, f'out_dir="{tmp_path.as_posix()}/run"'])
    res = train(cfg, progress=False, log=lines.append)
    assert res.step == 3
    first = lines[0]
    assert first.startswith("training unet")
    if native:
        assert "bf16 autocast" in first and "native bf16" in first
    else:
        assert "fp32 NCHW" in first and "without native bf16" in first
    meta = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert meta["precision"] == ("bf16" if native else "fp32")
    loss = [json.loads(s)["loss"] for s in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(loss) == 3 and all(v == v and v > 0 for v in loss)  # finite, positive
    code = main(
        ["sample", str(tmp_path / "run"), "--num", "4", "--steps", "2", "--out", str(tmp_path)]
    )
    assert code in (0, None)
    assert (tmp_path / "grid.png").is_file()


def test_preview_clock() -> None:
    c = PreviewClock(start=0.0, period_s=240.0, deadline=900.0)
    assert not c.due(100.0) and c.due(120.0)  # the first after half a period
    c.done(140.0)
    assert not c.due(379.0) and c.due(380.0)  # then a period after the last one ended
    c.done(400.0)
    assert not c.due(639.0) and c.due(700.0)  # next due at 640
    assert not c.due(781.0)  # 781 + 120 > 900: too close to the time limit's final grid
    c2 = PreviewClock(start=0.0, period_s=240.0, deadline=900.0)
    c2.done(700.0)  # e.g. a step-based preview ended at 700 s
    assert not c2.due(940.0)  # would start within half a period of the deadline
    never = PreviewClock(start=0.0, period_s=0.0)
    assert not never.due(1e9)


def test_timed_preview_appears_without_step_previews(tmp_path: Path) -> None:
    """train.preview_every_min with sample_every = 0: a grid while training, by the clock."""
    cfg = load_config(
        "fashion_mnist",
        [
            *TINY,
            "train.steps=6",
            "train.preview_every_min=0.0001",  # every 6 ms: due at every step
            'train.precision="fp32"',
            f'out_dir="{tmp_path.as_posix()}/run"',
        ],
    )
    train(cfg, progress=False, log=lambda s: None)
    grids = sorted(p.name for p in (tmp_path / "run" / "samples").glob("step_*.png"))
    assert len(grids) >= 3, grids  # timed previews during training, besides the final one
