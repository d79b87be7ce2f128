"""Caption text of captioned Fashion-MNIST: the vocabulary, the templates and the phrases.

Classes (``CLASS_NAMES``) and three nouns per class (``SYNONYMS``; "pair of ..." nouns take
their adjective after "pair of"); ``SHOES`` (sandal, sneaker, ankle boot) are the classes with
a direction. Templates: ``SINGLE_TEMPLATES`` ({x} = the garment's noun phrase with its
attributes) and ``SCENE_TEMPLATES`` ({left} / {right} = the noun phrases of the garments on
each half, both orders of mention). Held out from training, to measure generalisation: the
unordered class pairs ``HELD_OUT_PAIRS`` (each class once; neither order is in training) and
the phrasings ``HELD_OUT_SINGLE_TEMPLATES`` / ``HELD_OUT_SCENE_TEMPLATES``.

Phrases: :func:`noun_phrase` ("a dark sneaker", "an ankle boot", "a pair of light trousers"),
:func:`describe_garment` (a class's synonym, brightness -1 "dark" / 1 "light", direction -1
"pointing left" / 1 "pointing right", 0 = unsaid, inside a template) and
:func:`describe_scene`; :func:`class_pairs` (the 90 ordered training pairs or the 10 held-out
ones), :func:`single_prompts` and :func:`scene_prompts` give the evaluation's prompts with what
each should show.

Text only: the attributes are measured from pixels in :mod:`ddpmkit.data.garment_attributes`,
the datasets are built in :mod:`ddpmkit.data.captions` (which re-exports these names).
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "CLASS_NAMES",
    "HELD_OUT_PAIRS",
    "HELD_OUT_SCENE_TEMPLATES",
    "HELD_OUT_SINGLE_TEMPLATES",
    "SCENE_TEMPLATES",
    "SHOES",
    "SINGLE_TEMPLATES",
    "SYNONYMS",
    "class_pairs",
    "describe_garment",
    "describe_scene",
    "noun_phrase",
    "scene_prompts",
    "single_prompts",
]

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# Nouns per class; "pair of ..." nouns take their adjective after "pair of".
SYNONYMS: list[list[str]] = [
    ["t-shirt", "tee", "top"],
    ["pair of trousers", "pair of pants", "pair of slacks"],
    ["pullover", "sweater", "jumper"],
    ["dress", "frock", "gown"],
    ["coat", "jacket", "overcoat"],
    ["sandal", "summer sandal", "open shoe"],
    ["shirt", "blouse", "button-up shirt"],
    ["sneaker", "running shoe", "trainer"],
    ["bag", "handbag", "purse"],
    ["ankle boot", "boot", "short boot"],
]
SHOES = (5, 7, 9)  # sandal, sneaker, ankle boot: the classes with a direction

# {x} = the garment's noun phrase with its attributes
SINGLE_TEMPLATES = (
    "{x}",
    "a photo of {x}",
    "a picture of {x}",
    "{x} on a black background",
    "a product photo of {x}",
)
HELD_OUT_SINGLE_TEMPLATES = ("an image of {x}", "a black and white photo of {x}")
# {left} / {right} = the noun phrases of the garments on each half; both orders of mention
SCENE_TEMPLATES = (
    "{left} to the left of {right}",
    "{right} to the right of {left}",
    "{left} with {right} on its right",
    "{right} with {left} on its left",
    "{left} on the left and {right} on the right",
    "{right} on the right and {left} on the left",
)
HELD_OUT_SCENE_TEMPLATES = (
    "{left} left of {right}",
    "{right} right of {left}",
    "{right} with {left} to its left",
)
# Unordered class pairs never shown together in training (each class once).
HELD_OUT_PAIRS: frozenset[frozenset[int]] = frozenset(
    frozenset(p) for p in ((5, 8), (1, 7), (0, 9), (3, 6), (2, 4))
)


# ---------------------------------------------------------------- phrases


def noun_phrase(noun: str, adjective: str | None = None) -> str:
    """('sneaker', 'dark') -> 'a dark sneaker'; ('ankle boot',) -> 'an ankle boot';
    ('pair of trousers', 'light') -> 'a pair of light trousers'."""
    if noun.startswith("pair of "):
        rest = noun[len("pair of ") :]
        return f"a pair of {adjective + ' ' if adjective else ''}{rest}"
    words = f"{adjective} {noun}" if adjective else noun
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def describe_garment(
    cls: int, synonym: int = 0, brightness: int = 0, direction: int = 0, template: str = "{x}"
) -> str:
    """A single garment's caption: class ``cls``'s synonym, the attributes to say (0 = unsaid;
    brightness -1 dark / 1 light, direction -1 left / 1 right), inside ``template``."""
    adj = {-1: "dark", 1: "light"}.get(brightness)
    x = noun_phrase(SYNONYMS[cls][synonym], adj)
    if direction:
        x += " pointing left" if direction < 0 else " pointing right"
    return template.format(x=x)


def describe_scene(
    left: int, right: int, template: str, left_synonym: int = 0, right_synonym: int = 0
) -> str:
    """A scene's caption: class ``left`` on the left half, ``right`` on the right half."""
    return template.format(
        left=noun_phrase(SYNONYMS[left][left_synonym]),
        right=noun_phrase(SYNONYMS[right][right_synonym]),
    )


def class_pairs(which: Literal["train", "held_out"] = "train") -> list[tuple[int, int]]:
    """Ordered (left, right) class pairs, same class included: those of training (90) or the
    held-out ones (10: both orders of each of ``HELD_OUT_PAIRS``)."""
    if which not in ("train", "held_out"):
        raise ValueError(f"which must be 'train' or 'held_out', got {which!r}")
    pairs = [(a, b) for a in range(10) for b in range(10)]
    held = [p for p in pairs if frozenset(p) in HELD_OUT_PAIRS]
    return held if which == "held_out" else [p for p in pairs if p not in held]


def _templates(which: str, train: tuple[str, ...], held: tuple[str, ...]) -> tuple[str, ...]:
    if which == "train":
        return train
    if which == "held_out":
        return held
    raise ValueError(f"templates must be 'train' or 'held_out', got {which!r}")


def single_prompts(
    templates: Literal["train", "held_out"] = "held_out",
) -> list[tuple[str, int]]:
    """(prompt, class) for every class, synonym and template of the set (no attributes)."""
    return [
        (describe_garment(c, s, template=t), c)
        for t in _templates(templates, SINGLE_TEMPLATES, HELD_OUT_SINGLE_TEMPLATES)
        for c in range(10)
        for s in range(len(SYNONYMS[c]))
    ]


def scene_prompts(
    pairs: Literal["train", "held_out"] = "held_out",
    templates: Literal["train", "held_out"] = "held_out",
) -> list[tuple[str, int, int]]:
    """(prompt, left class, right class) for every ordered pair and template of the sets, with
    each class's first synonym."""
    return [
        (describe_scene(a, b, t), a, b)
        for t in _templates(templates, SCENE_TEMPLATES, HELD_OUT_SCENE_TEMPLATES)
        for a, b in class_pairs(pairs)
    ]
