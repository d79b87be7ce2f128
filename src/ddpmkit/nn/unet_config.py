"""The U-Net's architecture settings: :class:`UNetConfig` and the conditioning modes.

Separate from :mod:`ddpmkit.nn.unet` (the network) because the settings and their checks are a
concept of their own: configs, presets and validation read them without building a network.
:mod:`ddpmkit.nn.unet` re-exports every name here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["CONDITIONINGS", "Conditioning", "UNetConfig"]

# how class labels enter the U-Net: the one list (config validation imports it)
Conditioning = Literal["add", "cross", "add+cross"]
CONDITIONINGS: tuple[Conditioning, ...] = get_args(Conditioning)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`; :meth:`validate` says what cannot be built, and why.

    Fields:
        in_channels: image channels (also the output channels unless out_channels is set).
        out_channels: output channels; 0 = in_channels. Learned variances use 2 in_channels
            (the prediction, then the variance values v, along dim 1).
        image_size: S (square) or (H, W); 2^(len(channel_mults) - 1) must divide H and W.
        base_channels: width of the first level; level i has base_channels * channel_mults[i].
        channel_mults: one level per entry; a 2x downsampling between consecutive levels.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sides, min(H, W) of a level, that get self-attention
            (e.g. (14, 7) for 28x28 with mults (1, 2, 2)); the middle block always has it.
        num_heads: attention heads; must divide every level's width.
        dropout: in every ResBlock, before its last conv.
        num_classes: 0 = unconditional; otherwise labels 0..num_classes-1 plus a null class.
        conditioning: "add" (label embedding added to the time embedding), "cross"
            (cross-attention to label tokens at ``cross_attention_resolutions``, middle
            included) or "add+cross"; ignored when num_classes = 0.
        num_cond_tokens: tokens per label for cross-attention.
        text_dim: width D of the text encoder's tokens and pooled vector (384 for "minilm");
            0 = no text conditioning.
        text_conditioning: how text enters, as ``conditioning`` for labels: "add" (pooled
            vector), "cross" (tokens) or "add+cross"; ignored when text_dim = 0.
        cross_attention_resolutions: feature-map sides whose levels get cross-attention (labels
            or text), the middle block always; None = the attention_resolutions.
        scale_shift: FiLM-style GN(h) * (1 + scale) + shift from the time embedding
            (improved-diffusion); False adds it as a bias before the norm (Ho et al.).
        groups: GroupNorm groups; must divide every level's width.
        patch_size: space-to-depth factor p: the input (C, H, W) is rearranged into
            (C p^2, H/p, W/p) (``pixel_unshuffle``) before conv_in and the output back
            (``pixel_shuffle``), so the first level works at H/p x W/p with p^2 more input
            channels; 1 = off. Levels' sizes (attention_resolutions) are those after it.
        coord_channels: two extra input channels (after space-to-depth) holding each pixel's
            row and column in [-1, 1] (CoordConv, Liu et al. 2018): convolutions and attention
            without positional encodings know where they are only through the zero padding,
            and spatial prompts ("a bag to the left of a sandal") need the absolute position.
        cross_attention_positions: cross-attention queries computed from GN(x) plus a fixed
            2-D sin-cos code of the pixel's (row, column) (``blocks.CrossAttention``), so a
            pixel's query says where it is; every level width must be divisible by 4.
        text_refiner_layers: trainable transformer blocks over the projected text tokens
            before cross-attention (``blocks.TokenRefiner``; 0 = none): the frozen encoder's
            tokens re-read with the image model's loss. Needs "cross" in text_conditioning.
        text_pooling: the vector "add" puts into the time embedding: "encoder" (the text
            encoder's own pooled vector) or "attention" (``blocks.TokenPool`` over the
            projected, refined tokens: a learned, order-aware pool, which
            ``ddpmkit.training.text_align`` can pre-train against the images). "attention"
            needs "add" and "cross" in text_conditioning.
        text_layout: a layout map read from the text tokens by position-only queries
            (``ddpmkit.nn.layout.TextLayout``), added to every level's features through a
            zero-initialised 1x1 conv: "sandal on the left" becomes sandal features at the left
            positions. Needs "cross" in text_conditioning (it reads the cross-attention tokens).
        text_layout_dim: the layout map's width (0 = the conditioning width, 4 x base):
            what each level's 1x1 projection reads, so most of the map's cost.
    """

    in_channels: int = 1
    out_channels: int = 0
    image_size: int | tuple[int, int] = 28
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (7,)
    num_heads: int = 4
    dropout: float = 0.0
    num_classes: int = 0
    conditioning: Conditioning = "add"
    num_cond_tokens: int = 4
    scale_shift: bool = True
    groups: int = 8
    patch_size: int = 1
    coord_channels: bool = False
    text_dim: int = 0
    text_conditioning: Conditioning = "add+cross"
    cross_attention_resolutions: tuple[int, ...] | None = None
    cross_attention_positions: bool = False
    text_refiner_layers: int = 0
    text_pooling: Literal["encoder", "attention"] = "encoder"
    text_layout: bool = False
    text_layout_dim: int = 0

    def __post_init__(self) -> None:
        # Lists (from TOML/JSON configs) become tuples so the config stays hashable and equal to
        # the same config written with tuples.
        for name in ("channel_mults", "attention_resolutions", "cross_attention_resolutions"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        if isinstance(self.image_size, list):
            object.__setattr__(self, "image_size", tuple(self.image_size))

    @property
    def hw(self) -> tuple[int, int]:
        """(H, W) of the input images."""
        s = self.image_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    @property
    def cross_resolutions(self) -> tuple[int, ...]:
        """The levels' sizes that get cross-attention (labels or text)."""
        r = self.cross_attention_resolutions
        return self.attention_resolutions if r is None else r

    @property
    def uses_cross(self) -> bool:
        """True if some condition (labels or text) enters through cross-attention."""
        labels = self.num_classes > 0 and "cross" in self.conditioning
        return labels or (self.text_dim > 0 and "cross" in self.text_conditioning)

    def level_sizes(self) -> list[int]:
        """min(H, W) of the feature maps at each level (what attention_resolutions refers to)."""
        h, w = self.hw
        side = min(h, w) // max(self.patch_size, 1)
        return [side >> i for i in range(len(self.channel_mults))]

    def validate(self) -> None:
        """Raise ValueError (one line, naming the field) for a config that cannot be built."""
        s = self.image_size
        if not isinstance(s, int) and (not isinstance(s, tuple) or len(s) != 2):
            raise ValueError(f"image_size must be an int or a pair (H, W), got {s!r}")
        h, w = self.hw
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.out_channels < 0:
            raise ValueError(
                f"out_channels must be >= 0 (0 = in_channels), got {self.out_channels}"
            )
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ValueError(
                f"channel_mults must be non-empty positive integers, got {list(self.channel_mults)}"
            )
        for name in ("base_channels", "num_res_blocks", "groups", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        factor = 2 ** (len(self.channel_mults) - 1) * self.patch_size
        if h < 1 or w < 1 or h % factor or w % factor:
            raise ValueError(
                f"image_size {h}x{w} must be divisible by patch_size * 2^(levels-1) = {factor} "
                f"for channel_mults {list(self.channel_mults)} and patch_size "
                f"{self.patch_size}; resize the images or use fewer levels"
            )
        levels = [self.base_channels * m for m in self.channel_mults]
        for name, widths in (("groups", [self.base_channels, *levels]), ("num_heads", levels)):
            n = getattr(self, name)
            bad = sorted({c for c in widths if c % n})
            if bad:
                raise ValueError(
                    f"{name}={n} must divide every channel count; {bad} are not divisible "
                    f"(base_channels={self.base_channels}, "
                    f"channel_mults={list(self.channel_mults)})"
                )
        sizes = self.level_sizes()
        for name in ("attention_resolutions", "cross_attention_resolutions"):
            for r in getattr(self, name) or ():
                if r not in sizes:
                    raise ValueError(
                        f"{name}: no level has feature-map size {r}; the levels' sizes "
                        f"(min(H, W)) are {sizes}"
                    )
        for name in ("conditioning", "text_conditioning"):
            if getattr(self, name) not in CONDITIONINGS:
                raise ValueError(
                    f"{name} {getattr(self, name)!r} is not one of {list(CONDITIONINGS)}"
                )
        if self.text_dim < 0:
            raise ValueError(f"text_dim must be >= 0 (0 = no text), got {self.text_dim}")
        if self.text_refiner_layers < 0:
            raise ValueError(
                f"text_refiner_layers must be >= 0 (0 = none), got {self.text_refiner_layers}"
            )
        if self.text_refiner_layers and "cross" not in self.text_conditioning:
            raise ValueError(
                "text_refiner_layers refines the cross-attention tokens: it needs 'cross' in "
                f"text_conditioning, got {self.text_conditioning!r}"
            )
        if self.text_pooling not in ("encoder", "attention"):
            raise ValueError(
                f"text_pooling must be 'encoder' or 'attention', got {self.text_pooling!r}"
            )
        if self.text_pooling == "attention" and self.text_conditioning != "add+cross":
            raise ValueError(
                "text_pooling 'attention' pools the cross-attention tokens into the added "
                f"vector: it needs text_conditioning 'add+cross', got {self.text_conditioning!r}"
            )
        if self.text_layout and "cross" not in self.text_conditioning:
            raise ValueError(
                "text_layout reads the cross-attention tokens: it needs 'cross' in "
                f"text_conditioning, got {self.text_conditioning!r}"
            )
        if self.text_layout_dim < 0:
            raise ValueError(
                f"text_layout_dim must be >= 0 (0 = the conditioning width), got "
                f"{self.text_layout_dim}"
            )
        if self.cross_attention_positions and any(c % 4 for c in levels):
            raise ValueError(
                f"cross_attention_positions needs every level width divisible by 4, got {levels}"
            )
        if self.num_classes < 0:
            raise ValueError(
                f"num_classes must be >= 0 (0 = unconditional), got {self.num_classes}"
            )
        if self.num_cond_tokens < 1:
            raise ValueError(f"num_cond_tokens must be >= 1, got {self.num_cond_tokens}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
