"""Explicit builders from config to objects: the data, the network, the schedule.

No class names in strings, no registries of callables beyond the small dicts below: each kind of
object is built by one function that reads the config section it needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ddpmkit.data.toy2d import TOY_NAMES
from ddpmkit.errors import CheckpointError, ConfigError
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.training.config import DiffusionConfig, ModelConfig, RunConfig

__all__ = ["TrainData", "build_model", "build_schedule", "load_train_data", "model_from_meta"]


@dataclass
class TrainData:
    """Training data in memory. Images: uint8 (N, C, H, W); toys: float32 (N, 2)."""

    x: Tensor
    labels: Tensor | None  # int64 (N,) or None
    class_names: list[str]
    kind: str  # "image" | "toy"
    source: str
    # text-to-image: ``labels`` are caption ids into ``captions`` (the sorted caption set)
    captions: list[str] | None = None
    garments: Tensor | None = None  # int64 (N, 2) for captioned Fashion-MNIST, else None

    @property
    def is_text(self) -> bool:
        return self.captions is not None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        if self.captions is not None:
            return 0
        return len(self.class_names) if self.labels is not None else 0

    @property
    def x0_range(self) -> float:
        """Bound c for clipping the samplers' x_0 estimates to [-c, c].

        Images live in [-1, 1]. 2-D toys get 1.25 x their largest coordinate: wide enough never
        to touch a good estimate, tight enough to stop the first deterministic step from t = T-1
        (cosine: abar = 2.4e-9, so x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) multiplies an
        eps error of 0.03 by 2 x 10^4) from throwing samples far off the data.
        """
        if self.kind == "image":
            return 1.0
        return round(1.25 * float(self.x.abs().max()), 3)

    def describe(self) -> dict[str, Any]:
        """JSON-able description stored in checkpoints (to rebuild the model and check data)."""
        return {
            "kind": self.kind,
            "x0_range": self.x0_range,
            "sample_shape": list(self.sample_shape),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "source": self.source,
            "num_items": int(self.x.shape[0]),
            **({"num_captions": len(self.captions)} if self.captions is not None else {}),
        }


def load_train_data(cfg: RunConfig, log: Any = print) -> TrainData:
    """Load the dataset named by ``cfg.data`` into memory."""
    d = cfg.data
    if d.name in TOY_NAMES:
        from ddpmkit.data.toy2d import make_toy

        x = make_toy(d.name, d.num_points, seed=cfg.train.seed)
        return TrainData(x, None, [], "toy", f"{d.name} ({d.num_points} points)")
    from ddpmkit.training.config import is_captioned

    if is_captioned(cfg):
        return _load_captioned(cfg, log)
    from ddpmkit.data import DATASETS, load_dataset

    if d.name not in DATASETS:
        raise ConfigError(
            f"data.name: {d.name!r} is not allowed; expected one of "
            f"{sorted([*DATASETS, *TOY_NAMES])}"
        )
    size: int | tuple[int, int] | None
    if not d.image_size:
        size = None
    elif len(d.image_size) == 1:
        size = d.image_size[0]
    else:
        size = (d.image_size[0], d.image_size[1])
    data = load_dataset(
        d.name,
        root=d.root or None,
        split="train",
        image_size=size,
        channels=d.channels or None,
        class_subfolders=d.class_subfolders,
        download=d.download,
        log=log,
    )
    labels = data.labels if (d.conditional and data.labels is not None) else None
    names = list(data.class_names) if labels is not None else []
    return TrainData(data.images, labels, names, "image", data.source)


def _size(image_size: tuple[int, ...]) -> int | tuple[int, int] | None:
    if not image_size:
        return None
    if len(image_size) == 1:
        return image_size[0]
    return (image_size[0], image_size[1])


def _load_captioned(cfg: RunConfig, log: Any) -> TrainData:
    """Images + caption ids (as ``labels``) of a captioned dataset (``is_captioned(cfg)``)."""
    from ddpmkit.data.registry import load_captioned

    d = cfg.data
    cap = load_captioned(
        d.name,
        root=d.root or None,
        split="train",
        image_size=_size(d.image_size),
        channels=d.channels or None,
        seed=cfg.train.seed,
        max_items=d.max_items,
        scene_share=d.scene_share,
        log=log,
    )
    names = list(cap.class_names)
    return TrainData(
        cap.images, cap.caption_ids, names, "image", cap.source, list(cap.caption_set),
        cap.garments,
    )  # fmt: skip


def build_text_encoder_for(cfg: RunConfig, captions: list[str], log: Any = print) -> Any:
    """The run's frozen text encoder (``[text]``); "tiny" takes the captions' vocabulary."""
    from ddpmkit.text import build_text_encoder, vocabulary_of

    t = cfg.text
    try:
        if t.encoder == "tiny":
            return build_text_encoder(
                "tiny", vocabulary=vocabulary_of(captions), max_length=t.max_length, log=log
            )
        return build_text_encoder(t.encoder, max_length=t.max_length, log=log)
    except ImportError as e:
        raise ConfigError(f"text.encoder: {t.encoder!r} cannot be loaded: {e}") from None


def build_text_model(
    cfg: RunConfig, data: TrainData, num_steps: int, log: Any = print
) -> tuple[nn.Module, dict[str, Any]]:
    """(TextConditioned(U-Net, the caption table), the run metadata's ``text_encoder`` entry:
    the encoder's ``config()`` and width) for captioned data."""
    from ddpmkit.text import encode_all
    from ddpmkit.text.conditioned import TextConditioned

    assert data.captions is not None
    encoder = build_text_encoder_for(cfg, data.captions, log)
    table = encode_all(encoder, data.captions)
    net = build_model(
        cfg.model,
        data.sample_shape,
        0,
        num_steps,
        text_dim=encoder.dim,
        learn_sigma=cfg.diffusion.learn_sigma,
    )
    return TextConditioned(net, table), {"config": encoder.config(), "dim": encoder.dim}


def x0_clip_from_meta(data_desc: dict[str, Any]) -> float | None:
    """The sampler ``clip_x0`` bound for a saved model's data description (``describe()``).

    Images: 1.0. Toys: the saved ``x0_range`` (None for models saved before it was recorded).
    """
    if len(data_desc.get("sample_shape", [])) == 3:
        return 1.0
    value = data_desc.get("x0_range")
    return float(value) if value is not None else None


def build_schedule(cfg: DiffusionConfig) -> NoiseSchedule:
    if cfg.schedule == "custom":
        try:
            return NoiseSchedule.from_betas(list(cfg.betas))
        except ValueError as e:
            raise ConfigError(f"diffusion.betas: {e}") from None
    return NoiseSchedule.from_name(cfg.schedule, cfg.num_steps)


def build_model(
    cfg: ModelConfig,
    sample_shape: tuple[int, ...],
    num_classes: int,
    num_steps: int,
    *,
    text_dim: int = 0,
    learn_sigma: bool = False,
) -> nn.Module:
    """The denoiser for data of ``sample_shape``: (D,) -> MLP, (C, H, W) -> U-Net.

    ``learn_sigma`` (``diffusion.learn_sigma``): twice the output channels, [prediction; v].
    """
    factor = 2 if learn_sigma else 1
    if cfg.kind in ("mlp", "mlp_step"):
        if len(sample_shape) != 1:
            raise ConfigError(
                f"model.kind: {cfg.kind!r} is for vector (2-D toy) data, but the data has shape "
                f"{list(sample_shape)}; use model.kind = 'unet' for images"
            )
        if num_classes:
            raise ConfigError("model.kind: the MLPs are unconditional; set data.conditional=false")
        from ddpmkit.nn.mlp import SinusoidalMLP, StepEmbedMLP

        if cfg.kind == "mlp_step":
            return StepEmbedMLP(
                num_steps, sample_shape[0], cfg.mlp.hidden, cfg.mlp.depth,
                out_dim=factor * sample_shape[0],
            )  # fmt: skip
        return SinusoidalMLP(
            sample_shape[0], cfg.mlp.hidden, cfg.mlp.depth, out_dim=factor * sample_shape[0]
        )
    if len(sample_shape) != 3:
        raise ConfigError(
            f"model.kind: 'unet' needs image data (C, H, W), but the data has shape "
            f"{list(sample_shape)}; use model.kind = 'mlp' for 2-D toys"
        )
    from ddpmkit.nn.unet import UNet, UNetConfig

    c, h, w = sample_shape
    # [model.unet] holds UNetConfig's own fields; the data gives channels, size and classes
    section = dataclasses.asdict(cfg.unet)
    checkpointing = section.pop("checkpointing")
    cross = tuple(section.pop("cross_attention_resolutions")) or None
    ucfg = UNetConfig(
        **section,
        in_channels=c,
        out_channels=factor * c,
        image_size=(h, w),
        num_classes=num_classes,
        text_dim=text_dim,
        cross_attention_resolutions=cross,
    )
    try:
        return UNet(ucfg, checkpointing=checkpointing)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None


def model_from_meta(meta: dict[str, Any]) -> tuple[nn.Module, NoiseSchedule, RunConfig]:
    """Rebuild (network, schedule, config) from checkpoint/export metadata (no weights loaded)."""
    from ddpmkit.training.config import config_from_dict

    cfg = config_from_dict(RunConfig, meta["config"])
    data = meta["data"]
    if "text_encoder" in meta:  # a text model: the U-Net inside TextConditioned (no table yet)
        from ddpmkit.text.conditioned import TextConditioned

        dim = int(meta["text_encoder"]["dim"])
        net = build_model(
            cfg.model,
            tuple(data["sample_shape"]),
            0,
            cfg.diffusion.num_steps,
            text_dim=dim,
            learn_sigma=cfg.diffusion.learn_sigma,
        )
        return TextConditioned(net), build_schedule(cfg.diffusion), cfg
    model = build_model(
        cfg.model,
        tuple(data["sample_shape"]),
        int(data["num_classes"]),
        cfg.diffusion.num_steps,
        learn_sigma=cfg.diffusion.learn_sigma,
    )
    return model, build_schedule(cfg.diffusion), cfg


def load_weights(model: nn.Module, weights: dict[str, Tensor], source: str) -> None:
    """load_state_dict with a one-line error for a wrong architecture."""
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(
            f"{source}: weights do not fit the model in its config (wrong architecture): "
            f"{detail[:300]}"
        ) from None


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
