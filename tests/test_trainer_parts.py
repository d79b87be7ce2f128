"""The trainer's parts: callback events in order with their steps, the stop rules, and that
callbacks (previews, logging, periodic checkpoints) never change what is trained."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddpmkit.fit import train as train_with_previews
from ddpmkit.training import checkpoint as ckpt
from ddpmkit.training.callbacks import Callback
from ddpmkit.training.config import load_config
from ddpmkit.training.loop import TrainingError, default_callbacks, train
from ddpmkit.training.setup import build_run
from ddpmkit.training.step import lr_at
from ddpmkit.training.stopping import (
    BadStepLimit,
    StepsReached,
    Stop,
    StopAfter,
    TimeLimit,
    default_stop_rules,
)
from ddpmkit.training.trainer import Trainer, TrainState

MOONS = ['model.kind="mlp"', 'train.precision="fp32"', "train.sample_every=0", "sample.steps=4"]


def _cfg(out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_config("moons", [*MOONS, *extra, f'out_dir="{out.as_posix()}"'])


class Recorder(Callback):
    """Every event with the trainer's step at that moment."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.records: list[dict[str, float]] = []

    def on_start(self, trainer: Trainer) -> None:
        self.events.append(("start", trainer.state.step))

    def on_log(self, trainer: Trainer, record: dict[str, float]) -> None:
        self.events.append(("log", trainer.state.step))
        self.records.append(dict(record))

    def on_step_end(self, trainer: Trainer) -> None:
        self.events.append(("step_end", trainer.state.step))

    def on_checkpoint(self, trainer: Trainer, step: int) -> None:
        assert ckpt.find_latest(trainer.run.run_dir).name == f"step_{step:08d}"  # type: ignore[union-attr]
        self.events.append(("checkpoint", step))

    def on_loop_end(self, trainer: Trainer) -> None:
        self.events.append(("loop_end", trainer.state.step))

    def on_end(self, trainer: Trainer) -> None:
        self.events.append(("end", trainer.state.step))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    found = ckpt.find_latest(run)
    assert found is not None
    return {
        **load_file(found / "model.safetensors"),
        **{f"ema.{k}": v for k, v in load_file(found / "ema.safetensors").items()},
    }


def test_callback_sees_the_events_in_order_with_their_steps(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "run", "train.steps=6", "train.log_every=4", "train.checkpoint_every=3")
    rec = Recorder()
    result = train(cfg, progress=False, log=lambda s: None, extra_callbacks=[rec])
    # Periodic checkpoints come from a default callback listed before the recorder, so its
    # on_checkpoint arrives inside that step's on_step_end round; the log record of a step
    # (every 4 and at the last step) comes before that step's on_step_end.
    assert rec.events == [
        ("start", 0),
        ("step_end", 1), ("step_end", 2),
        ("checkpoint", 3), ("step_end", 3),
        ("log", 4), ("step_end", 4), ("step_end", 5),
        ("log", 6), ("checkpoint", 6), ("step_end", 6),
        ("loop_end", 6), ("checkpoint", 6),  # the final checkpoint (the same step folder)
        ("end", 6),
    ]  # fmt: skip
    # on_log gets exactly what metrics.jsonl holds.
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == rec.records
    assert [r["step"] for r in rec.records] == [4, 6]
    assert result.step == 6 and result.last_loss == rec.records[-1]["loss"]
    assert math.isfinite(result.last_loss)


def test_resumed_run_starts_its_events_at_the_checkpoint(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "run", "train.steps=5", "train.log_every=10", "train.checkpoint_every=10")
    first, second = Recorder(), Recorder()
    train(cfg, progress=False, log=lambda s: None, stop_after=2, extra_callbacks=[first])
    assert first.events[-3:] == [("loop_end", 2), ("checkpoint", 2), ("end", 2)]
    train(cfg, resume=True, progress=False, log=lambda s: None, extra_callbacks=[second])
    assert second.events[0] == ("start", 2)
    assert [s for e, s in second.events if e == "step_end"] == [3, 4, 5]
    assert [s for e, s in second.events if e == "log"] == [5]  # the last step always logs


