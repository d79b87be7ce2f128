"""The extra cost of text conditioning (issue 15), per training step and per sample, in one run.

    .venv/bin/python benchmarks/bench_text_cost.py --json benchmarks/results/text_cost.json
    .venv/bin/python benchmarks/bench_text_cost.py --quick     # checks the script; no timing

Three variants, each the library's own training step (``training/setup.build_run`` from a
preset, then ``training/step.make_step``: batch drawn by the run's Batcher, v-prediction loss,
clipping, AdamW, EMA; the numeric path ``ddpm train`` picks) and its own sampling
(``previews.sample_images``: the preset's ``[sample]`` section, DPM-Solver++ 20 log-SNR steps
with classifier-free guidance, as ``ddpm sample`` draws):

* ``class``: the ``fashion_mnist`` preset, the class-conditional baseline (28x28, batch 64);
* ``class_wide``: the ``fashion_text`` preset's U-Net and batches (28x56) with the class path
  instead of text (label = caption id mod 10, the null label where the prompt is dropped):
  the canvas alone;
* ``text``: the ``fashion_text`` preset (28x56, MiniLM tokens cross-attended at 7x14, pooled
  vector added to the time embedding, the layout map at every level; caption encodings
  cached and the aligned text side frozen, as in training). The region alignment the preset
  runs before its first step is a one-off, not timed here: ``ddpm train`` logs its seconds.

So ``text / class`` is the whole price of the text preset against the class preset,
``class_wide / class`` the wider canvas and ``text / class_wide`` the text conditioning itself.
The frozen encoder's own cost is a separate line: it runs once per distinct caption (cached
for training) or prompt (sampling), never per step: milliseconds per prompt, encoding 8 prompts.

Method: every variant is built and warmed up (2 steps and one sampling call), then
``--rounds`` rounds visit the variants in a rotated order, ``--steps`` training steps and one
sampling call of ``--samples`` images each. Per round the ratios of the variants' times are
taken (measured within seconds of each other); reported: the median over rounds of each
variant's time and of each ratio, and the spread (max - min) / median of the times. The JSON
is labelled with the CPU (model name, capability, native bf16, cores) and threads.

``--quick`` shrinks everything (64 training items, batch 8, 2 sampling steps, 2 images, 2
rounds of one step) to check the script end to end; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from cpu_label import cpu_label
from torch import Tensor, nn

VARIANTS = ("class", "class_wide", "text")
RATIOS = (("text", "class"), ("class_wide", "class"), ("text", "class_wide"))
ENCODE_PROMPTS = [
    "a sandal to the left of a bag",
    "a bag to the left of a sandal",
    "an image of a dark sneaker pointing left",
    "a black and white photo of a coat",
    "a pair of trousers with a sneaker on its right",
    "a dress",
    "a photo of a light pullover",
    "a short boot right of a frock",
]


class ClassFromCaption(nn.Module):
    """A class-conditional network fed caption ids: label = id mod ``k`` (-1 stays null)."""

    def __init__(self, net: nn.Module, k: int = 10):
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if y is not None:
            y = torch.where(y < 0, y, y.remainder(self.k))
        return self.net(x, t, y)  # type: ignore[no-any-return]


@dataclasses.dataclass
class Variant:
    """One variant's training step and sampling call."""

    name: str
    train: Callable[[], None]
    sample: Callable[[], None]
    params: int
    batch: int
    shape: tuple[int, ...]


def _config(preset: str, overrides: list[str], out: Path) -> Any:
    from ddpmkit.training.config import load_config

    return load_config(preset, [*overrides, f'out_dir="{out.as_posix()}"'])


def build_variant(name: str, args: argparse.Namespace, out: Path) -> Variant:
    """``name`` of :data:`VARIANTS` built by the library's run setup (module docstring)."""
    from ddpmkit.previews import sample_images
    from ddpmkit.training.build import build_model
    from ddpmkit.training.ema import EMA
    from ddpmkit.training.metrics_log import LossWindow
    from ddpmkit.training.setup import build_run
    from ddpmkit.training.step import make_step
    from ddpmkit.training.stopping import BadStepLimit

    preset = "fashion_mnist" if name == "class" else "fashion_text"
    sets = [f"data.max_items={args.items}", "train.num_threads=0"]
    if preset == "fashion_text":  # alignment is a one-off before step 1 (the run logs its
        # seconds); 2 tiny steps leave the text side frozen, as every training step after it
        sets += ["text.align_steps=2", "text.align_batch=8"]
    if args.quick:
        sets += ["sample.steps=2", "train.batch_size=8"]
    cfg = _config(preset, sets, out / name)
    run = build_run(cfg, resume=False, log=lambda s: None)
    if name == "class_wide":
        torch.manual_seed(cfg.train.seed)
        net = build_model(cfg.model, run.data.sample_shape, 10, run.sched.num_steps)
        if run.cpath.channels_last:
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        wrapped = ClassFromCaption(net)
        opt = torch.optim.AdamW(
            wrapped.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
            betas=(0.9, 0.99), fused=True if run.sync_free else None,
        )  # fmt: skip
        ema = EMA(wrapped, cfg.train.ema_decay, cfg.train.ema_warmup)
        run = dataclasses.replace(run, model=wrapped, net=wrapped, ema=ema, opt=opt)
    window = LossWindow(run.device, run.sched.num_steps)
    limit = BadStepLimit(10**9, out / name, lambda step: None, lambda: True)
    step_fn = make_step(run, window, limit, lambda s: None)
    counter = {"step": 0}

    def train() -> None:
        counter["step"] += 1
        step_fn(counter["step"])

    shape = tuple(run.data.sample_shape)
    n = args.samples
    ids = run.batcher.draw(torch.Generator().manual_seed(1), run.device)[1]
    y = ids[:n] if ids is not None and ids.shape[0] >= n else None
    if y is None or y.shape[0] < n:
        y = torch.arange(n) % 10
    model = run.model

    def sample() -> None:
        sample_images(model, run.sched, cfg, shape, n, y=y, bf16=run.cpath.bf16)

    params = sum(p.numel() for p in run.model.parameters())
    return Variant(name, train, sample, params, cfg.train.batch_size, shape)


