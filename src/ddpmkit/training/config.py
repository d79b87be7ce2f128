"""Typed, serialisable run configuration: frozen dataclasses, TOML in, JSON in the checkpoint.

A run is described by :class:`RunConfig` = model + diffusion + data + train + sample sections.
TOML files are read with ``tomllib``; every key is checked against the dataclass fields and
their types, so an unknown key or a wrong type is a one-line :class:`ConfigError` naming the key
(``train.lr``), never a silent default. ``--set section.key=value`` overrides go through the same
check. The semantic checks (ranges, combinations) are :func:`validate_config`, in
:mod:`ddpmkit.training.config_checks`, re-exported here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import tomllib

from ddpmkit.data.registry import DatasetName
from ddpmkit.data.toy2d import ToyName
from ddpmkit.diffusion import DEFAULT_VLB_WEIGHT, Prediction
from ddpmkit.errors import ConfigError
from ddpmkit.nn.unet import Conditioning
from ddpmkit.sampling import Sampler, Spacing
from ddpmkit.sampling_core import FinalStep
from ddpmkit.schedule import ScheduleName
from ddpmkit.text.registry import TextEncoderName
from ddpmkit.training.config_checks import _check_choice, is_captioned, validate_config
from ddpmkit.training.presets import preset_path

__all__ = [
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "MLPSection",
    "ModelConfig",
    "RunConfig",
    "UNetSection",
    "SampleConfig",
    "TextConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "is_captioned",
    "load_config",
    "validate_config",
]


@dataclass(frozen=True)
class UNetSection:
    """``[model.unet]``: the U-Net's settings (the data gives channels, size and classes)."""

    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (7,)  # feature-map sides with self-attention
    num_heads: int = 4
    dropout: float = 0.0
    conditioning: Conditioning = "add"  # nn.unet.CONDITIONINGS (used when the data has labels)
    num_cond_tokens: int = 4  # condition tokens per label for cross-attention
    scale_shift: bool = True  # FiLM-style time conditioning in ResBlocks (improved-diffusion)
    groups: int = 8  # GroupNorm groups
    patch_size: int = 1  # space-to-depth: the U-Net works on (C p^2, H/p, W/p); 1 = off
    coord_channels: bool = False  # 2 input channels with the pixel's (row, column) in [-1, 1]
    checkpointing: bool = False  # U-Net activation checkpointing: less memory, ~30% more time
    # text (captioned data): how the prompt enters ("add" pooled, "cross" tokens, "add+cross")
    text_conditioning: Conditioning = "add+cross"
    cross_attention_resolutions: tuple[int, ...] = ()  # () = the attention_resolutions
    cross_attention_positions: bool = False  # queries know their pixel's (row, column)
    text_refiner_layers: int = 0  # trainable transformer blocks over the frozen text tokens
    # the vector "add" joins to the time embedding: "encoder" (its pooled vector) or
    # "attention" (a learned pool of the cross-attention tokens; what text.align_steps trains)
    text_pooling: Literal["encoder", "attention"] = "encoder"
    # a per-position readout of the text tokens added to every level (nn.layout): the prompt's
    # layout stated to the U-Net instead of left for it to discover
    text_layout: bool = False
    text_layout_dim: int = 0  # the map's width (0 = 4 x base_channels); sets most of its cost


