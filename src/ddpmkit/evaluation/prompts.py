"""Prompt adherence of a text model trained on captioned Fashion-MNIST, on held-out prompts.

The shipped Fashion-MNIST classifier (:mod:`ddpmkit.evaluation.classifier`) reads each 28x28
garment: the centre of a single-garment sample (28x28, or 28x56 with the garment centred) and
each half of a two-garment scene (:func:`ddpmkit.data.garment_attributes.halves`). The
attributes are measured on the same crops by the functions that made the captions
(:func:`~ddpmkit.data.garment_attributes.brightness_attribute`,
:func:`~ddpmkit.data.garment_attributes.direction_attribute`). Groups, all never seen in
training:

* ``single_held_out_phrasings``: every class and synonym in the held-out single templates
  (:func:`~ddpmkit.data.caption_text.single_prompts`); accuracy = the named class is the argmax;
* ``scene_held_out_pairs``: the held-out class pairs (both orders) in the training templates;
* ``scene_held_out_phrasings``: training pairs in the held-out scene templates (a seeded
  subset of 30 prompts); share correct = both garments found, each on its named half;
* ``word_swap``: for each held-out pair, "A to the left of B" and "B to the left of A" drawn
  from the same initial noise (sample j of pair k of both orders uses seed + k * per + j).
  ``halves_swap``: the classes read on the two halves exchange places between the two orders
  (and differ); ``both_correct``: both orders put both garments on their named halves;
* ``attribute_brightness``: "an image of a dark X" and "... a light X" (every class, the
  held-out single templates) from the same noise; ``named``: the measured attribute is the
  named one (below the class's 30th / above its 70th train percentile, so a model that
  ignores the word scores about 0.3); ``pair_order``: the dark sample's garment is darker than
  the light one's (chance 0.5);
* ``attribute_direction``: "... pointing left" / "... pointing right" for the three shoe
  classes, same noise; ``named``: the measured direction is the named one (chance about 0.5,
  less the shoes too symmetric to call); ``both_named``: both samples of a pair are (the
  direction swaps with the words).

Every prompt gets ``per_prompt`` samples (``EvalOptions.per_prompt``; when None: ``num //
number of prompts`` if ``num`` is given, else :data:`DEFAULT_PER_PROMPT`); the report states
the samples behind every number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddpmkit.errors import ConfigError
from ddpmkit.evaluation.classifier import extract
from ddpmkit.evaluation.options import EvalOptions
from ddpmkit.evaluation.report import write_json

__all__ = [
    "ADHERENCE_DATASETS",
    "DEFAULT_PER_PROMPT",
    "PAIRED_GROUPS",
    "PromptCase",
    "attribute_prompts",
    "evaluate_prompts",
    "garment_crops",
    "pair_scores",
    "per_prompt",
    "prompt_groups",
    "scene_correct",
]

ADHERENCE_DATASETS = ("fashion_captions", "fashion_scenes")
SWAP_TEMPLATE = "{left} to the left of {right}"
DEFAULT_PER_PROMPT = 4
# Groups whose cases come in (first, second) pairs drawn from the same initial noise.
PAIRED_GROUPS = ("word_swap", "attribute_brightness", "attribute_direction")


@dataclass(frozen=True)
class PromptCase:
    """A prompt and what it names: the class of the only (or left) garment, of the right one
    (-1: a single garment), and the attributes said (-1 dark / 1 light, -1 points left / 1
    points right, 0 unsaid)."""

    prompt: str
    left: int
    right: int = -1
    brightness: int = 0
    direction: int = 0


def attribute_prompts() -> dict[str, list[PromptCase]]:
    """The attribute groups: (dark, light) pairs of every class and (pointing left, pointing
    right) pairs of every shoe class, in the held-out single templates, first synonym."""
    from ddpmkit.data.caption_text import HELD_OUT_SINGLE_TEMPLATES, SHOES, describe_garment

    bright, direction = [], []
    for t in HELD_OUT_SINGLE_TEMPLATES:
        for c in range(10):
            for b in (-1, 1):
                bright.append(PromptCase(describe_garment(c, brightness=b, template=t), c, -1, b))
        for c in SHOES:
            for d in (-1, 1):
                prompt = describe_garment(c, direction=d, template=t)
                direction.append(PromptCase(prompt, c, -1, 0, d))
    return {"attribute_brightness": bright, "attribute_direction": direction}


def prompt_groups(scenes: bool) -> dict[str, list[PromptCase]]:
    """The evaluation's prompt groups (module docstring); scene groups only for scenes. The
    groups of :data:`PAIRED_GROUPS` list their cases as consecutive (first, second) pairs."""
    from ddpmkit.data.caption_text import describe_scene, scene_prompts, single_prompts

    groups = {
        "single_held_out_phrasings": [PromptCase(p, c) for p, c in single_prompts("held_out")]
    }
    if scenes:
        pairs = scene_prompts("held_out", "train")
        groups["scene_held_out_pairs"] = [PromptCase(p, a, b) for p, a, b in pairs]
        phr = scene_prompts("train", "held_out")
        pick = np.random.default_rng(0).choice(len(phr), size=min(30, len(phr)), replace=False)
        groups["scene_held_out_phrasings"] = [PromptCase(*phr[i]) for i in sorted(pick.tolist())]
        swaps = []
        for a, b in sorted({(min(a, b), max(a, b)) for _, a, b in pairs}):
            swaps += [PromptCase(describe_scene(a, b, SWAP_TEMPLATE), a, b)]
            swaps += [PromptCase(describe_scene(b, a, SWAP_TEMPLATE), b, a)]
        groups["word_swap"] = swaps
    groups.update(attribute_prompts())
    return groups


def per_prompt(opts: EvalOptions, num_prompts: int) -> int:
    """Samples per prompt: ``--per-prompt``, else ``--num`` spread over the prompts (at least
    1), else :data:`DEFAULT_PER_PROMPT`."""
    if opts.per_prompt is not None and opts.num is not None:
        raise ConfigError("--num/--per-prompt: a text model is evaluated per prompt; give one")
    if opts.per_prompt is not None:
        return opts.per_prompt
    if opts.num is not None:
        return max(1, opts.num // num_prompts)
    return DEFAULT_PER_PROMPT


def garment_crops(images: Tensor, scenes: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(left half, right half, centre 28 columns) of uint8 (N, 1, 28, W) samples; for
    single-garment models (not ``scenes``) all three are the whole image."""
    if not scenes:
        return images, images, images
    w = images.shape[-1]
    return (
        images[..., : w // 2].contiguous(),
        images[..., w // 2 :].contiguous(),
        images[..., (w - 28) // 2 : (w + 28) // 2].contiguous(),
    )


def _classes(images: Tensor) -> Tensor:
    probs = extract(images, "fashion_mnist").probs
    assert probs is not None
    return probs.argmax(1)


def scene_correct(left: Tensor, right: Tensor, want_left: Tensor, want_right: Tensor) -> Tensor:
    """(N,) bool: both garments found, each on its named half."""
    return (left == want_left) & (right == want_right)


def pair_scores(first: dict[str, Tensor], second: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per same-noise pair, from each sample's measurements (``left``/``right`` classes,
    ``ok`` = as named, ``brightness`` = foreground mean): ``halves_swap`` (the halves' classes
    exchange and differ), ``both`` (both samples as named), ``darker`` (first's garment darker
    than second's)."""
    out = {"both": first["ok"] & second["ok"]}
    if "left" in first:
        out["halves_swap"] = (
            (second["left"] == first["right"])
            & (second["right"] == first["left"])
            & (first["left"] != first["right"])
        )
    if "brightness" in first:
        out["darker"] = first["brightness"] < second["brightness"]
    return out


def _draw(model: Any, cases: Sequence[PromptCase], per: int, opts: EvalOptions) -> Tensor:
    """uint8 (len(cases) * per, C, H, W): each case ``per`` times in turn, one sampling call,
    sample i seeded by seed + i."""
    prompts = [c.prompt for c in cases for _ in range(per)]
    x = model.sample(
        len(prompts),
        prompts=prompts,
        sampler=opts.sampler,
        steps=opts.steps,
        spacing=opts.spacing,
        schedule_from=opts.schedule_from,
        guidance=opts.guidance,
        guidance_interval=opts.guidance_interval,
        eta=opts.eta,
        final_step=opts.final_step,
        variance=opts.variance,
        seed=opts.seed or 0,
        batch_size=opts.batch_size,
    )
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def _measure(images: Tensor, cases: Sequence[PromptCase], per: int, scenes: bool) -> dict:
    """Per sample: classes on the halves and the centre, the named classes, whether the sample
    shows what its case names, and the measured attributes of the centre garment."""
    from ddpmkit.data.garment_attributes import (
        brightness_attribute,
        direction_attribute,
        foreground_brightness,
    )

    def want(field: str) -> Tensor:
        return torch.tensor([getattr(c, field) for c in cases]).repeat_interleave(per)

    left_img, right_img, centre = garment_crops(images, scenes)
    m: dict[str, Tensor] = {"centre": _classes(centre)}
    a, b = want("left"), want("right")
    if scenes and bool((b >= 0).any()):
        m["left"], m["right"] = _classes(left_img), _classes(right_img)
        m["ok"] = scene_correct(m["left"], m["right"], a, b)
        m["present"] = m["ok"] | scene_correct(m["left"], m["right"], b, a)
        return m
    m["class_ok"] = m["centre"] == a
    m["ok"] = m["class_ok"]
    named_b, named_d = want("brightness"), want("direction")
    if bool((named_b != 0).any()):
        m["brightness"] = torch.from_numpy(foreground_brightness(centre))
        got = torch.from_numpy(brightness_attribute(centre, a.tolist()))
        m["ok"] = got == named_b
    if bool((named_d != 0).any()):
        got = torch.from_numpy(direction_attribute(centre, a.tolist()))
        m["ok"] = got == named_d
    return m


def _mean(x: Tensor) -> float:
    return float(x.float().mean())


def _score_group(
    name: str, cases: list[PromptCase], per: int, images: dict[str, Tensor], scenes: bool
) -> dict[str, Any]:
    """One group's report entry from its samples (``images["all"]``, or ``"first"`` and
    ``"second"`` for a paired group)."""
    if name not in PAIRED_GROUPS:
        m = _measure(images["all"], cases, per, scenes)
        key = "accuracy" if name.startswith("single") else "both_correct"
        single = {"prompts": len(cases), "samples": len(cases) * per, key: _mean(m["ok"])}
        if "present" in m:  # placement apart from recognition: the named pair on either halves
            single["both_present"] = _mean(m["present"])
        return single
    m1 = _measure(images["first"], cases[0::2], per, scenes)
    m2 = _measure(images["second"], cases[1::2], per, scenes)
    pairs = pair_scores(m1, m2)
    entry: dict[str, Any] = {
        "pairs": len(cases) // 2,
        "samples": len(cases) * per,
        "same_noise": True,
    }
    if name == "word_swap":
        entry["halves_swap"] = _mean(pairs["halves_swap"])
        entry["both_correct"] = _mean(pairs["both"])
        return entry
    entry["named"] = _mean(torch.cat([m1["ok"], m2["ok"]]))
    entry["class_accuracy"] = _mean(torch.cat([m1["class_ok"], m2["class_ok"]]))
    if name == "attribute_brightness":
        entry["pair_order"] = _mean(pairs["darker"])
    else:
        entry["both_named"] = _mean(pairs["both"])
    return entry


METRIC_INFO = {
    "accuracy": "share of samples whose centre garment the fashion_mnist classifier reads as "
    "the named class",
    "both_correct": "share of samples with both garments on their named halves "
    "(fashion_mnist classifier on each half)",
    "both_present": "share of samples showing both named garments, on either halves (placement "
    "ignored; both_correct / both_present = 0.5 is placement at chance)",
    "halves_swap": "share of same-noise pairs whose halves' classes exchange when the words "
    "are swapped",
    "named": "share of samples whose measured attribute is the named one",
    "class_accuracy": "share of the attribute prompts' samples read as the named class",
    "pair_order": "share of same-noise (dark, light) pairs whose dark sample is darker",
    "both_named": "share of same-noise (left, right) pairs that both point as named",
}


def _info(name: str, key: str, text: str, entry: dict[str, Any]) -> str:
    """What metric ``name_key`` means, with the samples (and pairs) behind it."""
    if name == "word_swap" and key == "both_correct":
        text = (
            "share of same-noise pairs whose two orders both put both garments on their "
            "named halves"
        )
    pairs = f" in {entry['pairs']} prompt pairs" if "pairs" in entry else ""
    return f"{text}; {entry['samples']} samples{pairs}"


def evaluate_prompts(
    model: Any,
    dataset: str,
    opts: EvalOptions,
    report: dict[str, Any],
    log: Callable[[str], None],
) -> list[Path]:
    """Sample ``model`` (a :class:`ddpmkit.trained.TrainedModel` with text) on the held-out
    prompt groups, fill ``report["prompt_adherence"]`` and write ``OUT/eval.json``."""
    out = Path(opts.out)
    scenes = model.sample_shape[-1] == 56
    groups = prompt_groups(scenes)
    total = sum(len(rows) for rows in groups.values())
    per = per_prompt(opts, total)
    log(f"prompt adherence: {total} held-out prompts x {per} samples")
    plain = [c for name, rows in groups.items() if name not in PAIRED_GROUPS for c in rows]
    paired = [rows for name, rows in groups.items() if name in PAIRED_GROUPS]
    drawn = {
        "all": _draw(model, plain, per, opts),
        "first": _draw(model, [c for rows in paired for c in rows[0::2]], per, opts),
        "second": _draw(model, [c for rows in paired for c in rows[1::2]], per, opts),
    }
    start = {"all": 0, "first": 0, "second": 0}
    section: dict[str, Any] = {"samples_per_prompt": per, "classifier": "fashion_mnist"}
    for name, rows in groups.items():
        parts = ("first", "second") if name in PAIRED_GROUPS else ("all",)
        n = len(rows) * per // len(parts)
        images = {k: drawn[k][start[k] : start[k] + n] for k in parts}
        for k in parts:
            start[k] += n
        section[name] = _score_group(name, rows, per, images, scenes)
    section["held_out_pairs"] = sorted(
        {f"{c.left}-{c.right}" for c in groups.get("scene_held_out_pairs", [])}
    )
    report["prompt_adherence"] = section
    metrics: dict[str, float] = {}
    info: dict[str, str] = {}
    for name, entry in section.items():
        if isinstance(entry, dict):
            for key, text in METRIC_INFO.items():
                if key in entry:
                    metrics[f"{name}_{key}"] = entry[key]
                    info[f"{name}_{key}"] = _info(name, key, text, entry)
    report["metrics"] = metrics
    report["metric_info"] = info
    s_ = model.resolve_settings(
        sampler=opts.sampler, steps=opts.steps, spacing=opts.spacing, guidance=opts.guidance,
        guidance_interval=opts.guidance_interval, eta=opts.eta, schedule_from=opts.schedule_from,
        final_step=opts.final_step, variance=opts.variance,
    )  # fmt: skip
    num = sum(int(v.shape[0]) for v in drawn.values())
    report["depends_on"] = (
        f"{num} samples ({per} per prompt), {'raw' if opts.raw else 'EMA'} weights, {s_.describe()}"
    )
    report["samples"] = {"num": num, "per_prompt": per, "guidance": opts.guidance}
    out.mkdir(parents=True, exist_ok=True)
    return [write_json(out / "eval.json", report)]
