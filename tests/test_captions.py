"""Captioned Fashion-MNIST and two-garment scenes: phrases, attributes measured from pixels,
both orders of a relation, held-out pairs and phrasings disjoint from training, determinism,
what the datasets hold (on the real test split)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ddpmkit.data.captions import (
    BRIGHTNESS_THRESHOLDS,
    HELD_OUT_PAIRS,
    HELD_OUT_SCENE_TEMPLATES,
    HELD_OUT_SINGLE_TEMPLATES,
    SCENE_TEMPLATES,
    SHOES,
    SINGLE_TEMPLATES,
    SYNONYMS,
    CaptionedImages,
    captioned_fashion,
    class_pairs,
    describe_garment,
    describe_scene,
    direction_attribute,
    fashion_scenes,
    foreground_brightness,
    halves,
    noun_phrase,
    scene_prompts,
    single_prompts,
)
from ddpmkit.data.idx import load_mnist_like
from ddpmkit.errors import DatasetError
from ddpmkit.text import encode_all, vocabulary_of
from ddpmkit.text.tiny import TinyEncoder


@pytest.fixture(scope="module")
def fashion_test():  # type: ignore[no-untyped-def]
    try:
        return load_mnist_like("fashion_mnist", split="test")
    except DatasetError as e:
        pytest.skip(str(e))


def all_scene_captions(templates: tuple[str, ...], left: int, right: int) -> set[str]:
    syn = list(itertools.product(range(len(SYNONYMS[left])), range(len(SYNONYMS[right]))))
    return {describe_scene(left, right, t, a, b) for t in templates for a, b in syn}


def test_phrases() -> None:
    assert noun_phrase("sneaker") == "a sneaker"
    assert noun_phrase("ankle boot", "dark") == "a dark ankle boot"
    assert noun_phrase("ankle boot") == "an ankle boot"
    assert noun_phrase("pair of trousers", "light") == "a pair of light trousers"
    assert describe_garment(7, 1, template="a photo of {x}") == "a photo of a running shoe"
    assert describe_garment(7, 0, -1, -1) == "a dark sneaker pointing left"
    assert describe_garment(9, 0, 1, 1) == "a light ankle boot pointing right"


def test_scene_captions_name_both_orders() -> None:
    assert describe_scene(5, 8, SCENE_TEMPLATES[0]) == "a sandal to the left of a bag"
    assert describe_scene(5, 8, SCENE_TEMPLATES[3]) == "a bag with a sandal on its left"
    left_first = right_first = 0
    for t in SCENE_TEMPLATES + HELD_OUT_SCENE_TEMPLATES:
        s = describe_scene(5, 8, t)
        if s.index("sandal") < s.index("bag"):
            left_first += 1
        else:
            right_first += 1
        # swapping the classes swaps the scene: a different caption
        assert describe_scene(8, 5, t) != s
    assert left_first >= 3 and right_first >= 3


def test_held_out_sets_are_disjoint_from_training() -> None:
    train, held = class_pairs("train"), class_pairs("held_out")
    assert len(train) == 90 and len(held) == 10 and not set(train) & set(held)
    assert set(train) | set(held) == set(itertools.product(range(10), range(10)))
    assert all((b, a) in held for a, b in held)  # both orders held out
    assert sorted(c for p in HELD_OUT_PAIRS for c in p) == list(range(10))
    assert not set(SCENE_TEMPLATES) & set(HELD_OUT_SCENE_TEMPLATES)
    assert not set(SINGLE_TEMPLATES) & set(HELD_OUT_SINGLE_TEMPLATES)
    # no held-out phrasing ever produces a caption a training phrasing produces
    for a, b in itertools.product(range(10), range(10)):
        assert not all_scene_captions(SCENE_TEMPLATES, a, b) & all_scene_captions(
            HELD_OUT_SCENE_TEMPLATES, a, b
        )
    singles = {
        describe_garment(c, s, br, d, t)
        for c in range(10) for s in range(3) for br in (-1, 0, 1) for d in (-1, 0, 1)
        for t in SINGLE_TEMPLATES
    }  # fmt: skip
    assert not {p for p, _ in single_prompts("held_out")} & singles
    prompts = scene_prompts("held_out", "held_out")
    assert len(prompts) == 10 * len(HELD_OUT_SCENE_TEMPLATES)
    assert ("a sandal left of a bag", 5, 8) in prompts and (
        "a bag left of a sandal",
        8,
        5,
    ) in prompts


def test_training_scenes_hold_what_their_captions_say(fashion_test) -> None:  # type: ignore[no-untyped-def]
    data = fashion_scenes(data=fashion_test, num=600, seed=1)
    assert data.images.shape == (600, 1, 28, 56) and data.images.dtype == torch.uint8
    assert data.garments is not None
    # every half is an image of the class the metadata names, from the source split
    labels = fashion_test.labels.numpy()
    by_bytes = {
        fashion_test.images[i].numpy().tobytes(): int(labels[i]) for i in range(len(labels))
    }
    left, right = halves(data.images)
    for i in range(len(data)):
        a, b = data.garments[i].tolist()
        assert by_bytes[left[i].numpy().tobytes()] == a
        assert by_bytes[right[i].numpy().tobytes()] == b
        assert frozenset((a, b)) not in HELD_OUT_PAIRS
        assert data.captions[i] in all_scene_captions(SCENE_TEMPLATES, a, b)
    # both orders of mention occur, and many pairs
    assert len({tuple(g) for g in data.garments.tolist()}) > 60
    held = fashion_scenes(
        data=fashion_test, num=200, seed=1, pairs="held_out", templates="held_out"
    )
    assert held.garments is not None
    for cap, (a, b) in zip(held.captions, held.garments.tolist()):
        assert frozenset((a, b)) in HELD_OUT_PAIRS
        assert cap in all_scene_captions(HELD_OUT_SCENE_TEMPLATES, a, b)


def test_datasets_are_deterministic_given_the_seed(fashion_test) -> None:  # type: ignore[no-untyped-def]
    small = load_mnist_like("fashion_mnist", split="test")
    small.images, small.labels = small.images[:500], small.labels[:500]  # type: ignore[index]
    a = captioned_fashion(data=small, seed=3)
    b = captioned_fashion(data=small, seed=3)
    c = captioned_fashion(data=small, seed=4)
    assert a.captions == b.captions and torch.equal(a.images, b.images)
    assert a.captions != c.captions
    s1, s2 = fashion_scenes(data=small, num=50, seed=3), fashion_scenes(data=small, num=50, seed=3)
    assert s1.captions == s2.captions and torch.equal(s1.images, s2.images)


def test_captions_say_the_measured_attributes(fashion_test) -> None:  # type: ignore[no-untyped-def]
    data = captioned_fashion(data=fashion_test, seed=0)
    at = {k: v.numpy() for k, v in data.attributes.items()}
    assert data.garments is not None
    cls = data.garments[:, 0].numpy()
    assert (data.garments[:, 1] == -1).all()
    for i, cap in enumerate(data.captions):
        assert (" dark " in f" {cap} ") == bool(
            at["says_brightness"][i] and at["brightness"][i] < 0
        )
        assert (" light " in f" {cap} ") == bool(
            at["says_brightness"][i] and at["brightness"][i] > 0
        )
        assert ("pointing left" in cap) == bool(at["says_direction"][i] and at["direction"][i] < 0)
        assert ("pointing right" in cap) == bool(at["says_direction"][i] and at["direction"][i] > 0)
        assert any(s.split()[-1] in cap for s in SYNONYMS[cls[i]])
    # the attributes are those measured from the stored pixels
    b = foreground_brightness(data.images)
    lo = np.array([BRIGHTNESS_THRESHOLDS[c][0] for c in cls])
    assert ((at["brightness"] < 0) == (b < lo)).all()
    assert (at["direction"][~np.isin(cls, SHOES)] == 0).all()
    shoes = np.isin(cls, SHOES)
    left, right = (at["direction"][shoes] < 0).mean(), (at["direction"][shoes] > 0).mean()
    assert 0.35 < left < 0.65 and 0.35 < right < 0.65  # mirror_shoes = 0.5 balances them
    # a shoe and its mirror image point opposite ways
    idx = np.nonzero(shoes & (at["direction"] != 0))[0][:200]
    flipped = direction_attribute(data.images[idx].flip(-1), cls[idx].tolist())
    assert (flipped == -at["direction"][idx]).mean() > 0.95
    assert 0.35 < at["says_brightness"][at["brightness"] != 0].mean() < 0.65
    assert len(data.caption_set) > 300
    assert not {c for c in data.caption_set for t in HELD_OUT_SINGLE_TEMPLATES if
                c.startswith(t.split("{")[0]) and t.split("{")[0]}  # fmt: skip


def test_brightness_thresholds_are_the_train_split_percentiles() -> None:
    try:
        train = load_mnist_like("fashion_mnist", split="train")
    except DatasetError as e:
        pytest.skip(str(e))
    b = foreground_brightness(train.images)
    labels = train.labels.numpy()  # type: ignore[union-attr]
    for c in range(10):
        q = np.percentile(b[labels == c], [30, 70])
        np.testing.assert_allclose(q, BRIGHTNESS_THRESHOLDS[c], atol=0.06)


def test_one_canvas_for_singles_and_scenes_and_the_caption_table(fashion_test) -> None:  # type: ignore[no-untyped-def]
    small = load_mnist_like("fashion_mnist", split="test")
    small.images, small.labels = small.images[:300], small.labels[:300]  # type: ignore[index]
    singles = captioned_fashion(data=small, canvas_width=56)
    assert singles.images.shape == (300, 1, 28, 56)
    assert (singles.images[..., :14] == 0).all() and (singles.images[..., 42:] == 0).all()
    scenes = fashion_scenes(data=small, num=100)
    both = CaptionedImages.concat([singles, scenes])
    assert len(both) == 400 and both.captions == singles.captions + scenes.captions
    assert both.attributes["brightness"][300:].abs().sum() == 0
    assert both.garments is not None and (both.garments[:300, 1] == -1).all()
    sub = both.subset([0, 350])
    assert sub.captions == [both.captions[0], both.captions[350]]
    # the trainer's cache: encode_all's rows are the caption ids
    enc = TinyEncoder(vocabulary_of(both.caption_set), dim=16, num_layers=1)
    table = encode_all(enc, both.caption_set)
    assert table.captions == both.caption_set
    rows = table.take(both.caption_ids[:5])
    torch.testing.assert_close(rows.pooled, enc.encode(both.captions[:5]).pooled)
    with pytest.raises(DatasetError, match="different shapes"):
        CaptionedImages.concat([captioned_fashion(data=small), scenes])
