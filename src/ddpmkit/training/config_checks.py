"""Semantic checks of a run configuration: :func:`validate_config` and its ``_check_*`` parts.

:mod:`ddpmkit.training.config` checks every key's name and type while it builds the frozen
dataclasses; this module checks what types cannot say: choices of ``Literal`` fields (for
configs built in Python), ranges, and combinations of keys. A problem is a one-line
:class:`~ddpmkit.errors.ConfigError` naming the key and the fix; a valid setting that has no
effect is a one-line warning. :func:`validate_config` is re-exported by
:mod:`ddpmkit.training.config`, where existing imports find it.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ddpmkit.diffusion import DEFAULT_VLB_WEIGHT
from ddpmkit.errors import ConfigError

if TYPE_CHECKING:
    from ddpmkit.training.config import DiffusionConfig, RunConfig, TrainConfig

__all__ = ["CAPTIONED", "is_captioned", "validate_config"]


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not allowed; expected one of {list(allowed)}")


def _check_literals(section: Any, prefix: str) -> None:
    """Every ``Literal`` field of a config section holds one of its names (configs built in
    Python skip :func:`config_from_dict`'s check)."""
    for name, tp in typing.get_type_hints(type(section)).items():
        if typing.get_origin(tp) is Literal:
            _check_choice(f"{prefix}.{name}", getattr(section, name), typing.get_args(tp))


def validate_config(cfg: RunConfig, log: Callable[[str], None] | None = None) -> RunConfig:
    """Semantic checks beyond types (choices, ranges); raises ConfigError naming the key.

    A setting that is valid but has no effect is a one-line warning instead (:func:`_check_ema`):
    given to ``log`` ("warning: ..."), as the command line's other warnings are, or, without
    ``log``, to :func:`warnings.warn`.
    """
    m, d, dt, tr, s = cfg.model, cfg.diffusion, cfg.data, cfg.train, cfg.sample
    for prefix in ("model", "diffusion", "data", "train", "sample", "text"):
        _check_literals(getattr(cfg, prefix), prefix)
    u, mlp = m.unet, m.mlp
    _check_literals(u, "model.unet")
    if u.checkpointing and m.kind != "unet":
        raise ConfigError(
            f"model.unet.checkpointing: only the U-Net supports activation checkpointing, but "
            f"model.kind = {m.kind!r}; set model.unet.checkpointing = false"
        )
    positive: dict[str, float] = {
        "diffusion.num_steps": d.num_steps,
        "train.steps": tr.steps,
        "train.batch_size": tr.batch_size,
        "train.grad_accum": tr.grad_accum,
        "train.log_every": tr.log_every,
        "train.checkpoint_every": tr.checkpoint_every,
        "train.keep_checkpoints": tr.keep_checkpoints,
        "train.max_bad_steps": tr.max_bad_steps,
        "sample.steps": s.steps,
        "sample.num": s.num,
        "model.unet.base_channels": u.base_channels,
        "model.unet.num_res_blocks": u.num_res_blocks,
        "model.unet.num_heads": u.num_heads,
        "model.mlp.hidden": mlp.hidden,
        "model.mlp.depth": mlp.depth,
        "model.unet.groups": u.groups,
        "model.unet.patch_size": u.patch_size,
        "model.unet.num_cond_tokens": u.num_cond_tokens,
        "data.num_points": dt.num_points,
    }
    for key, v in positive.items():
        if v < 1:
            raise ConfigError(f"{key}: must be >= 1, got {v}")
    nonneg: dict[str, float] = {
        "train.lr": tr.lr,
        "train.weight_decay": tr.weight_decay,
        "train.warmup_steps": tr.warmup_steps,
        "train.grad_clip": tr.grad_clip,
        "train.ema_warmup": tr.ema_warmup,
        "train.ema_snapshot_every": tr.ema_snapshot_every,
        "train.num_threads": tr.num_threads,
        "train.sample_every": tr.sample_every,
        "train.preview_every_min": tr.preview_every_min,
        "train.time_limit_min": tr.time_limit_min,
        "diffusion.min_snr_gamma": d.min_snr_gamma,
        "model.unet.dropout": u.dropout,
        "data.channels": dt.channels,
    }
    for key, v in nonneg.items():
        if not v >= 0:  # also rejects NaN
            raise ConfigError(f"{key}: must be >= 0, got {v}")
    if not 0.0 <= tr.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay: must be in [0, 1), got {tr.ema_decay}")
    gi = cfg.sample.guidance_interval
    if gi and not (len(gi) == 2 and 0.0 <= gi[0] < gi[1]):
        raise ConfigError(
            f"sample.guidance_interval: need [sigma_lo, sigma_hi] with 0 <= lo < hi, got {list(gi)}"
        )
    if not 0.0 <= tr.ema_sigma_rel < 0.2887:
        raise ConfigError(
            f"train.ema_sigma_rel: must be in [0, 0.2887) (0 = the classic EMA), got "
            f"{tr.ema_sigma_rel}"
        )
    for sr in tr.ema_sigma_rels:
        if not 0.0 < sr < 0.2887:
            raise ConfigError(f"train.ema_sigma_rels: each must be in (0, 0.2887), got {sr}")
    if len(set(tr.ema_sigma_rels)) != len(tr.ema_sigma_rels):
        raise ConfigError(f"train.ema_sigma_rels: values repeat: {tr.ema_sigma_rels}")
    if tr.ema_snapshot_every > 0 and not tr.ema_sigma_rels:
        raise ConfigError(
            "train.ema_snapshot_every: snapshots are of the averages of train.ema_sigma_rels, "
            "which is empty; set two lengths, e.g. train.ema_sigma_rels = [0.05, 0.10]"
        )
    if not 0.0 <= tr.cfg_dropout < 1.0:
        raise ConfigError(f"train.cfg_dropout: must be in [0, 1), got {tr.cfg_dropout}")
    if not 0.0 <= u.dropout < 1.0:
        raise ConfigError(f"model.unet.dropout: must be in [0, 1), got {u.dropout}")
    if tr.lr <= 0:
        raise ConfigError(f"train.lr: must be > 0, got {tr.lr}")
    if s.schedule_file != s.schedule_file.strip():
        raise ConfigError(
            f"sample.schedule_file: {s.schedule_file!r} has leading or trailing spaces; give "
            f'the path of a `ddpm schedule` file, e.g. "steps_10.json", or "" for none'
        )
    if s.steps > d.num_steps:
        raise ConfigError(
            f"sample.steps: {s.steps} is more than diffusion.num_steps = {d.num_steps}"
        )
    if dt.channels not in (0, 1, 3):
        raise ConfigError(f"data.channels: must be 0 (native), 1 or 3, got {dt.channels}")
    if len(dt.image_size) > 2 or any(v < 1 for v in dt.image_size):
        raise ConfigError(
            f"data.image_size: expected [] , [S] or [H, W], got {list(dt.image_size)}"
        )
    if d.schedule == "custom":
        if not d.betas:
            raise ConfigError("diffusion.betas: required when diffusion.schedule = 'custom'")
        if len(d.betas) != d.num_steps:
            raise ConfigError(
                f"diffusion.betas: has {len(d.betas)} values but "
                f"diffusion.num_steps = {d.num_steps}"
            )
    elif d.betas:
        raise ConfigError("diffusion.betas: only allowed with diffusion.schedule = 'custom'")
    _check_learn_sigma(d)
    _check_ema(tr, log)
    _check_t_sampling(d)
    _check_text(cfg)
    if ".." in Path(cfg.name).parts or "/" in cfg.name or "\\" in cfg.name or not cfg.name:
        raise ConfigError(f"name: {cfg.name!r} must be a plain folder name (no '/' or '..')")
    return cfg


def _check_t_sampling(d: DiffusionConfig) -> None:
    if d.t_sampling == "lognormal":
        if len(d.t_lognormal) != 2 or not d.t_lognormal[1] > 0:
            raise ConfigError(
                "diffusion.t_lognormal: expected [P_mean, P_std] with P_std > 0, got "
                f"{list(d.t_lognormal)}"
            )
        if d.antithetic:
            raise ConfigError(
                "diffusion.antithetic: pairs t with T-1-t of a uniform draw; it does not apply "
                "with diffusion.t_sampling = 'lognormal' (set one of them off)"
            )


def _check_learn_sigma(d: DiffusionConfig) -> None:
    if d.learn_sigma and not (0 < d.vlb_weight < float("inf")):
        raise ConfigError(
            f"diffusion.vlb_weight: must be > 0 with diffusion.learn_sigma = true (it is all "
            f"that trains the variance), got {d.vlb_weight}"
        )
    if not d.learn_sigma and d.vlb_weight != DEFAULT_VLB_WEIGHT:
        raise ConfigError(
            f"diffusion.vlb_weight: only used with diffusion.learn_sigma = true; set "
            f"learn_sigma = true or drop vlb_weight (got {d.vlb_weight})"
        )


def _check_ema(tr: TrainConfig, log: Callable[[str], None] | None) -> None:
    """``train.ema_sigma_rel > 0`` makes the run's average EDM2's power-function EMA, which has
    no decay or warm-up: a non-default ``ema_decay``/``ema_warmup`` is then ignored.

    A warning, not a ConfigError: the value usually comes from a preset (moons and s_curve set
    ema_decay = 0.995, ema_warmup = 200) that a user switches to the power EMA with one
    ``--set train.ema_sigma_rel=...``; refusing that would make them override two values that do
    nothing. The range checks of validate_config still apply to both.
    """
    if tr.ema_sigma_rel <= 0:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(tr)}
    unused = [f"train.{k} = {getattr(tr, k)}" for k in ("ema_decay", "ema_warmup")
              if getattr(tr, k) != defaults[k]]  # fmt: skip
    if not unused:
        return
    many = len(unused) > 1
    msg = (
        f"{' and '.join(unused)} {'are' if many else 'is'} ignored: train.ema_sigma_rel = "
        f"{tr.ema_sigma_rel:g} makes the run's average the power-function EMA; drop "
        f"{'them' if many else 'it'}, or set train.ema_sigma_rel = 0 for the classic EMA"
    )
    if log is not None:
        log(f"warning: {msg}")
    else:
        warnings.warn(msg, UserWarning, stacklevel=3)


