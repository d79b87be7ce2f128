"""Training and sampling throughput of a preset's U-Net, side by side in one run.

    .venv/bin/python benchmarks/bench_train_speed.py                 # the default preset
    .venv/bin/python benchmarks/bench_train_speed.py --diffusers     # + diffusers' UNet2DModel
    .venv/bin/python benchmarks/bench_train_speed.py --json out.json

Variants are measured interleaved (round-robin, several rounds, median) because the machine is
shared and noisy; report ratios to the fp32/NCHW baseline, never absolute numbers alone.
Also reports achieved FLOP/s (counted with torch.utils.flop_counter) against the machine's
measured bf16 and fp32 matmul peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ddpmkit.nn.unet import UNet, UNetConfig, num_parameters
from ddpmkit.training.config import load_config


def preset_unet(preset: str) -> tuple[nn.Module, UNetConfig]:
    cfg = load_config(preset)
    m = cfg.model
    shape = {"fashion_mnist": (1, 28), "mnist": (1, 28)}.get(cfg.data.name, (3, 64))
    size = cfg.data.image_size[0] if cfg.data.image_size else shape[1]
    ucfg = UNetConfig(
        in_channels=cfg.data.channels or shape[0],
        image_size=size,
        base_channels=m.base_channels,
        channel_mults=m.channel_mults,
        num_res_blocks=m.num_res_blocks,
        attention_resolutions=m.attention_resolutions,
        num_heads=m.num_heads,
        num_classes=10 if cfg.data.conditional else 0,
        conditioning=m.conditioning,
        groups=m.groups,
    )
    return UNet(ucfg), ucfg


def make_step(
    model: nn.Module, c: int, hw: tuple[int, int], bs: int, bf16: bool, cl: bool, cond: bool
) -> tuple[Callable[[], None], Callable[[], None]]:
    fmt = torch.channels_last if cl else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(bs, c, *hw).contiguous(memory_format=fmt)
    t = torch.randint(0, 1000, (bs,))
    y = torch.randint(0, 10, (bs,)) if cond else None
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext

    def call(xx: torch.Tensor, tt: torch.Tensor, yy: torch.Tensor | None) -> torch.Tensor:
        out = model(xx, tt, yy) if yy is not None else model(xx, tt)
        return out.sample if hasattr(out, "sample") else out

    def train_step() -> None:
        with ctx():
            loss = (call(x, t, y).float() - x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    xs = torch.randn(2 * bs, c, *hw).contiguous(memory_format=fmt)
    ts = torch.randint(0, 1000, (2 * bs,))
    ys = torch.randint(0, 10, (2 * bs,)) if cond else None

    @torch.no_grad()
    def sample_step() -> None:
        with ctx():
            call(xs, ts, ys)

    return train_step, sample_step


def flops_of(fn: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def diffusers_model(c: int, size: int) -> nn.Module:
    """diffusers' UNet2DModel at about the preset's size (optional dependency)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=size,
        in_channels=c,
        out_channels=c,
        layers_per_block=1,  # with (32, 64, 128): 1.6M parameters, the size quoted in issue 6
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="fashion_mnist")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--diffusers", action="store_true", help="add diffusers' UNet2DModel (fp32)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, ucfg = preset_unet(args.preset)
    c, hw = ucfg.in_channels, ucfg.hw
    cond = ucfg.num_classes > 0
    variants: dict[str, tuple[Callable[[], None], Callable[[], None], int]] = {}
    for name, bf16, cl in [
        ("fp32 NCHW", False, False),
        ("bf16 NCHW", True, False),
        ("bf16 channels_last", True, True),
        ("fp32 channels_last", False, True),
    ]:
        m, _ = preset_unet(args.preset)
        tr, sa = make_step(m, c, hw, args.batch, bf16, cl, cond)
        variants[name] = (tr, sa, num_parameters(m))
    if args.diffusers:
        dm = diffusers_model(c, hw[0])
        tr, sa = make_step(dm, c, hw, args.batch, False, False, False)
        variants["diffusers UNet2DModel fp32"] = (tr, sa, num_parameters(dm))
    train_flops = {k: flops_of(v[0]) for k, v in variants.items()}  # per step, by model
    sample_flops = flops_of(variants["fp32 NCHW"][1])
    for tr, sa, _ in variants.values():  # warm-up (oneDNN primitive creation)
        tr()
        sa()
    times: dict[str, dict[str, list[float]]] = {k: {"train": [], "sample": []} for k in variants}
    for _ in range(args.rounds):
        for name, (tr, sa, _) in variants.items():
            t0 = time.perf_counter()
            for _ in range(args.iters):
                tr()
            times[name]["train"].append(args.batch * args.iters / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for _ in range(args.iters):
                sa()
            times[name]["sample"].append(2 * args.batch * args.iters / (time.perf_counter() - t0))
    peak_bf16, peak_fp32 = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    base = {k: statistics.median(times["fp32 NCHW"][k]) for k in ("train", "sample")}
    rows = []
    print(
        f"preset {args.preset}: {variants['fp32 NCHW'][2] / 1e6:.2f}M parameters, "
        f"batch {args.batch}, {args.threads} threads; matmul peak bf16 "
        f"{peak_bf16 / 1e9:.0f} GFLOP/s, fp32 {peak_fp32 / 1e9:.0f}"
    )
    print(
        f"{'variant':30s} {'params':>7s} {'train img/s':>12s} {'ratio':>6s} {'GFLOP/s':>8s} "
        f"{'sample img/s':>13s} {'ratio':>6s}"
    )
    for name, (_, _, n_params) in variants.items():
        tr_ips = statistics.median(times[name]["train"])
        sa_ips = statistics.median(times[name]["sample"])
        gflops = tr_ips / args.batch * train_flops[name] / 1e9
        rows.append(
            {
                "variant": name,
                "params": n_params,
                "train_images_per_s": tr_ips,
                "train_ratio": tr_ips / base["train"],
                "train_gflops": gflops,
                "sample_images_per_s": sa_ips,
                "sample_ratio": sa_ips / base["sample"],
            }
        )
        print(
            f"{name:30s} {n_params / 1e6:6.2f}M {tr_ips:12.0f} {tr_ips / base['train']:6.2f} "
            f"{gflops:8.0f} {sa_ips:13.0f} {sa_ips / base['sample']:6.2f}"
        )
    result = {
        "preset": args.preset,
        "batch": args.batch,
        "threads": args.threads,
        "rows": rows,
        "train_flops_per_step": train_flops,
        "sample_flops_per_call": sample_flops,
        "matmul_peak_bf16": peak_bf16,
        "matmul_peak_fp32": peak_fp32,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
