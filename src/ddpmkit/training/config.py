"""Typed, serialisable run configuration: frozen dataclasses, TOML in, JSON in the checkpoint.

A run is described by :class:`RunConfig` = model + diffusion + data + train + sample sections.
TOML files are read with ``tomllib``; every key is checked against the dataclass fields and
their types, so an unknown key or a wrong type is a one-line :class:`ConfigError` naming the key
(``train.lr``), never a silent default. ``--set section.key=value`` overrides go through the same
check.
"""

from __future__ import annotations

import dataclasses
import types
import typing
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
from ddpmkit.schedule import ScheduleName
from ddpmkit.text.registry import TextEncoderName
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
    "load_config",
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
    # relative length instead of the classic EMA of ema_decay/ema_warmup (EDM2; power_ema.py)
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


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not allowed; expected one of {list(allowed)}")


def _check_literals(section: Any, prefix: str) -> None:
    """Every ``Literal`` field of a config section holds one of its names (configs built in
    Python skip :func:`config_from_dict`'s check)."""
    for name, tp in typing.get_type_hints(type(section)).items():
        if typing.get_origin(tp) is Literal:
            _check_choice(f"{prefix}.{name}", getattr(section, name), typing.get_args(tp))


def validate_config(cfg: RunConfig) -> RunConfig:
    """Semantic checks beyond types (choices, ranges); raises ConfigError naming the key."""
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


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML file (or a built-in preset name), apply overrides, validate."""
    if path is None:
        data: dict[str, Any] = {}
    else:
        p = Path(path)
        if not p.is_file() and p.suffix == "":  # a bare name is a built-in preset
            p = preset_path(str(path))
        data = _parse_toml(p)
    data = apply_overrides(data, overrides or [])
    return validate_config(config_from_dict(RunConfig, data))
