"""A tiny deterministic text encoder: word tokens, sinusoidal positions, a small transformer.

For tests and as the fallback when the pretrained encoder's package is not installed. Nothing is
downloaded or trained: the weights are drawn from a ``torch.Generator`` seeded with ``seed``
(no global RNG), so ``TinyEncoder(vocabulary, seed=s)`` is the same function on every machine,
and ``config()`` (vocabulary, sizes, seed) rebuilds it. It is frozen like any encoder here;
what the diffusion network learns on top (a projection, the cross-attention keys and values)
is where the meaning of the words is learned.

Tokenizer: lower-case, words are runs of letters and digits (``t-shirt`` -> ``t``, ``shirt``);
id 0 is padding (never emitted), 1 is ``[unk]`` for a word outside the vocabulary.
Encoder: embedding (std 1) + sinusoidal position (Vaswani et al. 2017, Sec. 3.5), then
``num_layers`` pre-norm transformer layers (padding masked), then a final LayerNorm. Word order
therefore reaches the tokens ("a bag left of a sandal" and "a sandal left of a bag" differ).
``pooled`` is the mean of the real tokens.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ddpmkit.text.encoding import TextEncoding, is_null_prompt, report_truncation

__all__ = ["TinyEncoder", "tokenize_words", "vocabulary_of"]

_WORD = re.compile(r"[a-z0-9]+")
PAD, UNK = 0, 1


def tokenize_words(prompt: str) -> list[str]:
    """'A T-shirt, dark.' -> ['a', 't', 'shirt', 'dark']."""
    return _WORD.findall(prompt.lower())


def vocabulary_of(captions: Iterable[str]) -> list[str]:
    """The sorted distinct words of ``captions`` (a vocabulary for :class:`TinyEncoder`)."""
    return sorted({w for c in captions for w in tokenize_words(c)})


def _positions(length: int, dim: int) -> Tensor:
    """(length, dim) sinusoidal position encoding, [sin | cos] interleaved as in Vaswani et al."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return pe


class TinyEncoder:
    """Word-level encoder over a fixed vocabulary; see the module docstring.

    Args:
        vocabulary: the known words (duplicates and order do not matter: they are sorted).
        dim: D, the token width; a multiple of ``num_heads``.
        num_layers: transformer layers (0 = embeddings + positions only).
        num_heads: attention heads per layer.
        max_length: most words kept per prompt (longer ones are truncated, with a warning).
        seed: seed of the weights.
        log: where the truncation warning goes.
    """

    name = "tiny"

    def __init__(
        self,
        vocabulary: Sequence[str],
        *,
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        max_length: int = 32,
        seed: int = 0,
        log: Callable[[str], None] = print,
    ):
        if dim < 2 or dim % num_heads or dim % 2:
            raise ValueError(f"dim must be even and divisible by num_heads, got {dim}/{num_heads}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.vocabulary = sorted(set(vocabulary))
        self.dim, self.num_layers, self.num_heads = dim, num_layers, num_heads
        self.max_length, self.seed, self.log = max_length, seed, log
        self._ids = {w: i + 2 for i, w in enumerate(self.vocabulary)}
        # torch's default initialisation draws from the global RNG: keep its state untouched
        # (every weight is then redrawn from the seeded generator).
        with torch.random.fork_rng(devices=[]):
            self.embed = nn.Embedding(len(self.vocabulary) + 2, dim, padding_idx=PAD)
            layer = nn.TransformerEncoderLayer(
                dim, num_heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True
            )
            self.layers = (
                nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
                if num_layers
                else None
            )
            self.norm = nn.LayerNorm(dim)
        self._init_weights(seed)
        self._pos = _positions(max_length, dim)

    def _init_weights(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        modules: list[nn.Module] = [self.embed, self.norm]
        if self.layers is not None:
            modules.append(self.layers)
        with torch.no_grad():
            for m in modules:
                for name, p in m.named_parameters():
                    if name.endswith("bias"):
                        p.zero_()
                    elif p.ndim == 1:  # LayerNorm weights
                        p.fill_(1.0)
                    else:  # embedding std 1; linear layers std 1/sqrt(fan_in)
                        std = 1.0 if m is self.embed else p.shape[1] ** -0.5
                        p.copy_(torch.randn(p.shape, generator=g) * std)
                m.requires_grad_(False)
                m.eval()
            self.embed.weight[PAD] = 0.0

    def config(self) -> dict[str, object]:
        return {
            "name": self.name,
            "vocabulary": list(self.vocabulary),
            "dim": self.dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "max_length": self.max_length,
            "seed": self.seed,
        }

    def token_ids(self, prompts: Sequence[str]) -> tuple[Tensor, list[tuple[str, int]]]:
        """(B, L) long ids (0 = padding) and the truncated prompts with their word counts."""
        rows, truncated = [], []
        for p in prompts:
            words = [] if is_null_prompt(p) else tokenize_words(p)
            if len(words) > self.max_length:
                truncated.append((p, len(words)))
                words = words[: self.max_length]
            rows.append([self._ids.get(w, UNK) for w in words])
        length = max([1, *(len(r) for r in rows)])
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return ids, truncated

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        """prompts (B) -> TextEncoding (tokens (B, L, dim), mask (B, L), pooled (B, dim))."""
        if not prompts:
            raise ValueError("encode: no prompts given")
        ids, truncated = self.token_ids(prompts)
        report_truncation(self.log, self.max_length, truncated)
        mask = ids != PAD  # (B, L)
        h = self.embed(ids) + self._pos[: ids.shape[1]]  # (B, L, D)
        if self.layers is not None:
            # Rows without any real token (the null prompt) would give a fully masked softmax;
            # they are zeroed below whatever the layers compute, so let them see every column.
            key_pad = ~mask & mask.any(dim=1, keepdim=True)
            h = self.layers(h, src_key_padding_mask=key_pad)
        h = self.norm(h) * mask[..., None]  # padding (and the null prompt) -> exact zeros
        count = mask.sum(dim=1, keepdim=True).clamp(min=1)
        pooled = h.sum(dim=1) / count
        return TextEncoding(h.contiguous(), mask, pooled)
