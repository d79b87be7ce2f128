"""Prompt adherence (evaluation/prompts.py) against stand-in models whose answers are known.

The stand-ins draw every prompt from real Fashion-MNIST test images on the 28x56 canvas
(garments the shipped classifier reads correctly): a faithful one (what the prompt names), one
blind to word order and attributes (scenes always put the lower class on the left; always the
darkest, left-pointing image), and one that is faithful only for some seeds, which shows the
word-swap and attribute pairs come from the same initial noise. Expected figures are derived
in the tests from the prompts and the policies, not from the code under test.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from ddpmkit.data.captions import SHOES, describe_garment
from ddpmkit.data.idx import load_mnist_like
from ddpmkit.errors import ConfigError, DatasetError
from ddpmkit.evaluation.classifier import extract
from ddpmkit.evaluation.options import EvalOptions
from ddpmkit.evaluation.prompts import (
    DEFAULT_PER_PROMPT,
    PromptCase,
    evaluate_prompts,
    pair_scores,
    per_prompt,
    prompt_groups,
)


@pytest.fixture(scope="module")
def bank() -> dict[str, Any]:
    """Per class: test images the classifier reads correctly, the darkest and lightest of them
    (mean of pixels > 25, computed here), and for shoes the one pointing left most clearly."""
    try:
        data = load_mnist_like("fashion_mnist", split="test")
    except DatasetError as e:
        pytest.skip(str(e))
    assert data.labels is not None
    images, labels = data.images[:3000], data.labels[:3000]
    probs = extract(images, "fashion_mnist").probs
    assert probs is not None
    right = probs.argmax(1) == labels
    out: dict[str, Any] = {"plain": {}, "dark": {}, "light": {}, "left": {}}
    for c in range(10):
        imgs = images[(labels == c) & right][:, 0].numpy()
        out["plain"][c] = imgs[:5]
        x = imgs.astype(np.float64)
        fg = x > 25
        mean = (x * fg).sum((1, 2)) / fg.sum((1, 2))
        out["dark"][c], out["light"][c] = imgs[mean.argmin()], imgs[mean.argmax()]
        if c in SHOES:  # heel on the right: the top rows' centroid right of the whole shoe's
            cols = np.arange(28.0)
            top = (x[:, :12].sum(1) * cols).sum(1) / np.maximum(x[:, :12].sum((1, 2)), 1e-9)
            whole = (x.sum(1) * cols).sum(1) / x.sum((1, 2))
            out["left"][c] = imgs[(top - whole).argmax()]
    return out


class Stand:
    """A text model's ``sample``/``resolve_settings``/``sample_shape``, drawing from ``bank``."""

    def __init__(self, bank: dict[str, Any], good: Any = lambda seed: True) -> None:
        self.bank, self.good = bank, good
        self.cases = {c.prompt: c for rows in prompt_groups(True).values() for c in rows}
        self.sample_shape = (1, 28, 56)
        self.calls: list[tuple[int, int]] = []

    def garment(self, case: PromptCase, seed: int, faithful: bool) -> np.ndarray:
        c = case.left
        if case.direction:  # unfaithful: always the left-pointing image
            img = self.bank["left"][c]
            return np.ascontiguousarray(img[:, ::-1]) if faithful and case.direction > 0 else img
        if case.brightness:  # unfaithful: always the darkest image
            return self.bank["dark" if case.brightness < 0 or not faithful else "light"][c]
        return self.bank["plain"][c][seed % 5]

    def draw(self, case: PromptCase, seed: int) -> np.ndarray:
        canvas = np.zeros((28, 56), dtype=np.uint8)
        faithful = bool(self.good(seed))
        if case.right < 0:
            canvas[:, 14:42] = self.garment(case, seed, faithful)
            return canvas
        a, b = (case.left, case.right) if faithful else sorted((case.left, case.right))
        canvas[:, :28] = self.bank["plain"][a][seed % 5]
        canvas[:, 28:] = self.bank["plain"][b][seed % 5]
        return canvas

    def sample(self, num: int, *, prompts: list[str], seed: int = 0, **_: Any) -> np.ndarray:
        assert len(prompts) == num
        self.calls.append((num, seed))
        return np.stack([self.draw(self.cases[p], seed + i) for i, p in enumerate(prompts)])[
            ..., None
        ]

    def resolve_settings(self, **_: Any) -> Any:
        return SimpleNamespace(describe=lambda: "stand-in")