CAPTIONED = ("fashion_captions", "fashion_scenes")  # the built-in captioned datasets


def is_captioned(cfg: RunConfig) -> bool:
    """True for a text-to-image run: captioned data (built-in or a folder with captions)."""
    return cfg.data.name in CAPTIONED or (cfg.data.name == "folder" and cfg.data.captions)


def _check_text(cfg: RunConfig) -> None:
    dt = cfg.data
    if dt.max_items < 0:
        raise ConfigError(f"data.max_items: must be >= 0 (0 = all), got {dt.max_items}")
    if not 0.0 <= dt.scene_share <= 1.0:
        raise ConfigError(f"data.scene_share: must be in [0, 1], got {dt.scene_share}")
    if cfg.text.max_length < 1:
        raise ConfigError(f"text.max_length: must be >= 1, got {cfg.text.max_length}")
    t = cfg.text
    if t.align_steps < 0 or t.align_batch < 2 or t.align_lr <= 0:
        raise ConfigError(
            "text.align_steps must be >= 0, text.align_batch >= 2 and text.align_lr > 0, got "
            f"{t.align_steps}, {t.align_batch}, {t.align_lr}"
        )
    u = cfg.model.unet
    if t.align_steps and u.text_pooling != "attention" and not u.text_layout:
        raise ConfigError(
            "text.align_steps trains the attention pool or the layout map of the text tokens: "
            "set model.unet.text_pooling = 'attention' or model.unet.text_layout = true (or "
            "text.align_steps = 0)"
        )
    if dt.captions and dt.name != "folder":
        raise ConfigError(
            f"data.captions: only for data.name = 'folder' (got {dt.name!r}); the captioned "
            f"built-in sets are {list(CAPTIONED)}"
        )
    if not is_captioned(cfg):
        return
    if dt.hflip:
        raise ConfigError(
            "data.hflip: a flip swaps left and right in captioned images (and their captions "
            "no longer match); set data.hflip = false"
        )
    if cfg.model.kind != "unet":
        raise ConfigError(f"model.kind: text conditioning needs the U-Net, got {cfg.model.kind!r}")
    if not dt.conditional:
        raise ConfigError(
            "data.conditional: false would ignore the captions; drop it or use uncaptioned data"
        )
