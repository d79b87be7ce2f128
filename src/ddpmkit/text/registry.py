"""Text encoders by name: the one list (``TEXT_ENCODERS``) a config's encoder field names."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

from ddpmkit.text.encoding import TextEncoder

__all__ = ["TEXT_ENCODERS", "TextEncoderName", "build_text_encoder", "encoder_from_config"]

# "minilm": pretrained all-MiniLM-L6-v2 (needs the [text] extra); "tiny": seeded, no download
TextEncoderName = Literal["minilm", "tiny"]
TEXT_ENCODERS: tuple[TextEncoderName, ...] = get_args(TextEncoderName)


def build_text_encoder(
    name: str,
    *,
    vocabulary: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
    **options: object,
) -> TextEncoder:
    """The encoder ``name`` (one of ``TEXT_ENCODERS``); ``encoder.config()`` round-trips.

    ``vocabulary`` is required by "tiny" (e.g. ``vocabulary_of(captions)``) and ignored by
    "minilm"; ``options`` are the encoder's keyword arguments (``max_length``, and for "tiny"
    ``dim``, ``num_layers``, ``num_heads``, ``seed``). Raises ValueError for an unknown name
    or option, ImportError (saying what to install) when "minilm" is not installed.
    """
    if name == "minilm":
        from ddpmkit.text.minilm import MiniLMEncoder

        unknown = set(options) - {"max_length"}
        if unknown:
            raise ValueError(f"unknown options for the minilm encoder: {sorted(unknown)}")
        return MiniLMEncoder(log=log, **options)  # type: ignore[arg-type]
    if name == "tiny":
        from ddpmkit.text.tiny import TinyEncoder

        if vocabulary is None:
            raise ValueError("the tiny text encoder needs a vocabulary (vocabulary_of(captions))")
        unknown = set(options) - {"dim", "num_layers", "num_heads", "max_length", "seed"}
        if unknown:
            raise ValueError(f"unknown options for the tiny encoder: {sorted(unknown)}")
        return TinyEncoder(vocabulary, log=log, **options)  # type: ignore[arg-type]
    raise ValueError(f"unknown text encoder {name!r}; expected one of {list(TEXT_ENCODERS)}")


def encoder_from_config(
    config: dict[str, object], log: Callable[[str], None] = print
) -> TextEncoder:
    """Rebuild an encoder from its ``config()`` dict (as stored beside a checkpoint)."""
    cfg = dict(config)
    name = str(cfg.pop("name", ""))
    vocab = cfg.pop("vocabulary", None)
    vocabulary = [str(w) for w in vocab] if isinstance(vocab, list) else None
    return build_text_encoder(name, vocabulary=vocabulary, log=log, **cfg)