@dataclass(frozen=True)
class MLPSection:
    """``[model.mlp]``: the 2-D toys' MLP."""

    hidden: int = 128
    depth: int = 3


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: which network, and its own section's settings.

    Settings written flat under ``[model]`` (``model.base_channels = 32``, as saved runs and
    ``--set`` overrides from before the sections have them) are read into their section.
    """

    kind: Literal["unet", "mlp", "mlp_step"] = "unet"  # images | 2-D, sinusoidal time | seed 002
    unet: UNetSection = field(default_factory=UNetSection)
    mlp: MLPSection = field(default_factory=MLPSection)


_SECTION_KEYS = {
    "unet": {f.name for f in fields(UNetSection)},
    "mlp": {f.name for f in fields(MLPSection)},
}


def _nest_flat_model_keys(data: dict[str, Any]) -> dict[str, Any]:
    """``[model]`` with flat U-Net/MLP keys moved into ``unet``/``mlp`` (a flat key wins over
    the same key in its section: it is the later override)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for section, keys in _SECTION_KEYS.items():
        flat = {k: out.pop(k) for k in list(out) if k in keys}
        if flat:
            inner = out.get(section, {})
            if not isinstance(inner, dict):
                raise ConfigError(f"model.{section}: expected a table, got {inner!r}")
            out[section] = {**inner, **flat}
    return out


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: Literal[ScheduleName, "custom"] = "cosine"  # schedule.SCHEDULES | custom (betas)
    num_steps: int = 1000
    betas: tuple[float, ...] = ()  # only with schedule = "custom"
    prediction: Prediction = "eps"  # diffusion.PREDICTIONS
    loss: Literal["mse", "l1"] = "mse"  # l1: seed 000
    min_snr_gamma: float = 0.0  # 0 = off; else min-SNR-gamma weighting (Hang et al. 2023)
    antithetic: bool = False  # seed 002's paired timesteps t and T-1-t
    # training noise levels: uniform t, or EDM's ln sigma ~ N(mean, std^2) mapped to the nearest
    # t (t_lognormal = [P_mean, P_std], Karras et al. 2022; diffusion.lognormal_timestep_probs)
    t_sampling: Literal["uniform", "lognormal"] = "uniform"
    t_lognormal: tuple[float, float] = (-1.2, 1.2)
    # learned variances (Nichol & Dhariwal 2021): the network also outputs v, the reverse
    # variance interpolates log beta_t and log beta~_t, trained by L_simple + vlb_weight L_vlb
    learn_sigma: bool = False
    vlb_weight: float = DEFAULT_VLB_WEIGHT  # lambda of the hybrid loss (with learn_sigma only)


@dataclass(frozen=True)
class DataConfig:
    name: Literal[DatasetName, ToyName] = "fashion_mnist"  # data.DATASETS | data.toy2d.TOY_NAMES
    root: str = ""  # dataset folder ("" = the dataset's default location)
    image_size: tuple[int, ...] = ()  # () = native; (S,) square; (H, W)
    channels: int = 0  # 0 = native/inferred; 1 or 3
    class_subfolders: bool = False  # folder datasets: first-level subfolder = class label
    conditional: bool = True  # use labels when the dataset has them
    hflip: bool = False  # random horizontal flip (not for digits/text-like data)
    download: bool = False  # fetch canonical MNIST-like files into the cache if missing
    num_points: int = 10_000  # 2-D toys: size of the training set
    # folder: images carry captions (name.txt sidecars or metadata.jsonl): a text-to-image run
    captions: bool = False
    max_items: int = 0  # keep the first N training items (0 = all); for quick runs and tests
    scene_share: float = 0.5  # fashion_scenes: share of two-garment scenes (the rest singles)


