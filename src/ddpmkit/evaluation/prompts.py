"""Prompt adherence of a text model trained on captioned Fashion-MNIST, on held-out prompts.

The shipped Fashion-MNIST classifier (:mod:`ddpmkit.evaluation.classifier`) reads each 28x28
garment: the centre of a single-garment sample (28x28, or 28x56 with the garment centred) and
each half of a two-garment scene (:func:`ddpmkit.data.captions.halves`). Groups, all never seen
in training:

* ``single_held_out_phrasings``: every class and synonym in the held-out single templates
  (:func:`~ddpmkit.data.captions.single_prompts`); accuracy = the named class is the argmax;
* ``scene_held_out_pairs``: the held-out class pairs (both orders) in the training templates;
* ``scene_held_out_phrasings``: training pairs in the held-out scene templates (a seeded
  subset of 30 prompts); share correct = both garments found, each on its named half;
* ``word_swap``: for each held-out pair, "A to the left of B" and "B to the left of A" with the
  same seeds; the share of seeds where both samples put both garments in the right places
  (swapping the order of the words swaps the halves); the two prompts' samples are drawn with
  different seeds (one sampling call, sample i seeded by seed + i).

Every prompt gets ``num // number of prompts`` samples (at least 1); the report states them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddpmkit.evaluation.classifier import extract
from ddpmkit.evaluation.options import EvalOptions
from ddpmkit.evaluation.report import write_json

__all__ = ["ADHERENCE_DATASETS", "evaluate_prompts", "prompt_groups"]

ADHERENCE_DATASETS = ("fashion_captions", "fashion_scenes")
SWAP_TEMPLATE = "{left} to the left of {right}"


def prompt_groups(scenes: bool) -> dict[str, list[tuple[str, int, int]]]:
    """(prompt, left/only class, right class or -1) per group; scene groups only for scenes."""
    from ddpmkit.data.captions import describe_scene, scene_prompts, single_prompts

    groups = {"single_held_out_phrasings": [(p, c, -1) for p, c in single_prompts("held_out")]}
    if scenes:
        groups["scene_held_out_pairs"] = scene_prompts("held_out", "train")
        phr = scene_prompts("train", "held_out")
        pick = np.random.default_rng(0).choice(len(phr), size=min(30, len(phr)), replace=False)
        groups["scene_held_out_phrasings"] = [phr[i] for i in sorted(pick.tolist())]
        swaps = []
        for a, b in sorted({tuple(sorted((a, b))) for _, a, b in groups["scene_held_out_pairs"]}):
            swaps += [(describe_scene(a, b, SWAP_TEMPLATE), a, b)]
            swaps += [(describe_scene(b, a, SWAP_TEMPLATE), b, a)]
        groups["word_swap"] = swaps
    return groups


def _classes(images: Tensor) -> Tensor:
    probs = extract(images, "fashion_mnist").probs
    assert probs is not None
    return probs.argmax(1)


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
    flat = [row for rows in groups.values() for row in rows]
    per = max(1, (opts.num or 300) // len(flat))
    prompts = [p for p, _, _ in flat for _ in range(per)]
    log(f"prompt adherence: {len(flat)} held-out prompts x {per} samples")
    x = model.sample(
        len(prompts),
        prompts=prompts,
        sampler=opts.sampler,
        steps=opts.steps,
        spacing=opts.spacing,
        guidance=opts.guidance,
        eta=opts.eta,
        seed=opts.seed or 0,
        batch_size=opts.batch_size,
    )
    images = [torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)]
    u8 = torch.cat(images)
    w = u8.shape[-1]
    if scenes:
        left, right = u8[..., : w // 2], u8[..., w // 2 :]
        centre = u8[..., (w - 28) // 2 : (w + 28) // 2]
        cl, cr, cc = (
            _classes(left.contiguous()),
            _classes(right.contiguous()),
            _classes(centre.contiguous()),
        )
    else:
        cc = _classes(u8)
        cl = cr = cc
    section: dict[str, Any] = {"samples_per_prompt": per, "classifier": "fashion_mnist"}
    start = 0
    for name, rows in groups.items():
        n = len(rows) * per
        a = torch.tensor([r[1] for r in rows]).repeat_interleave(per)
        b = torch.tensor([r[2] for r in rows]).repeat_interleave(per)
        sl = slice(start, start + n)
        start += n
        if name.startswith("single"):
            ok = cc[sl] == a
            section[name] = {
                "prompts": len(rows),
                "samples": n,
                "accuracy": float(ok.float().mean()),
            }
            continue
        ok = (cl[sl] == a) & (cr[sl] == b)
        entry: dict[str, Any] = {
            "prompts": len(rows),
            "samples": n,
            "both_correct": float(ok.float().mean()),
        }
        if name == "word_swap":  # rows come in (A, B), (B, A) pairs with the same seeds
            pair_ok = ok.view(-1, 2, per).all(dim=1)
            entry = {
                "pairs": len(rows) // 2,
                "samples": n,
                "swap_correct": float(pair_ok.float().mean()),
            }
        section[name] = entry
    section["held_out_pairs"] = sorted(
        {f"{r[1]}-{r[2]}" for r in groups.get("scene_held_out_pairs", [])}
    )
    report["prompt_adherence"] = section
    metrics: dict[str, float] = {}
    for name, entry in section.items():
        if isinstance(entry, dict):
            key = next(k for k in ("accuracy", "both_correct", "swap_correct") if k in entry)
            metrics[f"{name}_{key}"] = entry[key]
    report["metrics"] = metrics
    report["metric_info"] = {k: "share of held-out-prompt samples, fashion_mnist classifier"
                             for k in metrics}  # fmt: skip
    s_ = model.resolve_settings(
        sampler=opts.sampler, steps=opts.steps, spacing=opts.spacing, guidance=opts.guidance,
        eta=opts.eta,
    )  # fmt: skip
    report["depends_on"] = (
        f"{int(u8.shape[0])} samples ({per} per prompt), {'raw' if opts.raw else 'EMA'} weights, "
        f"{s_.describe()}"
    )
    report["samples"] = {"num": int(u8.shape[0]), "guidance": opts.guidance}
    out.mkdir(parents=True, exist_ok=True)
    return [write_json(out / "eval.json", report)]