def run(model: Stand, tmp_path: Path, **opts: Any) -> dict[str, Any]:
    report: dict[str, Any] = {}
    files = evaluate_prompts(
        model, "fashion_scenes", EvalOptions(out=tmp_path, **opts), report, lambda s: None
    )
    assert files == [tmp_path / "eval.json"] and files[0].is_file()
    return report


def test_the_groups_name_what_their_prompts_say() -> None:
    g = prompt_groups(True)
    cases = {c.prompt: c for rows in g.values() for c in rows}
    assert cases["an image of a dark sneaker"] == PromptCase(
        "an image of a dark sneaker", 7, -1, -1
    )
    boot = "a black and white photo of an ankle boot pointing right"
    assert describe_garment(9, direction=1, template="a black and white photo of {x}") == boot
    assert cases[boot] == PromptCase(boot, 9, -1, 0, 1)
    assert cases["a sandal to the left of a bag"] == PromptCase(
        "a sandal to the left of a bag", 5, 8
    )
    swap = g["word_swap"]
    assert len(swap) == 10 and all(
        (p.left, p.right) == (q.right, q.left) for p, q in zip(swap[0::2], swap[1::2])
    )
    assert ("a bag to the left of a sandal", "a sandal to the left of a bag") in {
        (p.prompt, q.prompt) for p, q in zip(swap[0::2], swap[1::2])
    } | {(q.prompt, p.prompt) for p, q in zip(swap[0::2], swap[1::2])}
    bright = g["attribute_brightness"]
    assert len(bright) == 40 and all(
        (p.left, p.brightness, q.left, q.brightness) == (p.left, -1, p.left, 1)
        for p, q in zip(bright[0::2], bright[1::2])
    )
    direction = g["attribute_direction"]
    assert {p.left for p in direction} == set(SHOES) and len(direction) == 12
    assert set(prompt_groups(False)) == {
        "single_held_out_phrasings", "attribute_brightness", "attribute_direction",
    }  # fmt: skip


def test_samples_per_prompt() -> None:
    assert per_prompt(EvalOptions(), 212) == DEFAULT_PER_PROMPT > 1
    assert per_prompt(EvalOptions(per_prompt=7), 212) == 7
    assert per_prompt(EvalOptions(num=1000), 212) == 4 and per_prompt(EvalOptions(num=8), 212) == 1
    with pytest.raises(ConfigError, match="--num/--per-prompt"):
        per_prompt(EvalOptions(num=100, per_prompt=2), 212)
    with pytest.raises(ConfigError, match="--per-prompt: must be >= 1, got 0"):
        EvalOptions(per_prompt=0).check()


def test_pair_scores_by_hand() -> None:
    t = torch.tensor
    first = {"left": t([5, 5, 5, 3]), "right": t([8, 8, 8, 3]), "ok": t([True, True, False, True])}
    second = {
        "left": t([8, 5, 1, 3]),
        "right": t([5, 8, 5, 3]),
        "ok": t([True, False, False, True]),
    }
    got = pair_scores(first, second)
    assert got["halves_swap"].tolist() == [True, False, False, False]  # same classes: no swap
    assert got["both"].tolist() == [True, False, False, True]
    got = pair_scores({"ok": t([True]), "brightness": t([90.0])}, {"ok": t([True]),
                      "brightness": t([200.0])})  # fmt: skip
    assert got["darker"].tolist() == [True] and "halves_swap" not in got


