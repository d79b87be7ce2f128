"""Peak memory (RSS) of ddpmkit's training step, with and without activation checkpointing.

    .venv/bin/python benchmarks/bench_memory.py
    .venv/bin/python benchmarks/bench_memory.py --json benchmarks/results/memory.json
    .venv/bin/python benchmarks/bench_memory.py --only fashion --steps 3

Every configuration runs in a fresh subprocess (so one cannot inherit another's heap): it
builds the U-Net, optimizer and EMA (as the trainer does), takes ``--steps`` training steps of
``benchmarks/steps.py``'s copy of the trainer's step on a synthetic uint8 dataset, and reports
VmHWM (the peak resident set size) from ``/proc/self/status``, also read once before the first
step (the baseline: Python, torch, model, optimizer, EMA, data). Precision: bf16 autocast where
the CPU has native bf16 (what ``train.precision = "auto"`` picks), else fp32; ``--fp32`` forces
fp32. Time per step is reported too: checkpointing recomputes the forward pass of the blocks.

Allocator: peak RSS depends on glibc malloc as much as on the tensors: freed activations stay
in the heap when it is fragmented. ``--mmap-threshold 131072`` runs the children with
``MALLOC_MMAP_THRESHOLD_=131072`` (large blocks always mmapped, so returned to the system when
freed), which shows how much of the peak is allocator slack.

Configurations: the fashion_mnist preset (28x28x1, batch 128); the folder64 preset's U-Net at
64x64x3 (batch 64) and, with the same architecture, at 128x128x3 (batch 32), each with and
without ``model.checkpointing``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace

CONFIGS: dict[str, tuple[str, int, int, bool]] = {  # name: (model, image size, batch, ckpt)
    "fashion": ("fashion", 28, 128, False),
    "fashion_ckpt": ("fashion", 28, 128, True),
    "rgb64": ("folder64", 64, 64, False),
    "rgb64_ckpt": ("folder64", 64, 64, True),
    "rgb128": ("folder64", 128, 32, False),
    "rgb128_ckpt": ("folder64", 128, 32, True),
}


def vm_hwm_bytes() -> int:
    """Peak resident set size of this process (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(name: str, steps: int, fp32: bool, threads: int) -> None:
    import torch
    from bench_vs_diffusers import FASHION, FOLDER64
    from steps import ours

    torch.set_num_threads(threads)
    model, size, batch, ckpt = CONFIGS[name]
    cfg = replace(FASHION if model == "fashion" else FOLDER64, image_size=size)
    bf16 = not fp32 and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    st = ours(name, cfg, batch=batch, sample_batch=1, bf16=bf16, checkpointing=ckpt)
    base = vm_hwm_bytes()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        st.train()
        times.append(time.perf_counter() - t0)
    out = {
        "config": name,
        "model": model,
        "image": f"{cfg.in_channels}x{size}x{size}",
        "batch": batch,
        "checkpointing": ckpt,
        "precision": "bf16" if bf16 else "fp32",
        "params": st.params,
        "baseline_rss_bytes": base,
        "peak_rss_bytes": vm_hwm_bytes(),
        "step_s": times,
    }
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fp32", action="store_true")
    ap.add_argument("--mmap-threshold", type=int, default=0, help="MALLOC_MMAP_THRESHOLD_ (0: off)")
    ap.add_argument("--json", default=None, metavar="OUT")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.steps, args.fp32, args.threads)
        return
    here = os.path.dirname(os.path.abspath(__file__))
    rows = []
    gib = 2.0**30
    print(f"{'config':12s} {'image':>9s} {'batch':>5s} {'ckpt':>5s} {'prec':>4s} "
          f"{'baseline':>9s} {'peak RSS':>9s} {'step s':>7s}")  # fmt: skip
    for name in args.only.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown config {name!r}; expected some of {list(CONFIGS)}")
        cmd = [sys.executable, os.path.join(here, "bench_memory.py"), "--child", name]
        cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
        cmd += ["--fp32"] if args.fp32 else []
        env = dict(os.environ)
        if args.mmap_threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"{name}: child failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        row = json.loads(lines[-1][len("RESULT ") :])
        rows.append(row)
        print(
            f"{name:12s} {row['image']:>9s} {row['batch']:5d} {str(row['checkpointing']):>5s} "
            f"{row['precision']:>4s} {row['baseline_rss_bytes'] / gib:8.2f}G "
            f"{row['peak_rss_bytes'] / gib:8.2f}G {min(row['step_s']):7.1f}",
            flush=True,
        )
    if args.json:
        import torch

        out = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": " ".join(sys.argv),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "threads": args.threads,
            "steps": args.steps,
            "malloc_mmap_threshold": args.mmap_threshold or None,
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
