"""Attention on a CPU: SDPA's fused kernel, SDPA's math kernel and plain matmul + softmax.

    .venv/bin/python benchmarks/bench_attention.py --threads 1 \
        --json benchmarks/results/attention_1thread.json

The measurement behind the rule in ``ddpmkit.nn.blocks.attention`` (bf16 on a CPU at up to
``PLAIN_ATTENTION_MAX_LEN`` positions runs as :func:`~ddpmkit.nn.blocks.plain_attention`).
For each sequence length (with the batch the U-Nets use there: 7x7 and 8x8 maps at batch 128,
14x14 and 16x16 at batch 32, 32x32 at batch 8), 4 heads of 32 channels, bf16 and fp32: the time
of one forward + backward (training) and of one forward under ``inference_mode`` (sampling),
best of ``--rounds`` interleaved rounds of ``--iters`` calls each.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from ddpmkit.nn.blocks import plain_attention

CASES = [(128, 49), (128, 64), (32, 196), (32, 256), (8, 1024)]  # (batch, length)


def fused(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v)


def math_kernel(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v)


KERNELS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "fused": fused,
    "math": math_kernel,
    "plain": plain_attention,
}


def time_ms(fn: Callable[[], object], iters: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters * 1e3


def measure(dtype: torch.dtype, batch: int, length: int, rounds: int, iters: int) -> dict:
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(batch, 4, length, 32, generator=g).to(dtype).requires_grad_() for _ in range(3)
    )
    grad = torch.randn(batch, 4, length, 32, generator=g).to(dtype)
    best: dict[str, dict[str, float]] = {n: {"train": 1e9, "sample": 1e9} for n in KERNELS}
    for r in range(rounds):
        for name in list(KERNELS)[r % 3 :] + list(KERNELS)[: r % 3]:  # rotated order
            fn = KERNELS[name]

            def train(fn: Callable[[Tensor, Tensor, Tensor], Tensor] = fn) -> None:
                fn(q, k, v).backward(grad)

            def sample(fn: Callable[[Tensor, Tensor, Tensor], Tensor] = fn) -> None:
                with torch.inference_mode():
                    fn(q, k, v)

            best[name]["train"] = min(best[name]["train"], time_ms(train, iters))
            best[name]["sample"] = min(best[name]["sample"], time_ms(sample, iters))
    return {"batch": batch, "length": length, "ms": best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, list[dict]] = {}
    for dtype in (torch.bfloat16, torch.float32):
        name = str(dtype).removeprefix("torch.")
        results[name] = []
        print(f"{name}: ms per call, best of {args.rounds} rounds (fused / math / plain)")
        for batch, length in CASES:
            row = measure(dtype, batch, length, args.rounds, args.iters)
            results[name].append(row)
            ms = row["ms"]
            cells = [" / ".join(f"{ms[n][part]:6.1f}" for n in KERNELS) for part in ms["fused"]]
            print(f"  L={length:5d} batch {batch:3d}: train {cells[0]}   sample {cells[1]}")
    if args.json:
        out = {
            "torch": torch.__version__,
            "threads": args.threads,
            "heads": 4,
            "head_dim": 32,
            "kernels": list(KERNELS),
            "results": results,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