def timed(fn: Callable[[], None], repeat: int) -> float:
    """Seconds per call of ``fn``, ``repeat`` calls."""
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def spread(v: list[float]) -> float:
    return (max(v) - min(v)) / statistics.median(v)


def encode_cost(prompts: list[str]) -> float:
    """Seconds per prompt of the MiniLM encoder (a fresh encoding of ``prompts``)."""
    from ddpmkit.text import build_text_encoder

    enc = build_text_encoder("minilm", max_length=32)
    enc.encode(prompts[:2])  # warm-up
    t0 = time.perf_counter()
    enc.encode(prompts)
    return (time.perf_counter() - t0) / len(prompts)


def measure(variants: dict[str, Variant], args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up, then interleaved rounds (rotated order); medians of times and paired ratios."""
    for v in variants.values():
        for _ in range(2):
            v.train()
        v.sample()
    times: dict[str, dict[str, list[float]]] = {
        n: {"train_s_per_step": [], "sample_s_per_image": []} for n in variants
    }
    ratios: dict[str, dict[str, list[float]]] = {
        f"{a}/{b}": {"train": [], "sample": []} for a, b in RATIOS
    }
    names = list(variants)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        now: dict[str, tuple[float, float]] = {}
        for n in order:
            v = variants[n]
            tr = timed(v.train, args.steps)
            sa = timed(v.sample, 1) / args.samples
            now[n] = (tr, sa)
            times[n]["train_s_per_step"].append(tr)
            times[n]["sample_s_per_image"].append(sa)
        for a, b in RATIOS:
            ratios[f"{a}/{b}"]["train"].append(now[a][0] / now[b][0])
            ratios[f"{a}/{b}"]["sample"].append(now[a][1] / now[b][1])
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(
                f"{n} {now[n][0] * 1e3:.0f} ms/step {now[n][1] * 1e3:.0f} ms/img" for n in names
            ),  # fmt: skip
            flush=True,
        )
    out: dict[str, Any] = {"variants": {}, "ratios_median": {}}
    for n, v in variants.items():
        t = times[n]
        out["variants"][n] = {
            "params": v.params,
            "batch": v.batch,
            "shape": list(v.shape),
            "train_s_per_step_median": statistics.median(t["train_s_per_step"]),
            "train_spread": spread(t["train_s_per_step"]),
            "train_images_per_s_median": v.batch / statistics.median(t["train_s_per_step"]),
            "sample_s_per_image_median": statistics.median(t["sample_s_per_image"]),
            "sample_spread": spread(t["sample_s_per_image"]),
            "rounds": t,
        }
    for key, rr in ratios.items():
        out["ratios_median"][key] = {
            "train": statistics.median(rr["train"]),
            "sample": statistics.median(rr["sample"]),
            "per_round": rr,
        }
    return out


def print_table(res: dict[str, Any]) -> None:
    print(f"\n{'variant':<11} {'params':>9} {'ms/step':>8} {'img/s':>7} {'ms/sample':>10}")
    for n, v in res["variants"].items():
        print(
            f"{n:<11} {v['params']:>9,} {v['train_s_per_step_median'] * 1e3:>8.1f} "
            f"{v['train_images_per_s_median']:>7.1f} {v['sample_s_per_image_median'] * 1e3:>10.1f}"
        )
    for key, r in res["ratios_median"].items():
        print(f"{key:<18} training step {r['train']:.2f}x, sample {r['sample']:.2f}x (median)")
    print(f"MiniLM encoding: {res['encode_ms_per_prompt']:.1f} ms per prompt (once per prompt)")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10, help="training steps per variant per round")
    ap.add_argument("--samples", type=int, default=64, help="images per sampling call")
    ap.add_argument("--items", type=int, default=2048, help="data.max_items of each run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, metavar="OUT")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script only")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.steps, args.samples, args.items = 2, 1, 2, 64
    if min(args.rounds, args.steps, args.samples, args.items) < 1:
        raise SystemExit("bench_text_cost: --rounds/--steps/--samples/--items must be >= 1")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        variants = {n: build_variant(n, args, Path(tmp)) for n in VARIANTS}
        res = measure(variants, args)
    res["encode_ms_per_prompt"] = encode_cost(ENCODE_PROMPTS) * 1e3
    print_table(res)
    if args.json:
        out = {
            "what": "extra cost of text conditioning: fashion_text vs fashion_mnist presets, "
            "library training step and sampling, interleaved rounds, paired ratios",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": " ".join(sys.argv),
            **cpu_label(),
            "threads": args.threads,
            "quick": args.quick,
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "samples_per_call": args.samples,
            "sampling": "each preset's [sample] section (dpmpp, 20 logsnr steps, guidance)"
            + (" with steps=2 (quick)" if args.quick else ""),
            **res,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