def test_callbacks_never_change_what_is_trained(tmp_path: Path) -> None:
    # Default callbacks with previews every 2 steps vs no callbacks at all: the same weights,
    # and without callbacks only the trainer's own final checkpoint and export are written.
    steps = ["train.steps=6", "train.log_every=2", "train.checkpoint_every=2"]
    full = _cfg(tmp_path / "full", *steps, "train.sample_every=2")
    train_with_previews(full, progress=False, log=lambda s: None)
    bare = _cfg(tmp_path / "bare", *steps)
    result = train(bare, progress=False, log=lambda s: None, callbacks=[])
    a, b = _weights(full.run_dir), _weights(bare.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert sorted(p.name for p in (full.run_dir / "samples").glob("step_*.png")) == [
        "step_00000002.png", "step_00000004.png", "step_00000006.png",
    ]  # fmt: skip
    assert not (bare.run_dir / "samples").exists() and not (bare.run_dir / "metrics.jsonl").exists()
    assert [p.name for p in (bare.run_dir / "checkpoints").glob("step_*")] == ["step_00000006"]
    assert result.files == [bare.run_dir / "model" / "model.safetensors"]


def test_a_custom_stop_rule_ends_the_run_with_a_checkpoint(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "run", "train.steps=100", "train.log_every=2")
    lines: list[str] = []

    def four_steps(state: TrainState) -> Stop | None:
        return Stop("mine", "enough") if state.step >= 4 else None

    rec = Recorder()
    run = build_run(cfg, resume=False, log=lines.append)
    trainer = Trainer(
        run,
        callbacks=[*default_callbacks(progress=False), rec],
        stop_rules=[*default_stop_rules(cfg), four_steps],
        log=lines.append,
    )
    result = trainer.fit()
    assert result.step == 4 and not result.interrupted
    assert trainer.state.stop == Stop("mine", "enough")
    assert "enough" in lines
    assert ckpt.find_latest(cfg.run_dir).name == "step_00000004"  # type: ignore[union-attr]
    assert [s for e, s in rec.events if e == "log"] == [2, 4]


def test_time_limit_stops_before_the_first_step_and_says_so(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "run", "train.steps=100", "train.time_limit_min=1e-9")
    lines: list[str] = []
    result = train(cfg, progress=False, log=lines.append)
    assert result.step == 0
    assert "time limit of 1e-09 min reached at step 0" in lines
    assert ckpt.find_latest(cfg.run_dir).name == "step_00000000"  # type: ignore[union-attr]


def test_stop_rules_answer_at_their_conditions() -> None:
    state = TrainState(step=7, start_step=3, deadline=math.inf)
    assert StepsReached(8)(state) is None and StepsReached(7)(state) == Stop("steps")
    assert StopAfter(5)(state) is None and StopAfter(4)(state) == Stop("stop_after")
    assert TimeLimit(2.0)(state) is None
    state.deadline = -math.inf  # already past
    assert TimeLimit(2.0)(state) == Stop("time_limit", "time limit of 2.0 min reached at step 7")


def test_bad_step_limit_saves_finite_weights_then_raises(tmp_path: Path) -> None:
    saved: list[int] = []
    limit = BadStepLimit(3, tmp_path, saved.append, lambda: True)
    limit.check(2, 10)  # below the limit: nothing
    assert saved == []
    with pytest.raises(TrainingError, match="non-finite for 3 consecutive steps at step 11"):
        limit.check(3, 11)
    assert saved == [11]
    limit_bad = BadStepLimit(3, tmp_path, saved.append, lambda: False)
    with pytest.raises(TrainingError, match="no good checkpoint"):
        limit_bad.check(4, 12)
    assert saved == [11]  # non-finite weights are never saved


def test_cosine_lr_follows_steps_or_the_time_limit_whichever_ends_first() -> None:
    cfg = load_config("moons", ["train.lr=0.01", "train.warmup_steps=10", "train.steps=110",
                                'train.lr_decay="cosine"'])  # fmt: skip
    assert lr_at(cfg, 4) == pytest.approx(0.01 * 5 / 10)  # warm-up
    assert lr_at(cfg, 60) == pytest.approx(0.005)  # half way through the steps: cos(pi/2)
    assert lr_at(cfg, 60, time_frac=0.25) == pytest.approx(0.005)  # steps are further on
    assert lr_at(cfg, 20, time_frac=0.5) == pytest.approx(0.005)  # time is further on
    assert lr_at(cfg, 20, time_frac=1.0) == pytest.approx(0.0, abs=1e-12)
    flat = load_config("moons", ["train.lr=0.01", "train.warmup_steps=0"])
    assert lr_at(flat, 20, time_frac=0.9) == 0.01  # lr_decay = "none": time changes nothing


def test_a_time_limited_run_decays_its_lr_to_the_limit(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "run", "train.steps=1000000", "train.time_limit_min=0.1",
               'train.lr_decay="cosine"', "train.log_every=2", "train.warmup_steps=0")  # fmt: skip
    train(cfg, progress=False, log=lambda s: None)
    recs = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) >= 3
    lr0, limit_s = cfg.train.lr, 60 * cfg.train.time_limit_min
    for r in recs:  # the lr of a log step follows the clock: p = time_s / limit, 0.5 s slack
        lo = 0.5 * lr0 * (1 + math.cos(math.pi * min(1.0, (r["time_s"] + 0.5) / limit_s)))
        hi = 0.5 * lr0 * (1 + math.cos(math.pi * max(0.0, (r["time_s"] - 0.5) / limit_s)))
        assert lo - 1e-9 <= r["lr"] <= hi + 1e-9, r
    assert recs[-1]["lr"] < 0.1 * lr0  # it ended near 0, far below train.steps' schedule
