"""Measured peak FLOP/s of this CPU (torch's kernels) for matmul and 3x3 convolution.

    .venv/bin/python benchmarks/bench_peak.py
    .venv/bin/python benchmarks/bench_peak.py --threads 2 --json benchmarks/results/peak.json

The denominators for "% of peak" in the other benchmarks: a large square matmul (default
2048^3) and 3x3 convolutions of U-Net shapes (forward), each in fp32 and bf16 (bf16 inputs and
weights, as under autocast), NCHW and channels_last. Every kernel is timed in several
interleaved rounds and the *best* round is kept (a peak, not a typical rate: the machine is
shared, so the best round is the one least disturbed). FLOPs: 2 m n k for a matmul,
2 * B * C_out * H_out * W_out * C_in * kh * kw for a convolution (multiply-adds counted twice,
as torch.utils.flop_counter does).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["conv_flops", "measure_peaks"]


def conv_flops(b: int, c_in: int, c_out: int, h: int, w: int, k: int = 3) -> int:
    """FLOPs of a stride-1, same-padding k x k conv on (b, c_in, h, w) -> (b, c_out, h, w)."""
    return 2 * b * c_out * h * w * c_in * k * k


def _best_rate(fn: Callable[[], object], flops: int, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return flops * reps / (time.perf_counter() - t0)


def _kernels(n: int, bf16: bool = True) -> dict[str, tuple[Callable[[], object], int]]:
    out: dict[str, tuple[Callable[[], object], int]] = {}
    dtypes = ((torch.float32, "fp32"), (torch.bfloat16, "bf16"))
    for dt, dname in dtypes if bf16 else dtypes[:1]:
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        out[f"matmul {n}^3 {dname}"] = ((lambda a=a, b=b: a @ b), 2 * n**3)
        # (batch, c_in, c_out, side): the 28x28 and 64x64 U-Nets' largest convs
        for bsz, cin, cout, side in ((128, 64, 64, 14), (128, 128, 128, 7), (32, 128, 128, 32)):
            for fmt, fname in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "NHWC")):
                x = torch.randn(bsz, cin, side, side, dtype=dt).contiguous(memory_format=fmt)
                w = torch.randn(cout, cin, 3, 3, dtype=dt).contiguous(memory_format=fmt)
                key = f"conv3x3 {bsz}x{cin}x{side}x{side}->{cout} {fname} {dname}"
                out[key] = (
                    (lambda x=x, w=w: F.conv2d(x, w, padding=1)),
                    conv_flops(bsz, cin, cout, side, side),
                )
    return out


def measure_peaks(
    n: int = 2048, rounds: int = 5, seconds: float = 0.3, bf16: bool | None = None
) -> dict[str, float]:
    """{kernel name: best measured FLOP/s}; see the module docstring.

    ``bf16``: also the bf16 kernels; None = only where the CPU has native bf16 (emulated bf16
    kernels take minutes on an AVX2 CPU and are no peak of anything the library runs there).
    """
    if bf16 is None:
        from ddpmkit.nn.compute_path import cpu_has_native_bf16

        bf16 = cpu_has_native_bf16()
    kernels = _kernels(n, bf16)
    reps: dict[str, int] = {}
    for name, (fn, _flops) in kernels.items():  # warm-up, and reps to take about `seconds`
        fn()
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, int(seconds / max(time.perf_counter() - t0, 1e-6)))
    best: dict[str, float] = dict.fromkeys(kernels, 0.0)
    for _ in range(rounds):
        for name, (fn, flops) in kernels.items():
            best[name] = max(best[name], _best_rate(fn, flops, reps[name]))
    return best


def summary(best: dict[str, float]) -> dict[str, float]:
    """The four denominators: best matmul and best conv, each in fp32 and bf16 (FLOP/s)."""
    out = {}
    for kind in ("matmul", "conv3x3"):
        for dt in ("fp32", "bf16"):
            vals = [v for k, v in best.items() if k.startswith(kind) and k.endswith(dt)]
            if vals:
                out[f"{kind}_{dt}"] = max(vals)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=2048, help="matmul side")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None, metavar="OUT")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    best = measure_peaks(args.n, args.rounds)
    print(
        f"torch {torch.__version__}, {args.threads} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; best of {args.rounds} interleaved rounds"
    )
    for name, v in best.items():
        print(f"{name:45s} {v / 1e9:8.0f} GFLOP/s")
    peaks = summary(best)
    print("peaks: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()) + " GFLOP/s")
    if args.json:
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": args.threads,
            "rounds": args.rounds,
            "kernels_flops_per_s": best,
            "peaks_flops_per_s": peaks,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