@dataclass(frozen=True)
class TextConfig:
    """The frozen text encoder of a captioned run (ignored for data without captions)."""

    encoder: TextEncoderName = "minilm"  # ddpmkit.text.TEXT_ENCODERS
    max_length: int = 32  # tokens kept per prompt; longer prompts are truncated (one warning)
    # > 0: before diffusion, this many contrastive steps (CLIP's loss, mirrored images as
    # negatives) train the U-Net's text side against a small image tower
    # (ddpmkit.training.text_align);
    # needs model.unet.text_pooling = "attention" (one vector per caption, mirrors as negatives)
    # or model.unet.text_layout = true (the layout map, cell by cell: left half, right half).
    # Counted in train.time_limit_min.
    align_steps: int = 0
    align_batch: int = 256
    align_lr: float = 1e-3
    align_freeze: bool = True  # keep the aligned text side fixed during diffusion training


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_decay: Literal["none", "cosine"] = "none"  # cosine: to 0 at train.steps or at the time limit
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    grad_accum: int = 1  # micro-batches per optimizer step
    ema_decay: float = 0.999
    # EMA updates of warm-up: update n (from 0) uses decay ema_decay * min(1, n / ema_warmup),
    # a linear ramp from 0 (training/ema.py); 0 = ema_decay from the first update
    ema_warmup: int = 100
    # extra power-function EMAs (EDM2), one per relative length sigma_rel in (0, 0.2887), kept
    # beside the EMA above and written to <run>/model_ema/sigma_rel_X/ (training/power_ema.py)
    ema_sigma_rels: tuple[float, ...] = ()
    # > 0: the run's own average (checkpoints, <run>/model/) is the power-function EMA of this
    # relative length instead of the classic EMA of ema_decay/ema_warmup (EDM2; power_ema.py);
    # those two are then ignored, and validate_config warns when they are not the defaults
    ema_sigma_rel: float = 0.0
    # > 0: every N steps (and at the end) also write each average of ema_sigma_rels as a
    # snapshot, <run>/ema_snapshots/sigma_rel_X/step_*.safetensors, from which `ddpm ema` builds
    # the average of any length after training (EDM2 post-hoc EMA; posthoc_ema.py); 0 = off
    ema_snapshot_every: int = 0
    cfg_dropout: float = 0.1  # probability of replacing a label by the null class
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16: autocast
    # auto: NHWC on a bf16 CPU with the fused GroupNorm
    channels_last: Literal["auto", "on", "off"] = "auto"
    num_threads: int = 0  # torch threads; 0 = leave torch's default
    log_every: int = 50
    sample_every: int = 500  # sample grid PNG every K steps; 0 = only at the end
    # also a grid every M minutes of wall-clock, the first after M/2 (0 = off): previews at the
    # same moments on a fast and a slow machine; none starts within M/2 of the time limit
    preview_every_min: float = 0.0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    time_limit_min: float = 0.0  # stop (and checkpoint) after this many minutes; 0 = no limit
    max_bad_steps: int = 10  # consecutive non-finite losses before the run stops
    # auto (on for CUDA) | on | off: no host-device synchronisation in the step loop; a
    # non-finite step is skipped on the device and the stop rule is checked at log steps
    sync_free: Literal["auto", "on", "off"] = "auto"
    # off | on: torch.compile the network for training (measured on the 2-core CPU: 0.95x of
    # eager after ~5 minutes of compilation, so off by default; see docs/performance.md)
    compile: Literal["off", "on"] = "off"


@dataclass(frozen=True)
class SampleConfig:
    sampler: Sampler = "ddim"  # a key of sampling.SAMPLERS
    steps: int = 50
    guidance: float = 1.0  # classifier-free guidance scale w (1 = plain conditional)
    # (sigma_lo, sigma_hi): guide only where the noise level sigma_t is in (lo, hi]
    # (Kynkaanniemi et al. 2024; sample_settings.SampleSettings); () = at every step
    guidance_interval: tuple[float, ...] = ()
    num: int = 64  # samples in a training-time grid
    spacing: Spacing = "trailing"  # one of sampling.SPACINGS
    # a `ddpm schedule` grid (JSON; relative = to the run folder): its sampler and timesteps
    # replace sampler/steps/spacing for the trained model (trained.py); "" = none. Training
    # previews ignore it (the grid is made for the finished model and may not exist yet).
    schedule_file: str = ""
    # the step from the last timestep to clean data (sample_settings.SampleSettings): "denoise"
    # (x_0 = D, right for 8-bit images) or "ode" (trapezoidal, for continuous data)
    final_step: FinalStep = "denoise"


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    out_dir: str = ""  # "" = runs/<name>
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name


T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (lists -> tuples)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        _check_choice(key, value, typing.get_args(tp))
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a valid {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            if isinstance(value, int) and not isinstance(value, bool):
                value = [value]  # image_size = 28 is shorthand for (28,)
            else:
                raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, _ell) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def config_from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {data!r}")
    if cls is ModelConfig:
        data = _nest_flat_model_keys(data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(f"unknown key {key!r}; allowed keys here: {sorted(names)}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = config_from_dict(tp, v, prefix=f"{key}.")  # type: ignore[arg-type]
        else:
            kwargs[k] = _coerce(v, tp, key)
    return cls(**kwargs)


def _parse_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None


def _parse_value(text: str) -> Any:
    """A --set value: TOML syntax (numbers, true/false, [lists], "strings"), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested config dict (validated later)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=500")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(text.strip())
    return out


def load_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> RunConfig:
    """Read a TOML file (or a built-in preset name), apply overrides, validate (``log``: where
    :func:`validate_config`'s warnings go)."""
    if path is None:
        data: dict[str, Any] = {}
    else:
        p = Path(path)
        if not p.is_file() and p.suffix == "":  # a bare name is a built-in preset
            p = preset_path(str(path))
        data = _parse_toml(p)
    data = apply_overrides(data, overrides or [])
    return validate_config(config_from_dict(RunConfig, data), log)
