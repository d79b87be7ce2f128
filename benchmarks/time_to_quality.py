"""Time to quality: diffusers' unconditional example recipe on Fashion-MNIST, for a time budget.

The other half of the race is ``ddpm train`` itself (the default preset). Run both side by side,
one thread each, so they share the machine equally, then score both with ``ddpm eval``:

    .venv/bin/ddpm train --out runs/race_ours --set train.num_threads=1 &
    .venv/bin/python benchmarks/time_to_quality.py train --out runs/race_diffusers --threads 1
    .venv/bin/python benchmarks/time_to_quality.py sample runs/race_diffusers --num 1000 \\
        --steps 50 --out runs/race_diffusers/ddim50.npz
    .venv/bin/ddpm eval runs/race_diffusers/ddim50.npz --dataset fashion_mnist --out ...
    .venv/bin/ddpm eval runs/race_ours --num 1000 --guidance 1 --out ...
    .venv/bin/python benchmarks/time_to_quality.py report --ours runs/race_ours \\
        --theirs runs/race_diffusers --evals EVAL_DIRS... --out benchmarks/results/...json
    .venv/bin/python benchmarks/time_to_quality.py figure --ours runs/race_ours \\
        --theirs-npz runs/race_diffusers/ddim50.npz --ours-steps 457 --theirs-steps 274 \\
        --out docs/figures/time_to_quality.png

``train`` runs the training step of diffusers'
``examples/unconditional_image_generation/train_unconditional.py`` with its defaults (it is
``steps.theirs`` on the real training images, see there): ``UNet2DModel`` with
block_out_channels (32, 64, 128), attention at 7x7, one layer per block (2.73M parameters,
the smallest at these widths), ``DDPMScheduler(1000, "linear")``, fp32, AdamW(lr 1e-4, betas
0.95/0.999, weight decay 1e-6),
cosine LR schedule with 500 warm-up steps over the example's 100 epochs, grad-norm clip 1,
random horizontal flips (as our preset), batch 128 (the issue's configuration; the example's
default is 16). The example's EMA is off by default; we keep an EMA with its ``--use_ema``
settings (``EMAModel`` warm-up: decay 1 - (1 + step)^-3/4, at most 0.9999) on the side and save
both weights, so the comparison can use whichever is better for diffusers.

``sample`` draws with diffusers' own ``DDIMScheduler`` (the example's pipeline uses 1000 DDPM
steps; DDIM at 50-100 steps is the usual cheaper choice and what fits here) and writes an
``.npz`` that ``ddpm eval`` reads (uint8 ``images``).

Needs the optional dependency ``pip install -e .[bench]`` (diffusers).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from steps import diffusers_unet, theirs

from ddpmkit.data.images import from_model_range
from ddpmkit.data.registry import load_dataset

BATCH = 128
EPOCHS = 100  # the example's default --num_epochs: the horizon of its cosine LR schedule


def ema_decay(step: int, max_decay: float = 0.9999, power: float = 0.75) -> float:
    """diffusers ``EMAModel`` warm-up decay: 1 - (1 + step)^-power, capped at ``max_decay``."""
    if step <= 0:
        return 0.0
    return min(max_decay, 1.0 - (1.0 + step) ** -power)


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    data = load_dataset("fashion_mnist", split="train").images  # uint8 (60000, 1, 28, 28)
    torch.manual_seed(args.seed)  # the model's initialisation
    model = diffusers_unet(1, 28, (32, 64, 128), (False, False, True), 1)
    total = EPOCHS * math.ceil(len(data) / BATCH)
    step_fn = theirs(
        "diffusers", model, 1, 28, batch=BATCH, seed=args.seed, data=data, total_steps=total
    )
    ema = copy.deepcopy(model).requires_grad_(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "log.jsonl").open("w")
    t0 = time.perf_counter()
    deadline = t0 + 60 * args.minutes
    step = 0
    while time.perf_counter() < deadline:
        loss = step_fn.train()
        step += 1
        d = ema_decay(step)
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1.0 - d)
        if step % 50 == 0:
            rec = {
                "step": step,
                "loss": float(torch.as_tensor(loss)),
                "elapsed_s": time.perf_counter() - t0,
            }
            log.write(json.dumps(rec) + "\n")
            log.flush()
    elapsed = time.perf_counter() - t0
    torch.save(model.state_dict(), out / "raw.pt")
    torch.save(ema.state_dict(), out / "ema.pt")
    summary = {
        "steps": step,
        "images_seen": step * BATCH,
        "elapsed_s": elapsed,
        "threads": args.threads,
        "params": sum(p.numel() for p in model.parameters()),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


@torch.inference_mode()
def sample(args: argparse.Namespace) -> None:
    from diffusers import DDIMScheduler

    torch.set_num_threads(args.threads)
    model = diffusers_unet(1, 28, (32, 64, 128), (False, False, True), 1)
    model.load_state_dict(torch.load(Path(args.run) / f"{args.weights}.pt", weights_only=True))
    model.eval()
    sched = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", timestep_spacing=args.spacing
    )
    sched.set_timesteps(args.steps)
    gen = torch.Generator().manual_seed(args.seed)
    chunks = []
    for start in range(0, args.num, args.batch):
        n = min(args.batch, args.num - start)
        x = torch.randn((n, 1, 28, 28), generator=gen)
        for t in sched.timesteps:
            eps = model(x, t.expand(n)).sample
            x = sched.step(eps, t, x).prev_sample  # eta 0, clip_sample (diffusers default)
        chunks.append(from_model_range(x))
    images = torch.cat(chunks).numpy().astype(np.uint8)
    np.savez(args.out, images=images)
    print(f"{args.out}: {images.shape}")


def report(args: argparse.Namespace) -> None:
    """Collect both runs and their ``ddpm eval`` reports into one results file."""
    ours_run, theirs_run = Path(args.ours), Path(args.theirs)
    metrics_lines = (ours_run / "metrics.jsonl").read_text().splitlines()
    ours_log = [json.loads(x) for x in metrics_lines if x.strip()]
    keys = ("fd", "precision", "recall", "inception_score", "class_accuracy", "fd_real_floor")
    evals = {}
    ours_steps = max(r["step"] for r in ours_log)
    for path in args.evals:
        rep = json.loads((Path(path) / "eval.json").read_text())
        m = {k: rep["metrics"][k] for k in keys if k in rep["metrics"]}
        evals[Path(path).name] = {"metrics": m, "samples": rep["samples"]}
        if rep["source"].get("path") == str(ours_run) and "step" in rep["source"]:
            ours_steps = int(rep["source"]["step"])  # the final step (the log is every 50)
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "ours": {
            "run": str(ours_run),
            "steps": ours_steps,
            "last_log": ours_log[-1],
        },
        "diffusers": {
            "run": str(theirs_run),
            **json.loads((theirs_run / "summary.json").read_text()),
        },
        "evals": evals,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


def figure(args: argparse.Namespace) -> None:
    """Two rows of 10 samples: ours (one per class, DPM-Solver++ 20 steps, w = 1) above
    diffusers' (the first 10 of its ``.npz``), with the steps each reached in the budget."""
    import tempfile

    from ddpmkit.cli import main as ddpm
    from ddpmkit.viz.grid import grid_with_row_labels

    with tempfile.TemporaryDirectory() as tmp:
        rc = ddpm(["sample", args.ours, "--num", "10", "--seed", "0", "--out", tmp])
        if rc != 0:
            raise SystemExit(f"ddpm sample {args.ours} failed")
        with np.load(Path(tmp) / "samples.npz") as z:
            ours = np.array(z["images"][:10])
    with np.load(args.theirs_npz) as z:
        theirs = np.array(z["images"][:10])
    grid_with_row_labels(
        np.concatenate([ours, theirs]),
        10,
        [f"ddpmkit, {args.ours_steps} steps", f"diffusers, {args.theirs_steps} steps"],
        args.out,
        upscale=2,
    )
    print(f"wrote {args.out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=15.0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=train)
    s = sub.add_parser("sample")
    s.add_argument("run")
    s.add_argument("--weights", choices=("raw", "ema"), default="ema")
    s.add_argument("--num", type=int, default=1000)
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--spacing", default="trailing", choices=("leading", "trailing", "linspace"))
    s.add_argument("--batch", type=int, default=250)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=sample)
    r = sub.add_parser("report")
    r.add_argument("--ours", required=True, help="ddpmkit run folder")
    r.add_argument("--theirs", required=True, help="this script's train --out folder")
    r.add_argument("--evals", nargs="+", required=True, help="ddpm eval --out folders")
    r.add_argument("--out", required=True, help="results JSON")
    r.set_defaults(fn=report)
    f = sub.add_parser("figure")
    f.add_argument("--ours", required=True, help="ddpmkit run folder")
    f.add_argument("--theirs-npz", required=True, help="this script's sample --out file")
    f.add_argument("--ours-steps", type=int, required=True)
    f.add_argument("--theirs-steps", type=int, required=True)
    f.add_argument("--out", required=True, help="PNG")
    f.set_defaults(fn=figure)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
