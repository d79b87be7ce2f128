"""What every text encoder returns, and the caches that make a frozen encoder cheap in training.

:class:`TextEncoding` is a named tuple ``(tokens, mask, pooled)``:

* ``tokens`` float (B, L, D): one vector per token; rows past a prompt's length are padding;
* ``mask`` bool (B, L): True where a token is real, False for padding;
* ``pooled`` float (B, D): one vector per prompt (the encoder's sentence embedding).

Being a tuple it is exactly what the U-Net's ``text=`` argument takes (``ddpmkit.nn`` never
imports this package). Padding never matters: the U-Net's cross-attention masks it out (tested:
appending padding tokens with random values leaves the output unchanged), so encodings of
different lengths can be padded to a common one (:meth:`TextEncoding.pad_to`) or trimmed
(:meth:`TextEncoding.trim`) freely.

**The null condition** is the empty prompt. Every encoder maps ``""`` (and any prompt that is
only whitespace) to zero tokens with the mask all False and a zero pooled vector; the network
recognises a row without any real token and substitutes its own *learned* null condition (the
U-Net's ``text_null_*`` parameters), as the null class does for labels. Prompt dropout for
classifier-free guidance is therefore :meth:`TextEncoding.drop` (or encoding ``""``), and the
unconditional branch of guidance is :meth:`TextEncoding.null_like` (or ``text=None``).

Caching: training sees a finite caption set, so :func:`encode_all` encodes each distinct caption
once into a :class:`CaptionTable` and batches are rows of it (:meth:`CaptionTable.take`);
:class:`CachedEncoder` memoises an encoder prompt by prompt for open-ended use (sampling).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "CachedEncoder",
    "CaptionTable",
    "TextEncoder",
    "TextEncoding",
    "encode_all",
    "is_null_prompt",
    "report_truncation",
]


def is_null_prompt(prompt: str) -> bool:
    """True for the null condition: the empty prompt, or one of whitespace only."""
    return not prompt.strip()


class TextEncoding(NamedTuple):
    """(tokens (B, L, D) float, mask (B, L) bool, pooled (B, D) float); see the module doc."""

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def length(self) -> int:
        """L, the padded number of tokens."""
        return int(self.tokens.shape[1])

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[2])

    def validate(self) -> None:
        """Raise ValueError unless the three tensors have consistent shapes and dtypes."""
        t, m, p = self
        if t.ndim != 3 or not t.is_floating_point():
            raise ValueError(f"tokens must be float (B, L, D), got {t.dtype} {tuple(t.shape)}")
        if m.dtype != torch.bool or tuple(m.shape) != tuple(t.shape[:2]):
            raise ValueError(
                f"mask must be bool {tuple(t.shape[:2])}, got {m.dtype} {tuple(m.shape)}"
            )
        if tuple(p.shape) != (t.shape[0], t.shape[2]):
            raise ValueError(f"pooled must be ({t.shape[0]}, {t.shape[2]}), got {tuple(p.shape)}")

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TextEncoding:
        """Move to ``device``; ``dtype`` casts tokens and pooled (the mask stays bool)."""
        return TextEncoding(
            self.tokens.to(device=device, dtype=dtype),
            self.mask.to(device=device),
            self.pooled.to(device=device, dtype=dtype),
        )

    def take(self, index: Tensor | Sequence[int]) -> TextEncoding:
        """Rows ``index`` (a (B',) long tensor or list) of the batch."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.tokens.device)
        return TextEncoding(self.tokens[idx], self.mask[idx], self.pooled[idx])

    def pad_to(self, length: int) -> TextEncoding:
        """Append zero tokens with mask False up to ``length`` (>= the current length)."""
        extra = length - self.length
        if extra < 0:
            raise ValueError(f"cannot pad {self.length} tokens to {length}; use trim()")
        if extra == 0:
            return self
        b, _, d = self.tokens.shape
        t = torch.cat([self.tokens, self.tokens.new_zeros(b, extra, d)], dim=1)
        m = torch.cat([self.mask, self.mask.new_zeros(b, extra)], dim=1)
        return TextEncoding(t, m, self.pooled)

    def trim(self) -> TextEncoding:
        """Drop trailing token columns that are padding in every row (at least one is kept)."""
        used = self.mask.any(dim=0).nonzero()
        keep = max(1, int(used.max()) + 1) if used.numel() else 1
        if keep == self.length:
            return self
        return TextEncoding(self.tokens[:, :keep], self.mask[:, :keep], self.pooled)

    def drop(self, drop: Tensor) -> TextEncoding:
        """Rows where the bool (B,) ``drop`` is True become the null condition (prompt dropout).

        Their tokens and pooled vector are zeroed and their mask set all False, exactly what
        encoding ``""`` gives; the other rows are unchanged.
        """
        keep = ~drop.to(device=self.tokens.device, dtype=torch.bool)
        return TextEncoding(
            self.tokens * keep[:, None, None].to(self.tokens.dtype),
            self.mask & keep[:, None],
            self.pooled * keep[:, None].to(self.pooled.dtype),
        )

    def null_like(self) -> TextEncoding:
        """The null condition for every row, same shapes (the unconditional branch of CFG)."""
        return TextEncoding(
            torch.zeros_like(self.tokens),
            torch.zeros_like(self.mask),
            torch.zeros_like(self.pooled),
        )

    @property
    def is_null(self) -> Tensor:
        """bool (B,): rows without any real token (the null condition)."""
        return ~self.mask.any(dim=1)

    @staticmethod
    def cat(parts: Sequence[TextEncoding]) -> TextEncoding:
        """Concatenate batches along B, padding each to the longest L first."""
        if not parts:
            raise ValueError("TextEncoding.cat needs at least one encoding")
        length = max(p.length for p in parts)
        padded = [p.pad_to(length) for p in parts]
        return TextEncoding(
            torch.cat([p.tokens for p in padded]),
            torch.cat([p.mask for p in padded]),
            torch.cat([p.pooled for p in padded]),
        )


@runtime_checkable
class TextEncoder(Protocol):
    """A frozen, deterministic map from prompts to a :class:`TextEncoding`.

    ``name``: the registry name (``TEXT_ENCODERS``); ``dim``: D; ``max_length``: the most tokens
    a prompt keeps (longer prompts are truncated and reported through ``log``, one line per
    call). ``encode`` returns float32 on the CPU, L = the longest prompt of the batch (>= 1),
    and the null encoding for empty prompts. ``config()`` is a JSON-able dict from which
    ``build_text_encoder(**config)`` rebuilds the same encoder (for checkpoints).
    """

    name: str
    dim: int
    max_length: int

    def encode(self, prompts: Sequence[str]) -> TextEncoding: ...

    def config(self) -> dict[str, object]: ...


def report_truncation(
    log: Callable[[str], None], max_length: int, truncated: list[tuple[str, int]]
) -> None:
    """The one warning line for the prompts of one ``encode`` call cut to ``max_length``."""
    if not truncated:
        return
    n = len(truncated)
    first, length = truncated[0]
    shown = first if len(first) <= 60 else first[:57] + "..."
    log(
        f"warning: {n} prompt{'s' * (n != 1)} longer than the text encoder's limit of "
        f"{max_length} tokens {'were' if n != 1 else 'was'} truncated "
        f"(first: {shown!r}, {length} tokens)"
    )


@dataclass
class CaptionTable:
    """Every distinct caption of a data set encoded once: ``encoding`` row i is ``captions[i]``.

    ``encoding`` is padded to the longest caption; :meth:`take` gives a batch's rows, trimmed to
    that batch's longest caption.
    """

    captions: list[str]
    encoding: TextEncoding
    index: dict[str, int]

    def __len__(self) -> int:
        return len(self.captions)

    def take(self, ids: Tensor | Sequence[int]) -> TextEncoding:
        """Rows ``ids`` (indices into ``captions``), trimmed of all-padding columns."""
        return self.encoding.take(ids).trim()

    def lookup(self, prompts: Sequence[str]) -> TextEncoding:
        """Rows of the given captions (each must be in the table; KeyError otherwise)."""
        return self.take([self.index[p] for p in prompts])


def encode_all(
    encoder: TextEncoder, captions: Iterable[str], *, batch_size: int = 256
) -> CaptionTable:
    """Encode each distinct caption of ``captions`` once (in sorted order, for determinism).

    The table's caption order is sorted, whatever order ``captions`` came in; map data to it
    with ``table.index[caption]`` (or build the data's caption ids against a sorted list, as
    :mod:`ddpmkit.data.captions` does, so ids and table rows coincide).
    """
    distinct = sorted(set(captions))
    if not distinct:
        raise ValueError("encode_all: no captions given")
    parts = [
        encoder.encode(distinct[i : i + batch_size]) for i in range(0, len(distinct), batch_size)
    ]
    enc = TextEncoding.cat(parts)
    return CaptionTable(distinct, enc, {c: i for i, c in enumerate(distinct)})


class CachedEncoder:
    """An encoder that remembers the encoding of every prompt it has seen.

    Same interface as the wrapped encoder; each distinct prompt is encoded once (a truncation
    warning is given the first time only). Results equal the wrapped encoder's up to padding
    (rows are stored trimmed to their own length and padded to the batch's longest).
    """

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder
        self.name, self.dim, self.max_length = encoder.name, encoder.dim, encoder.max_length
        self._rows: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

    def config(self) -> dict[str, object]:
        return self.encoder.config()

    def __len__(self) -> int:
        return len(self._rows)

    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        new = sorted({p for p in prompts if p not in self._rows})
        if new:
            enc = self.encoder.encode(new)
            for i, p in enumerate(new):
                n = max(1, int(enc.mask[i].sum()))
                self._rows[p] = (enc.tokens[i, :n], enc.mask[i, :n], enc.pooled[i])
        if not prompts:
            raise ValueError("encode: no prompts given")
        length = max(self._rows[p][0].shape[0] for p in prompts)
        tokens = torch.zeros(len(prompts), length, self.dim)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        pooled = torch.zeros(len(prompts), self.dim)
        for i, p in enumerate(prompts):
            t, m, v = self._rows[p]
            tokens[i, : t.shape[0]], mask[i, : m.shape[0]], pooled[i] = t, m, v
        return TextEncoding(tokens, mask, pooled)