def test_a_faithful_model_scores_one_everywhere(bank: dict[str, Any], tmp_path: Path) -> None:
    model = Stand(bank)
    rep = run(model, tmp_path, per_prompt=2)
    sec = rep["prompt_adherence"]
    assert sec["samples_per_prompt"] == 2
    assert sec["single_held_out_phrasings"] == {"prompts": 60, "samples": 120, "accuracy": 1.0}
    assert sec["scene_held_out_pairs"]["both_correct"] == 1.0
    assert sec["scene_held_out_phrasings"]["both_correct"] == 1.0
    assert sec["scene_held_out_pairs"]["both_present"] == 1.0
    assert sec["word_swap"] == {
        "pairs": 5, "samples": 20, "same_noise": True, "halves_swap": 1.0, "both_correct": 1.0,
    }  # fmt: skip
    assert sec["attribute_brightness"] == {
        "pairs": 20, "samples": 80, "same_noise": True, "named": 1.0, "class_accuracy": 1.0,
        "pair_order": 1.0,
    }  # fmt: skip
    assert sec["attribute_direction"]["named"] == 1.0
    assert sec["attribute_direction"]["both_named"] == 1.0
    assert rep["samples"]["num"] == 212 * 2 and "2 per prompt" in rep["depends_on"]
    assert rep["metrics"]["word_swap_halves_swap"] == 1.0
    assert all("samples" in v for v in rep["metric_info"].values())


def test_a_model_blind_to_word_order_and_attributes(bank: dict[str, Any], tmp_path: Path) -> None:
    model = Stand(bank, good=lambda seed: False)
    sec = run(model, tmp_path, per_prompt=1)["prompt_adherence"]
    groups = prompt_groups(True)
    # scenes: right only where the lower class is named on the left (same class: always)
    for name in ("scene_held_out_pairs", "scene_held_out_phrasings"):
        want = np.mean([c.left <= c.right for c in groups[name]])
        assert sec[name]["both_correct"] == pytest.approx(want)
        assert sec[name]["both_present"] == 1.0  # the right garments, sides ignored
    assert sec["scene_held_out_pairs"]["both_correct"] == pytest.approx(0.5)
    assert sec["word_swap"]["halves_swap"] == 0.0 and sec["word_swap"]["both_correct"] == 0.0
    # always the darkest image: every "dark" prompt right, every "light" one wrong, no pair darker
    b = sec["attribute_brightness"]
    assert (b["named"], b["pair_order"], b["class_accuracy"]) == (0.5, 0.0, 1.0)
    d = sec["attribute_direction"]
    assert (d["named"], d["both_named"]) == (0.5, 0.0)
    assert sec["single_held_out_phrasings"]["accuracy"] == 1.0


def test_pairs_share_their_initial_noise(bank: dict[str, Any], tmp_path: Path) -> None:
    """Faithful only for some seeds: each pair's figure is the share of good seeds, which is
    what it is only if both orders of pair k, sample j, use seed + k * per + j."""

    def good(seed: int) -> bool:
        return seed % 3 == 0

    seed, per = 5, 3
    model = Stand(bank, good=good)
    sec = run(model, tmp_path, per_prompt=per, seed=seed)["prompt_adherence"]
    want = np.mean([good(seed + k * per + j) for k in range(5) for j in range(per)])
    assert sec["word_swap"]["halves_swap"] == pytest.approx(want)
    assert sec["word_swap"]["both_correct"] == pytest.approx(want)
    assert all(s == seed for _, s in model.calls)
    # word_swap's pairs come first among the paired groups, then brightness, then direction
    k0 = 5
    want_b = np.mean([good(seed + (k0 + k) * per + j) for k in range(20) for j in range(per)])
    assert sec["attribute_brightness"]["pair_order"] == pytest.approx(want_b)
