"""Does word order reach the picture? Two diagnostics for two-garment scenes (issue 15).

``probe``: can the text side carry *which garment is where* at all? A probe of two learned
queries (left, right) cross-attends to the prompt's tokens and is trained, with the layout as
direct supervision, to name each half's class from the training scene captions (training
pairs and phrasings, every synonym); it is scored on held-out class pairs (training phrasings,
as ``ddpm eval`` does) and on held-out phrasings (training pairs). Three text sides: the
frozen MiniLM's mean-pooled vector (order-blind by construction), its raw token embeddings,
and the tokens through ``ddpmkit.nn.blocks.TokenRefiner`` (2 blocks, trainable). This is an
upper bound on what the diffusion model can read from each text side, not a result of it.

``order RUN [RUN ...]``: how much the prompt's word order changes a model's samples. For 8
class pairs, "A to the left of B" and "B to the left of A" are drawn from the same noise (4
samples each, the run's own sampling); the score is mean |x_AB - x_BA| (uint8 pixels) over
mean |x_AB - x_CD| for the same noise and an unrelated pair's prompt: 0 = order ignored, about
1 = order matters as much as which garments are named. Continuous, so it moves before the
thresholded ``word_swap`` adherence of ``ddpm eval`` does.

``align``: the contrastive text alignment (``ddpmkit.training.text_align``, ``text.align_steps``) on
the fashion_text preset's own data and U-Net text side: after each block of steps, the share of
scenes whose caption scores its image above the image's mirror (= the swapped scene), on
fresh training-pair scenes and on held-out class pairs (the test split's garments, training
phrasings). Chance is 0.5; an order-blind text side scores 0.5 on every scene. With
``--set model.unet.text_layout=true`` also (``*_regions``) the share of scenes whose layout
map's every cell scores the scene's cell above the mirror's same cell.

One thread, fixed step counts: the numbers do not depend on the machine's load.

    .venv/bin/python benchmarks/text_binding.py probe --out text_binding_probe.json
    .venv/bin/python benchmarks/text_binding.py order runs/fashion_text runs/other
    .venv/bin/python benchmarks/text_binding.py align --set model.unet.text_refiner_layers=2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

torch.set_num_threads(1)

from cpu_label import cpu_label  # noqa: E402  (benchmarks/ is the script's directory)

from ddpmkit.data.caption_text import (  # noqa: E402
    SCENE_TEMPLATES,
    SYNONYMS,
    class_pairs,
    describe_scene,
    scene_prompts,
)
from ddpmkit.nn.blocks import TokenRefiner  # noqa: E402

TEXT_SIDES = ("pooled", "tokens", "refined")


class LayoutProbe(nn.Module):
    """Two learned queries attend to the projected tokens (or read the pooled vector) and
    name a class each: (B, 2, 10) logits for (left, right)."""

    def __init__(self, side: str, dim: int = 384, width: int = 128):
        super().__init__()
        self.side, self.width = side, width
        self.inp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width))
        self.refiner = TokenRefiner(width, 4, 2) if side == "refined" else None
        self.queries = nn.Parameter(torch.randn(2, width))
        self.kv = nn.Linear(width, 2 * width)
        self.pooled = nn.Linear(dim, 2 * width)
        self.out = nn.Linear(width, 10)

    def forward(self, tokens: Tensor, mask: Tensor, pooled: Tensor) -> Tensor:
        if self.side == "pooled":
            return self.out(self.pooled(pooled).view(-1, 2, self.width))
        t = self.inp(tokens)
        if self.refiner is not None:
            t = self.refiner(t, mask)
        k, v = self.kv(t).chunk(2, dim=-1)
        scores = torch.einsum("qc,blc->bql", self.queries, k) / self.width**0.5
        weights = scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1)
        return self.out(torch.einsum("bql,blc->bqc", weights, v))


def _encode(rows: list[tuple[str, int, int]]) -> tuple[Any, Tensor]:
    from ddpmkit.text.minilm import MiniLMEncoder

    enc = MiniLMEncoder(max_length=32, log=lambda _m: None).encode([r[0] for r in rows])
    return enc, torch.tensor([[r[1], r[2]] for r in rows])


def _both_correct(probe: LayoutProbe, enc: Any, want: Tensor) -> float:
    with torch.no_grad():
        got = probe(enc.tokens, enc.mask, enc.pooled).argmax(-1)
    return float((got == want).all(dim=1).float().mean())


def probe(steps: int, seeds: int) -> dict[str, Any]:
    train = [
        (describe_scene(a, b, t, i, j), a, b)
        for t in SCENE_TEMPLATES
        for a, b in class_pairs("train")
        for i in range(len(SYNONYMS[a]))
        for j in range(len(SYNONYMS[b]))
    ]
    tr, tr_y = _encode(train)
    pairs, pairs_y = _encode(scene_prompts("held_out", "train"))
    phr, phr_y = _encode(scene_prompts("train", "held_out"))
    out: dict[str, Any] = {}
    for side in TEXT_SIDES:
        rows = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            p = LayoutProbe(side)
            opt = torch.optim.Adam(p.parameters(), lr=3e-3)
            for _ in range(steps):
                i = torch.randint(0, len(train), (64,))
                logits = p(tr.tokens[i], tr.mask[i], tr.pooled[i])
                loss = F.cross_entropy(logits.reshape(-1, 10), tr_y[i].reshape(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
            rows.append(
                {
                    "seed": seed,
                    "train": _both_correct(p, tr, tr_y),
                    "held_out_pairs": _both_correct(p, pairs, pairs_y),
                    "held_out_phrasings": _both_correct(p, phr, phr_y),
                }
            )
            print(side, rows[-1], flush=True)
        out[side] = {
            "per_seed": rows,
            "mean": {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "seed"},
        }
    return {
        "what": "layout probe: both halves' classes named from the text side (module docstring)",
        "steps": steps,
        "batch": 64,
        "train_captions": len(train),
        "chance_both_correct": 0.01,
        "sides": out,
    }


ORDER_PAIRS = [(5, 8), (1, 7), (0, 9), (3, 6), (2, 4), (0, 5), (1, 9), (3, 8)]
ORDER_TEMPLATE = "{left} to the left of {right}"


def order_sensitivity(run: str, per_prompt: int = 4) -> dict[str, Any]:
    import ddpmkit

    model = ddpmkit.load(run)

    def draw(prompts: list[str]) -> Tensor:
        return torch.stack(
            [
                torch.as_tensor(model.sample(per_prompt, prompts=[p] * per_prompt, seed=0)).float()
                for p in prompts
            ]
        )

    ab = draw([describe_scene(a, b, ORDER_TEMPLATE) for a, b in ORDER_PAIRS])
    ba = draw([describe_scene(b, a, ORDER_TEMPLATE) for a, b in ORDER_PAIRS])
    swap = float((ab - ba).abs().mean())
    other = float((ab - ab.roll(1, dims=0)).abs().mean())
    return {
        "run": run,
        "step": model.meta.get("step"),
        "swap_diff": swap,
        "other_prompt_diff": other,
        "order_sensitivity": swap / other,
    }


def align_curve(steps: int, every: int, overrides: list[str]) -> dict[str, Any]:
    from ddpmkit.data.captions import fashion_scenes
    from ddpmkit.text import encode_all
    from ddpmkit.training.build import build_text_encoder_for, build_text_model, load_train_data
    from ddpmkit.training.config import load_config
    from ddpmkit.training.text_align import align_text_side

    sets = ['model.unet.text_pooling="attention"', "train.num_threads=1", *overrides]
    cfg = load_config("fashion_text", sets)
    data = load_train_data(cfg, log=lambda _m: None)
    torch.manual_seed(cfg.train.seed)
    model, _ = build_text_model(cfg, data, 1000, log=lambda _m: None)
    encoder = build_text_encoder_for(cfg, data.captions or [], log=lambda _m: None)
    train_table = model._table.encoding
    checks = {
        "train_pairs": fashion_scenes("train", num=1000, seed=1, pairs="train"),
        "held_out_pairs": fashion_scenes("test", num=1000, seed=2, pairs="held_out"),
    }
    tables = {k: encode_all(encoder, list(v.caption_set)) for k, v in checks.items()}
    t = cfg.text
    curve: list[dict[str, Any]] = []

    def read_out(step: int, aligner: Any) -> None:
        row: dict[str, Any] = {"steps": step}
        for k, v in checks.items():
            model.set_table(tables[k])
            if aligner.has_global:
                row[k] = aligner.mirror_accuracy(v.caption_ids, v.images)
            if aligner.has_regions:
                row[f"{k}_regions"] = aligner.region_accuracy(v.caption_ids, v.images)
        model.set_table(train_table)
        curve.append(row)
        print(row, flush=True)

    stats, _ = align_text_side(
        model, data.x, data.labels, steps=steps, batch_size=t.align_batch, lr=t.align_lr,
        seed=cfg.train.seed, freeze=False, log=None, on_block=read_out, block=every,
    )  # fmt: skip
    return {
        "what": "contrastive text alignment: caption prefers its scene to the mirror (doc)",
        "overrides": sets,
        "align_batch": t.align_batch,
        "align_lr": t.align_lr,
        "final": stats,
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path)
    al = sub.add_parser("align")
    al.add_argument("--steps", type=int, default=1500)
    al.add_argument("--every", type=int, default=250)
    al.add_argument("--set", action="append", default=[], dest="overrides")
    al.add_argument("--out", type=Path)
    o = sub.add_parser("order")
    o.add_argument("runs", nargs="+")
    o.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "probe":
        res = probe(args.steps, args.seeds)
    elif args.cmd == "align":
        res = align_curve(args.steps, args.every, args.overrides)
    else:
        res = {"arms": [order_sensitivity(r) for r in args.runs]}
        for a in res["arms"]:
            print(f"{a['run']}: order sensitivity {a['order_sensitivity']:.3f}")
    res["cpu"], res["threads"] = cpu_label(), 1
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
