"""U-Net throughput by numeric format and memory layout, side by side in one run.

    .venv/bin/python benchmarks/bench_unet_layout.py                      # Fashion-MNIST size
    .venv/bin/python benchmarks/bench_unet_layout.py --base-channels 64 --json out.json
    .venv/bin/python benchmarks/bench_unet_layout.py --channel-mults 1,2 --attention 14

Four variants of one config (same initial weights): fp32 NCHW, fp32 channels_last, bf16 autocast
NCHW and bf16 autocast channels_last. For each it measures

* training throughput: images/s of forward + MSE loss + backward + AdamW step (``--batch``, 128);
* sampling throughput: images/s of a forward pass under ``no_grad`` (``--sample-batch``, 256),
  i.e. one denoiser evaluation per image, the unit cost of every sampler step.

Repetitions are interleaved (each round visits every variant, in a rotated order) and the median
over rounds is reported, with ratios to fp32 NCHW: on a shared, noisy machine the ratios are the
result, absolute numbers only describe this machine at this moment. The spread column is
(max - min) / median over the rounds; a large spread means the machine was busy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from ddpmkit.nn.unet import UNet, UNetConfig, num_parameters

VARIANTS: tuple[tuple[str, bool, bool], ...] = (  # (name, bf16 autocast, channels_last)
    ("fp32 NCHW", False, False),
    ("fp32 channels_last", False, True),
    ("bf16 NCHW", True, False),
    ("bf16 channels_last", True, True),
)
BASELINE = "fp32 NCHW"


def int_tuple(s: str) -> tuple[int, ...]:
    """'1,2,2' -> (1, 2, 2); '' -> ()."""
    return tuple(int(v) for v in s.split(",") if v.strip())


def make_steps(
    cfg: UNetConfig, batch: int, sample_batch: int, bf16: bool, channels_last: bool, seed: int
) -> tuple[Callable[[], None], Callable[[], None], int]:
    """(train_step, sample_step, num_parameters) for one variant; same weights for every seed."""
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = UNet(cfg).to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    h, w = cfg.hw
    cond = cfg.num_classes > 0

    def batch_of(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x = torch.randn(n, cfg.in_channels, h, w).contiguous(memory_format=fmt)
        t = torch.randint(0, 1000, (n,))
        y = torch.randint(-1, cfg.num_classes, (n,)) if cond else None  # -1: null class
        return x, t, y

    def ctx() -> AbstractContextManager[object]:
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

    x, t, y = batch_of(batch)
    noise = torch.randn_like(x)

    def train_step() -> None:
        model.train()
        with ctx():
            out = model(x, t, y)
        loss = (out.float() - noise).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    xs, ts, ys = batch_of(sample_batch)

    @torch.no_grad()
    def sample_step() -> None:
        model.eval()
        with ctx():
            model(xs, ts, ys)

    return train_step, sample_step, num_parameters(model)


def rate(fn: Callable[[], None], images_per_call: int, iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return images_per_call * iters / (time.perf_counter() - t0)


def spread(v: list[float]) -> float:
    return (max(v) - min(v)) / statistics.median(v)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--image-size", type=int_tuple, default=(28,), help="S or H,W")
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--channel-mults", type=int_tuple, default=(1, 2, 2))
    ap.add_argument("--num-res-blocks", type=int, default=2)
    ap.add_argument("--attention", type=int_tuple, default=(7,), help="feature-map sides")
    ap.add_argument("--num-heads", type=int, default=4)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--conditioning", default="add")
    ap.add_argument("--batch", type=int, default=128, help="training batch")
    ap.add_argument("--sample-batch", type=int, default=256, help="forward-only batch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2, help="calls per variant per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = args.image_size
    cfg = UNetConfig(
        in_channels=args.in_channels,
        image_size=size[0] if len(size) == 1 else (size[0], size[1]),
        base_channels=args.base_channels,
        channel_mults=args.channel_mults,
        num_res_blocks=args.num_res_blocks,
        attention_resolutions=args.attention,
        num_heads=args.num_heads,
        groups=args.groups,
        num_classes=args.num_classes,
        conditioning=args.conditioning,
    )
    steps = {
        name: make_steps(cfg, args.batch, args.sample_batch, bf16, cl, seed=0)
        for name, bf16, cl in VARIANTS
    }
    n_params = steps[BASELINE][2]
    for train_step, sample_step, _ in steps.values():  # warm-up: oneDNN primitive creation
        train_step()
        sample_step()
    rates: dict[str, dict[str, list[float]]] = {n: {"train": [], "sample": []} for n in steps}
    names = list(steps)
    t_start = time.perf_counter()
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotated order
            train_step, sample_step, _ = steps[name]
            rates[name]["train"].append(rate(train_step, args.batch, args.iters))
            rates[name]["sample"].append(rate(sample_step, args.sample_batch, args.iters))
    elapsed = time.perf_counter() - t_start
    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in rates.items()}
    base = med[BASELINE]

    h, w = cfg.hw
    print(
        f"UNet {cfg.in_channels}x{h}x{w}, base {cfg.base_channels}, mults "
        f"{list(cfg.channel_mults)}, {cfg.num_res_blocks} res blocks, attention at "
        f"{list(cfg.attention_resolutions)} + middle, {cfg.num_classes} classes "
        f"({cfg.conditioning}): {n_params / 1e6:.3f}M parameters"
    )
    print(
        f"torch {torch.__version__}, {args.threads} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; train batch {args.batch}, sample batch "
        f"{args.sample_batch}; median of {args.rounds} interleaved rounds x {args.iters} calls "
        f"({elapsed:.0f} s)"
    )
    header = (
        f"{'variant':20s} {'train img/s':>11s} {'ratio':>6s} {'spread':>6s} "
        f"{'sample img/s':>12s} {'ratio':>6s} {'spread':>6s}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for name in names:
        m, r = med[name], rates[name]
        row = {
            "variant": name,
            "train_images_per_s": m["train"],
            "train_ratio": m["train"] / base["train"],
            "train_spread": spread(r["train"]),
            "sample_images_per_s": m["sample"],
            "sample_ratio": m["sample"] / base["sample"],
            "sample_spread": spread(r["sample"]),
            "train_rounds": r["train"],
            "sample_rounds": r["sample"],
        }
        rows.append(row)
        print(
            f"{name:20s} {row['train_images_per_s']:11.1f} {row['train_ratio']:6.2f} "
            f"{row['train_spread']:6.0%} {row['sample_images_per_s']:12.1f} "
            f"{row['sample_ratio']:6.2f} {row['sample_spread']:6.0%}"
        )
    if args.json:
        result = {
            "config": {
                k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(cfg).items()
            },
            "num_parameters": n_params,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": args.threads,
            "batch": args.batch,
            "sample_batch": args.sample_batch,
            "rounds": args.rounds,
            "iters": args.iters,
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
