"""Sample previews written during and after training (EMA weights, fixed seeds).

A trainer callback above ``training/`` (it draws with ``viz/``, a sibling of ``training/``):
:func:`ddpmkit.fit.train` and ``ddpm train`` add it to the trainer's default callbacks.

Images: a grid PNG under ``<run>/samples/`` (one row per class for conditional models), the
same grid in TensorBoard. 2-D toys: data beside samples, and seed 002's reverse process in 10
snapshots (PNG + GIF) at the end.

:class:`PreviewCallback` is the trainer's part that decides when: every ``train.sample_every``
steps and every ``train.preview_every_min`` minutes (:class:`PreviewClock`), and once at the end
of a run that was not interrupted.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ddpmkit.sample_settings import SampleSettings, draw
from ddpmkit.sampling import StepInfo
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.training.callbacks import Callback

if TYPE_CHECKING:
    from ddpmkit.training.build import TrainData
    from ddpmkit.training.config import RunConfig
    from ddpmkit.training.metrics_log import MetricLogger
    from ddpmkit.training.trainer import Trainer

__all__ = [
    "PreviewCallback",
    "PreviewClock",
    "class_grid_labels",
    "sample_images",
    "write_preview",
]

PREVIEW_SEED = 1234  # the same noise at every preview, so grids over training are comparable


class PreviewClock:
    """When the next wall-clock preview is due (``train.preview_every_min``).

    With period P seconds: the first preview after P/2, then every P after the last one ended
    (so a slow preview never makes previews back to back), none starting less than P/2 before
    ``deadline`` (the run's final grid comes then anyway). ``period_s = 0``: never due.
    """

    def __init__(self, start: float, period_s: float, deadline: float = math.inf):
        self.period, self.deadline = period_s, deadline
        self.next = start + period_s / 2 if period_s > 0 else math.inf

    def due(self, now: float) -> bool:
        return now >= self.next and now + self.period / 2 <= self.deadline

    def done(self, now: float) -> None:
        """A preview (timed or by step) ended at ``now``: the next timed one is P later."""
        if self.period > 0:
            self.next = now + self.period


class PreviewCallback(Callback):
    """Rank 0 writes a preview (:func:`write_preview`, EMA weights) by step and by clock
    during the run, and the final one (with the toys' reverse process) at its end."""

    def __init__(self) -> None:
        self.clock = PreviewClock(0.0, 0.0)

    def on_start(self, trainer: Trainer) -> None:
        s, tr = trainer.state, trainer.cfg.train
        self.clock = PreviewClock(s.t0, 60 * tr.preview_every_min, s.deadline)

    def on_step_end(self, trainer: Trainer) -> None:
        step, every = trainer.state.step, trainer.cfg.train.sample_every
        by_step = bool(every) and step % every == 0
        if trainer.dist.is_main and (by_step or self.clock.due(trainer.state.now)):
            self._write(trainer)
            self.clock.done(time.perf_counter())

    def on_end(self, trainer: Trainer) -> None:
        if trainer.dist.is_main and not trainer.state.interrupted:
            # on Ctrl-C: checkpoint and export only, exit promptly
            trainer.state.files.extend(self._write(trainer, final=True))

    @staticmethod
    def _write(trainer: Trainer, final: bool = False) -> list[Path]:
        run = trainer.run
        return write_preview(
            run.ema.model,
            run.sched,
            run.data,
            run.cfg,
            run.run_dir,
            trainer.state.step,
            trainer.logger,
            run.cpath.bf16,
            final=final,
        )


def class_grid_labels(num_classes: int, per_class: int) -> Tensor:
    """Labels for a grid with one row per class: [0]*per_class + [1]*per_class + ..."""
    return torch.arange(num_classes).repeat_interleave(per_class)


PREVIEW_PROMPTS = 8  # rows of a text model's preview grid


def preview_prompt_ids(captions: Sequence[str], k: int = PREVIEW_PROMPTS) -> list[int]:
    """Indices of the fixed training prompts a text model's previews draw: the shortest
    caption of each evenly spaced slice of the sorted caption set (short ones read best)."""
    n = len(captions)
    k = min(k, n)
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [
        min(range(a, b), key=lambda i: (len(captions[i]), i)) for a, b in zip(bounds, bounds[1:])
    ]


def sample_images(
    model: nn.Module,
    sched: NoiseSchedule,
    cfg: RunConfig,
    shape: tuple[int, ...],
    n: int,
    *,
    y: Tensor | None,
    bf16: bool,
    seed: int = PREVIEW_SEED,
    callback: Callable[[StepInfo], None] | None = None,
    clip_x0: float | None = None,
) -> Tensor:
    """Draw n samples with the run's ``[sample]`` settings (:class:`SampleSettings`, as
    ``ddpm sample RUN`` would), sample i seeded by seed + i; float32 on the CPU.

    ``clip_x0`` bounds the x_0 estimates (``TrainData.x0_range``); None: 1.0 for images, no
    clipping otherwise.
    """
    device = next(model.parameters()).device
    settings = SampleSettings.from_section(dataclasses.asdict(cfg.sample))
    if y is None:  # an unconditional run (or toy): guidance has nothing to guide
        settings = dataclasses.replace(settings, guidance=1.0)
    settings = settings.resolve(sched, conditional=y is not None)
    if clip_x0 is None and len(shape) == 3:  # images live in [-1, 1]
        clip_x0 = 1.0
    was_training = model.training
    model.eval()
    try:
        return draw(
            model,
            sched,
            settings,
            shape=shape,
            num=n,
            labels=y,
            seed=seed,
            prediction=cfg.diffusion.prediction,
            clip_x0=clip_x0,
            bf16=bf16,
            device=device,
            batch_size=max(1, n),  # one batch: the toys' trajectory recorder sees every point
            callback=callback,
        )
    finally:
        model.train(was_training)


def write_preview(
    model: nn.Module,
    sched: NoiseSchedule,
    data: TrainData,
    cfg: RunConfig,
    run_dir: Path,
    step: int,
    logger: MetricLogger,
    bf16: bool,
    final: bool = False,
) -> list[Path]:
    """Write this step's preview files; returns their paths."""
    out_dir = run_dir / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    if data.kind == "toy":
        return _toy_preview(model, sched, data, cfg, out_dir, step, final)
    from ddpmkit.viz.grid import grid_with_row_labels, make_grid, save_grid, to_uint8

    rows: list[str] = data.class_names
    y: Tensor | None
    if data.captions is not None:  # text: one row per preview prompt (rows of the caption table)
        ids = preview_prompt_ids(data.captions)
        rows = [data.captions[i] for i in ids]
        per_row = max(1, cfg.sample.num // len(ids))
        y = torch.tensor(ids).repeat_interleave(per_row)
        n, nrow = len(ids) * per_row, per_row
    elif data.num_classes:
        per_class = max(1, cfg.sample.num // data.num_classes)
        y = class_grid_labels(data.num_classes, per_class)
        n, nrow = data.num_classes * per_class, per_class
    else:
        y, n = None, cfg.sample.num
        nrow = max(1, int(round(n**0.5)))
    x = sample_images(
        model, sched, cfg, data.sample_shape, n, y=y, bf16=bf16, clip_x0=data.x0_range
    )
    u8 = to_uint8(x)
    path = out_dir / f"step_{step:08d}.png"
    upscale = max(1, 64 // data.sample_shape[1])
    if y is not None:
        grid_with_row_labels(u8, nrow, rows, path, upscale=upscale)
    else:
        save_grid(u8, path, nrow, upscale=upscale)
    shutil.copyfile(path, out_dir / "latest.png")
    logger.image("samples", make_grid(u8, nrow), step)
    return [path, out_dir / "latest.png"]


def _toy_preview(
    model: nn.Module,
    sched: NoiseSchedule,
    data: TrainData,
    cfg: RunConfig,
    out_dir: Path,
    step: int,
    final: bool,
) -> list[Path]:
    """Data beside samples; at the end also the reverse process (seed 002's 10 snapshots)."""
    from ddpmkit.viz.scatter import plot_data_vs_samples

    n = min(1000, data.x.shape[0])
    ref = data.x[:n]
    rec = None
    if final:
        from ddpmkit.viz.trajectory import TrajectoryRecorder

        rec = TrajectoryRecorder(num_snapshots=10, max_items=n)
    # One sampling pass with the run's sampler gives both the samples and the trajectory.
    samples = sample_images(
        model, sched, cfg, data.sample_shape, n, y=None, bf16=False, callback=rec,
        clip_x0=data.x0_range,
    )  # fmt: skip
    path = out_dir / f"step_{step:08d}.png"
    plot_data_vs_samples(ref, samples, path, title=f"{cfg.data.name}: step {step}")
    files = [path]
    if rec is not None:
        from ddpmkit.viz.trajectory import plot_reverse_process, save_reverse_gif

        strip = out_dir.parent / "reverse_process.png"
        plot_reverse_process(rec, strip, kind="scatter")
        gif = out_dir.parent / "reverse_process.gif"
        save_reverse_gif(rec, gif)
        final_png = out_dir.parent / "data_vs_samples.png"
        plot_data_vs_samples(ref, samples, final_png, title=f"{cfg.data.name}: data vs samples")
        files += [strip, gif, final_png]
    return files
