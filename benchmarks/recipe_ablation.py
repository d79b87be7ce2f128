"""Recipe ablation at equal wall-clock: each arm a real ``ddpm train`` of the same minutes,
scored by ``ddpm eval`` (the model's own sampler and guidance), one arm at a time.

    .venv/bin/python benchmarks/recipe_ablation.py --minutes 6 --num 500 \\
        --json benchmarks/results/recipe_ablation_avx2.json            # every arm, in order
    .venv/bin/python benchmarks/recipe_ablation.py --arms base,bs64 --minutes 6 --num 500
    .venv/bin/python benchmarks/recipe_ablation.py --collect runs/ablation --json out.json

Every arm starts from the *earlier* fashion preset (the ``base`` arm: base 32, mults 1,2,2, two
ResBlocks per level, batch 128, eps-prediction) and changes what its overrides say; the arm's
command is printed and stored with its row. Runs go to ``--runs`` (default runs/ablation/ARM),
evaluations to ARM/eval. On a 2-core machine run nothing else meanwhile: the arms compete for
the same minutes. ``--collect`` only reads finished arms (train + eval) into the table/JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

# The earlier preset (before issue 13), which every arm starts from.
BASE = [
    "model.patch_size=1",
    "model.base_channels=32",
    "model.channel_mults=[1,2,2]",
    "model.num_res_blocks=2",
    'diffusion.prediction="eps"',
    "train.batch_size=128",
    "train.warmup_steps=200",
    "train.sample_every=0",
    "train.preview_every_min=0",
]
B64 = ["train.batch_size=64", "train.warmup_steps=100"]
P2B48 = ["model.patch_size=2", "model.base_channels=48", "model.channel_mults=[1,2]"]
P2B64 = ["model.patch_size=2", "model.base_channels=64", "model.channel_mults=[1,1]"]
ARMS: dict[str, list[str]] = {
    "base": [],
    "bs64": B64,
    "bs64_rb1": [*B64, "model.num_res_blocks=1"],
    "bs64_p2b48": [*B64, *P2B48],
    "bs64_p2b64m11": [*B64, *P2B64],
    "bs32_p2b48": ["train.batch_size=32", "train.warmup_steps=100", *P2B48],
    "bs64_p2b64m11_rb1": [*B64, *P2B64, "model.num_res_blocks=1"],
    "bs64_p2b64m11_v": [*B64, *P2B64, 'diffusion.prediction="v"'],
    "preset": ["train.sample_every=0"],  # the current preset unchanged (no BASE)
}


def train_command(arm: str, minutes: float, runs: Path) -> list[str]:
    sets = ARMS[arm] if arm == "preset" else [*BASE, *ARMS[arm]]
    cmd = [".venv/bin/ddpm", "train", "fashion_mnist", "--out", str(runs / arm), "--no-progress"]
    for s in [*sets, f"train.time_limit_min={minutes}"]:
        cmd += ["--set", s]
    return cmd


def eval_command(arm: str, num: int, runs: Path) -> list[str]:
    return [
        ".venv/bin/ddpm", "eval", str(runs / arm), "--num", str(num), "--dataset",
        "fashion_mnist", "--bpd-images", "0", "--memorisation", "0",
        "--out", str(runs / arm / "eval"),
    ]  # fmt: skip


def collect(arm: str, runs: Path) -> dict[str, object] | None:
    """The row of a finished arm: steps, images/s, the eval metrics; None if unfinished."""
    run, ev = runs / arm, runs / arm / "eval" / "eval.json"
    if not ev.is_file() or not (run / "model" / "config.json").is_file():
        return None
    meta = json.loads((run / "model" / "config.json").read_text())
    recs = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    rates = [r["images_per_s"] for r in recs[1:]] or [recs[0]["images_per_s"]]
    report = json.loads(ev.read_text())
    m, s = report["metrics"], report["samples"]
    cfg = meta["config"]
    return {
        "arm": arm,
        "overrides": ARMS.get(arm),
        "steps": meta.get("step"),
        "images_per_s": sum(rates) / len(rates),
        "batch_size": cfg["train"]["batch_size"],
        "model": {
            "patch_size": cfg["model"].get("patch_size", 1),  # runs before patch_size: 1
            **{k: cfg["model"][k] for k in ("base_channels", "channel_mults", "num_res_blocks")},
        },
        "prediction": cfg["diffusion"]["prediction"],
        "eval_num": s["num"],
        "guidance": s["guidance"],
        "sampler": f"{s['sampler']} {s['steps']} ({s['spacing']})",
        "fd": m["fd"],
        "precision": m["precision"],
        "recall": m["recall"],
        "class_accuracy": m.get("class_accuracy"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--arms", default=",".join(a for a in ARMS if a != "preset"))
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--num", type=int, default=500, help="samples per ddpm eval")
    ap.add_argument("--runs", default="runs/ablation")
    ap.add_argument("--collect", default=None, metavar="RUNS", help="only read finished arms")
    ap.add_argument("--json", default=None, metavar="OUT")
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; expected some of {list(ARMS)}")
    runs = Path(args.collect or args.runs)
    rows = []
    for arm in arms:
        if not args.collect:
            for cmd in (train_command(arm, args.minutes, runs), eval_command(arm, args.num, runs)):
                print("+", shlex.join(cmd), flush=True)
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        row = collect(arm, runs)
        if row is None:
            print(f"{arm}: not finished in {runs}", file=sys.stderr)
            continue
        row["command"] = shlex.join(train_command(arm, args.minutes, Path(args.runs)))
        rows.append(row)
        print(
            f"{arm:20s} steps {row['steps']:>5} {row['images_per_s']:6.1f} img/s  "
            f"FD {row['fd']:6.1f}  P {row['precision']:.2f}  R {row['recall']:.2f}  "
            f"acc {row['class_accuracy']:.2f}",
            flush=True,
        )
    if args.json:
        out = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": shlex.join(sys.argv),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "minutes": args.minutes,
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
