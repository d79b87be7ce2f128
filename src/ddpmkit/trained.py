"""A trained model from Python: ``ddpmkit.load(path).sample(...)``.

    >>> import ddpmkit
    >>> model = ddpmkit.load("runs/fashion_mnist")            # doctest: +SKIP
    >>> images = model.sample(num=16, labels=["sneaker"], seed=0)  # uint8 (16, 28, 28, 1)

:func:`load` reads a run folder, a checkpoint folder or an exported model folder (EMA weights
by default) and returns a :class:`TrainedModel`: the network (eval mode, on the chosen device
and memory format), its noise schedule, its :class:`~ddpmkit.training.config.RunConfig`, the
class names, and the run's own sampling settings (its ``[sample]`` section), which
:meth:`TrainedModel.sample` uses unless a keyword overrides them. ``ddpm sample``, ``ddpm
eval`` and ``ddpm plot reverse`` all sample through this object, so they share its defaults.

Where the time grid comes from, with a step schedule written by ``ddpm schedule``
(:mod:`ddpmkit.step_schedule`), first match wins:

1. ``schedule_from=FILE`` (``--schedule-from``): its sampler and timesteps; giving ``steps``,
   ``spacing`` or ``timesteps`` beside it, or another ``sampler``, is an error (they would
   contradict the file).
2. explicit ``steps``/``spacing``/``timesteps``: the grid asked for, with the section's
   sampler; the run's ``schedule_file`` is not read and the settings line says so.
3. the run's ``[sample] schedule_file`` (relative: to :attr:`TrainedModel.run_folder`): its
   sampler and timesteps replace the section's sampler, steps and spacing; a ``sampler``
   other than the file's drops the file (the grid was optimised for its sampler), the same
   sampler keeps it.
4. the section's sampler, steps and spacing.

An explicit grid overrides the run's file instead of clashing with it because the file is a
default like the rest of ``[sample]``: ``ddpm sample RUN --steps 50`` asks for 50 steps, and
an error would make the user edit a saved config to get them.

Unlike diffusers' pipelines there is no stateful scheduler: every call is a pure function of
its arguments, and sample i is a function of ``seed + i`` alone (not of ``num`` or the batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ddpmkit.nn.compute_path import ComputePath, choose_path
from ddpmkit.sample_settings import SampleSettings, SettingsError, draw
from ddpmkit.sampling import Callback
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.training.build import load_weights, model_from_meta, x0_clip_from_meta
from ddpmkit.training.checkpoint import CheckpointError, _read_tensors, resolve_model_path
from ddpmkit.training.config import ConfigError, RunConfig
from ddpmkit.viz.grid import to_uint8

__all__ = ["GRID_KEYS", "TrainedModel", "load", "run_folder", "sampling_path"]

GRID_KEYS = ("steps", "spacing", "timesteps")  # the settings that choose a time grid


def sampling_path(meta: dict[str, Any], device: torch.device) -> ComputePath:
    """The path a loaded model samples in on ``device`` (:func:`ddpmkit.nn.compute_path.
    choose_path`): bf16 only for a model trained in bf16 on a device with native bf16, so a
    bf16-trained model is not sampled in emulated bf16 (10-25x slower) on an AVX2 CPU."""
    kind = meta.get("config", {}).get("model", {}).get("kind", "unet")
    return choose_path(device, images=kind == "unet", trained_bf16=meta.get("precision") == "bf16")


@dataclass
class TrainedModel:
    """A loaded network with everything needed to sample it (see :func:`load`)."""

    network: nn.Module
    schedule: NoiseSchedule
    config: RunConfig
    meta: dict[str, Any]
    path: Path  # the folder the weights came from
    device: torch.device
    compute: ComputePath  # bf16 / NHWC decision for this device
    text_encoder: Any = None  # a ddpmkit.text.TextEncoder for text models, else None

    @property
    def is_text(self) -> bool:
        """True for a text-to-image model (sample it with ``prompts=``)."""
        return "text_encoder" in self.meta

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.meta["data"]["sample_shape"])

    @property
    def num_classes(self) -> int:
        """Number of classes of a class-conditional model (0: unconditional)."""
        return int(self.meta["data"].get("num_classes", 0))

    @property
    def class_names(self) -> list[str]:
        names = list(self.meta["data"].get("class_names", []))
        return [names[c] if c < len(names) else str(c) for c in range(self.num_classes)]

    @property
    def is_image(self) -> bool:
        return len(self.sample_shape) == 3

    @property
    def run_folder(self) -> Path:
        """The run the weights belong to (:func:`run_folder`): what a relative ``[sample]
        schedule_file`` is read from."""
        return run_folder(self.path)

    @property
    def schedule_file(self) -> Path | None:
        """The run's ``[sample] schedule_file`` (relative: to :attr:`run_folder`); None if the
        section names none."""
        name = (self.meta.get("config", {}).get("sample") or {}).get("schedule_file") or ""
        if not name:
            return None
        p = Path(str(name))
        return p if p.is_absolute() else self.run_folder / p

    @property
    def settings(self) -> SampleSettings:
        """The run's own sampling settings (its ``[sample]`` section and the grid of its
        ``schedule_file``): every call's defaults."""
        return self.run_settings()

    def run_settings(self, *, schedule_file: bool = True) -> SampleSettings:
        """The run's ``[sample]`` section; with ``schedule_file`` (default) and a section that
        names one, the file's sampler and timesteps instead of its sampler, steps and spacing.
        A missing or bad file is a one-line ``ConfigError`` naming ``sample.schedule_file``."""
        s = SampleSettings.from_section(self.meta.get("config", {}).get("sample"))
        path = self.schedule_file
        if path is None or not schedule_file:
            return s
        if not path.is_file():
            raise ConfigError(
                f"sample.schedule_file: {path} is missing; write it with `ddpm schedule "
                f"{self.run_folder} --out {path}`, or choose a grid (--steps, --timesteps or "
                "--schedule-from) to sample without it"
            )
        try:
            return self._with_grid(s, path)
        except SettingsError as e:
            raise ConfigError(f"sample.schedule_file: {e.message}") from None

    def _with_grid(self, settings: SampleSettings, path: Path) -> SampleSettings:
        """``settings`` with the sampler and timesteps of the ``ddpm schedule`` file
        ``path``, checked against this model (a ``SettingsError`` of ``schedule_from``)."""
        from ddpmkit.step_schedule import load_schedule

        grid = load_schedule(path, self.schedule.num_steps)
        return replace(
            settings,
            sampler=grid.sampler,
            steps=None,
            spacing=None,
            timesteps=grid.timesteps,
            schedule_file=str(path),
        )

    def resolve_settings(
        self,
        settings: SampleSettings | None = None,
        *,
        schedule_from: str | Path | None = None,
        **overrides: Any,
    ) -> SampleSettings:
        """``settings`` (default: the run's own) with ``overrides`` (None = keep), checked
        against this model and with steps/spacing filled in. ``schedule_from`` is a ``ddpm
        schedule`` file whose sampler and timesteps are used (precedence: module docstring)."""
        given = {k for k, v in overrides.items() if v is not None}
        if schedule_from is not None:
            clash = [k for k in GRID_KEYS if k in given]
            if clash:
                raise SettingsError(
                    "schedule_from", f"replaces {'/'.join(clash)}; give one or the other"
                )
            base = self._with_grid(
                settings or self.run_settings(schedule_file=False), Path(schedule_from)
            )
            want = overrides.get("sampler")
            if want is not None and want != base.sampler:
                raise SettingsError(
                    "schedule_from",
                    f"{schedule_from} was optimised for {base.sampler}, not {want}; give no "
                    f"sampler, or make a {want} grid with `ddpm schedule RUN --sampler {want}`",
                )
            base = replace(base, origin=f"{base.origin}, with schedule_from given")
        elif settings is None:
            # an explicit grid replaces the run's file without reading it (module docstring)
            base = self.run_settings(schedule_file=not any(k in given for k in GRID_KEYS))
        else:
            base = settings
        s = base.override(**overrides)
        own = self.schedule_file
        if settings is None and schedule_from is None and own is not None and not s.schedule_file:
            s = replace(s, origin=f"{s.origin}; its schedule_file {own} not used")
        return s.resolve(self.schedule, conditional=self.num_classes > 0 or self.is_text)

    def prompts_for(self, num: int, prompts: Sequence[str] | None = None) -> Tensor:
        """Encode ``prompts`` (used in turn; default: the empty prompt, i.e. the unconditional
        model) into the network's table; returns sample i's row (prompt i mod len)."""
        if self.text_encoder is None:
            raise SettingsError("prompts", "needs a text-conditioned model; this one is not")
        wanted = list(prompts) if prompts else [""]
        if not all(isinstance(p, str) for p in wanted):
            raise SettingsError("prompts", "every prompt must be a string")
        distinct = list(dict.fromkeys(wanted))
        enc = self.text_encoder.encode(distinct)
        self.network.set_table(enc)  # type: ignore[operator]
        index = {p: i for i, p in enumerate(distinct)}
        return torch.tensor([index[wanted[i % len(wanted)]] for i in range(num)], dtype=torch.long)

    def labels_for(self, num: int, labels: Sequence[int | str] | None = None) -> Tensor | None:
        """One label per sample: ``labels`` (ints or class names) in turn, or every class in
        turn (class-balanced: sample i has class i mod K); None for unconditional models."""
        if not self.num_classes:
            if labels:
                raise SettingsError("label", "needs a class-conditional model; this one is not")
            return None
        classes = [self._class_index(v) for v in labels] if labels else range(self.num_classes)
        classes = list(classes)
        return torch.tensor([classes[i % len(classes)] for i in range(num)], dtype=torch.long)

    def _class_index(self, value: int | str) -> int:
        names = self.class_names
        if isinstance(value, str) and not value.lstrip("-").isdigit():
            if value not in names:
                raise SettingsError("label", f"{value!r} is not a class of this model: {names}")
            return names.index(value)
        c = int(value)
        if not 0 <= c < self.num_classes:
            raise SettingsError(
                "label", f"{c} is not a class of this model (0..{self.num_classes - 1})"
            )
        return c

    def sample(
        self,
        num: int = 16,
        *,
        labels: Sequence[int | str] | Tensor | None = None,
        prompts: Sequence[str] | None = None,
        settings: SampleSettings | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        spacing: str | None = None,
        timesteps: Sequence[int] | None = None,
        schedule_from: str | Path | None = None,
        guidance: float | None = None,
        guidance_interval: Sequence[float] | str | None = None,
        eta: float | None = None,
        final_step: str | None = None,
        variance: str | None = None,
        seed: int = 0,
        batch_size: int = 256,
        output: Literal["uint8", "tensor"] = "uint8",
        callback: Callback | None = None,
        log: Callable[[str], None] | None = None,
    ) -> np.ndarray | Tensor:
        """Draw ``num`` samples; sample i depends only on ``seed + i`` and the settings.

        Settings left at None are those of ``settings``, by default the run's own
        (``self.settings``; its ``schedule_file`` grid, if it names one). ``schedule_from``: a
        ``ddpm schedule`` file whose sampler and timesteps to use (precedence: module
        docstring). ``labels``: class indices
        or names, used in turn (default: every class in turn); a (num,) tensor is used as is.
        ``prompts`` (text models only, instead of labels): used in turn; the empty prompt ""
        samples the unconditional model (the default when none is given).
        Returns, for ``output="uint8"``, images as a uint8 array (N, H, W, C) and 2-D points as
        float32 (N, D); for ``output="tensor"`` the float32 tensor the sampler returns (images
        (N, C, H, W) in [-1, 1]). ``log`` receives the settings line and progress.
        """
        settings = self.resolve_settings(
            settings,
            sampler=sampler,
            steps=steps,
            spacing=spacing,
            timesteps=timesteps,
            schedule_from=schedule_from,
            guidance=guidance,
            guidance_interval=guidance_interval,
            eta=eta,
            final_step=final_step,
            variance=variance,
        )
        if settings.variance == "learned" and not self.config.diffusion.learn_sigma:
            raise SettingsError(
                "variance", "'learned' needs a model trained with diffusion.learn_sigma = true"
            )
        y: Tensor | None
        if self.is_text:
            if labels is not None:
                raise SettingsError("labels", "this model is text-conditioned; give prompts=[...]")
            y = self.prompts_for(num, prompts)
        elif prompts is not None:
            raise SettingsError(
                "prompts", "needs a text-conditioned model; this one is not (use labels=[...])"
            )
        else:
            y = labels if isinstance(labels, Tensor) else self.labels_for(num, labels)
        if log is not None:
            variance = ""
            if (
                self.config.diffusion.learn_sigma
                and settings.sampler == "ddpm"
                and settings.variance in (None, "learned")
            ):
                variance = "; the network's learned variances"  # the ODE solvers ignore them
            log(f"sampling {num}: {settings.describe()}{variance}")
        x = draw(
            self.network,
            self.schedule,
            settings,
            shape=self.sample_shape,
            num=num,
            labels=y,
            seed=seed,
            prediction=self.config.diffusion.prediction,
            clip_x0=x0_clip_from_meta(self.meta["data"]),
            bf16=self.compute.bf16,
            device=self.device,
            batch_size=batch_size,
            callback=callback,
            log=log,
        )
        if output == "tensor":
            return x
        if output != "uint8":
            raise SettingsError("output", f"{output!r} is not 'uint8' or 'tensor'")
        if not self.is_image:
            return x.numpy()
        return to_uint8(x).permute(0, 2, 3, 1).numpy()


