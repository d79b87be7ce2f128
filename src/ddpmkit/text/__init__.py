"""Text encoders behind one interface: prompts -> TextEncoding(tokens, mask, pooled).

``build_text_encoder(name)`` with a name from ``TEXT_ENCODERS`` ("minilm": pretrained
all-MiniLM-L6-v2 from the ``[text]`` extra; "tiny": seeded word-level transformer, no
dependency); ``encode_all(encoder, captions)`` caches a finite caption set for training;
``CachedEncoder`` memoises prompts for sampling. See :mod:`ddpmkit.text.encoding` for the
null condition (the empty prompt) and padding.
"""

from ddpmkit.text.conditioned import TextConditioned
from ddpmkit.text.encoding import (
    CachedEncoder,
    CaptionTable,
    TextEncoder,
    TextEncoding,
    encode_all,
    is_null_prompt,
)
from ddpmkit.text.registry import (
    TEXT_ENCODERS,
    TextEncoderName,
    build_text_encoder,
    encoder_from_config,
)
from ddpmkit.text.tiny import TinyEncoder, tokenize_words, vocabulary_of

__all__ = [
    "TEXT_ENCODERS",
    "CachedEncoder",
    "CaptionTable",
    "TextEncoder",
    "TextConditioned",
    "TextEncoderName",
    "TextEncoding",
    "TinyEncoder",
    "build_text_encoder",
    "encode_all",
    "encoder_from_config",
    "is_null_prompt",
    "tokenize_words",
    "vocabulary_of",
]
