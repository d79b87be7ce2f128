"""Regenerate every figure in docs/figures from the project's own code.

    .venv/bin/python scripts/make_docs_figures.py [--fmnist-run RUN_DIR] [--s-curve-run RUN_DIR]

Without --s-curve-run it trains the S-curve preset (about a minute). Fashion-MNIST figures
(samples by class, reverse process, loss, grids over training) need a trained run folder, e.g.
the README's main job: --fmnist-run runs/fashion_mnist.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from ddpmkit.cli import main as ddpm

FIG = Path(__file__).resolve().parents[1] / "docs" / "figures"


def run(*args: str) -> None:
    code = ddpm(list(args))
    if code != 0:
        raise SystemExit(f"ddpm {' '.join(args)} failed with {code}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--fmnist-run", default=None)
    ap.add_argument("--s-curve-run", default=None)
    args = ap.parse_args()
    FIG.mkdir(parents=True, exist_ok=True)
    run("plot", "schedules", "--out", str(FIG / "schedules.png"))
    run("plot", "forward", "--dataset", "fashion_mnist", "--index", "1",
        "--schedule", "linear", "--schedule", "cosine", "--schedule", "quadratic",
        "--schedule", "sigmoid", "--out", str(FIG / "forward_fashion.png"))  # fmt: skip
    run("plot", "forward", "--dataset", "s_curve", "--schedule", "sigmoid", "--steps", "100",
        "--out", str(FIG / "s_curve_forward.png"))  # fmt: skip
    tmp = Path(tempfile.mkdtemp())
    s_run = Path(args.s_curve_run) if args.s_curve_run else tmp / "s_curve"
    if not args.s_curve_run:
        run("train", "s_curve", "--out", str(s_run), "--no-progress")
    shutil.copyfile(s_run / "reverse_process.png", FIG / "s_curve_reverse.png")
    shutil.copyfile(s_run / "data_vs_samples.png", FIG / "s_curve_samples.png")
    run("plot", "loss", str(s_run), "--out", str(FIG / "s_curve_loss.png"))
    if args.fmnist_run:
        f = Path(args.fmnist_run)
        run("sample", str(f), "--grid-by-class", "--num", "8", "--guidance", "2",
            "--sampler", "dpmpp", "--steps", "20", "--out", str(tmp / "fm"))  # fmt: skip
        shutil.copyfile(tmp / "fm" / "grid.png", FIG / "fashion_grid.png")
        run(
            "plot",
            "reverse",
            str(f),
            "--num",
            "4",
            "--label",
            "0",
            "--out",
            str(FIG / "fashion_reverse.png"),
        )
        run("plot", "loss", str(f), "--out", str(FIG / "fashion_loss.png"))
        run("plot", "grids", str(f), "--out", str(FIG / "fashion_grids_over_training.png"))
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"figures in {FIG}")


if __name__ == "__main__":
    main()