def run_folder(folder: Path) -> Path:
    """The run a weights folder belongs to: ``<run>`` for ``<run>/checkpoints/step_N``,
    ``<run>/model_ema/sigma_rel_X`` and ``<run>/model`` (when ``<run>/config.json`` is there);
    a standalone exported model folder is its own."""
    folder = Path(folder)
    if folder.parent.name in ("checkpoints", "model_ema"):
        return folder.parent.parent
    if folder.name == "model" and (folder.parent / "config.json").is_file():
        return folder.parent
    return folder


def load(
    path: str | Path, *, raw: bool = False, device: str | torch.device | None = None
) -> TrainedModel:
    """The model in a run folder, a checkpoint folder or an exported model folder.

    EMA weights by default; ``raw=True`` takes the raw training weights of a checkpoint.
    ``device`` defaults to CUDA when available, else the CPU; the numeric path (bf16, NHWC) is
    chosen for it by :func:`sampling_path`.
    """
    meta, folder = resolve_model_path(Path(path))
    if "config" not in meta or "data" not in meta:
        raise CheckpointError(f"{folder}: metadata has no config/data section; not a ddpmkit model")
    try:
        model, sched, cfg = model_from_meta(meta)
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder}: its config cannot be used ({e})") from None
    if (folder / "ema.safetensors").is_file():
        name = "model" if raw else "ema"
    else:
        if raw:
            raise CheckpointError(f"{folder}: an exported model holds only EMA weights; drop --raw")
        name = "model"
    sha = meta.get("sha256", {}).get(name)
    weights = _read_tensors(folder / f"{name}.safetensors", sha)
    load_weights(model, weights, str(folder / f"{name}.safetensors"))
    dev = torch.device(device) if device is not None else _default_device()
    compute = sampling_path(meta, dev)
    model.to(dev)
    if compute.channels_last:
        # NHWC: 1.2-1.3x faster sampling on a bf16 CPU (nn/groupnorm.py); same function
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    encoder = None
    if "text_encoder" in meta:
        from ddpmkit.text import encoder_from_config

        try:
            encoder = encoder_from_config(dict(meta["text_encoder"]["config"]))
        except (ImportError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{folder}: its text encoder cannot be rebuilt ({e})") from None
    return TrainedModel(model.eval(), sched, cfg, meta, folder, dev, compute, encoder)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
