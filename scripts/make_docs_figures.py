"""Regenerate every figure in docs/figures from the project's own code (the ``ddpm`` commands).

    .venv/bin/python scripts/make_docs_figures.py [--fmnist-run RUN_DIR] [--s-curve-run RUN_DIR]
        [--text-run RUN_DIR [--only-text] [--text-guidance W]]

Always: the schedules, the forward process of a Fashion-MNIST image under the four schedules
and of the S-curve. Then it trains the S-curve preset (``ddpm train s_curve``, one to two
minutes on 2 CPU cores) unless ``--s-curve-run`` gives a trained run, and takes its reverse
process, data-vs-samples and loss figures. The Fashion-MNIST figures (samples by class, grids
over training, reverse process) need a trained run folder, e.g. the README's main job:
``--fmnist-run runs/fashion_mnist``; without it the existing ones are kept. The text-to-image
figure (``ddpm plot prompts``: rows of ``TEXT_PROMPTS``, the same noise in every column) needs
a trained ``fashion_text`` run, ``--text-run runs/fashion_text``; ``--only-text`` makes only it.

Finally every PNG in docs/figures is re-encoded to stay small (< 300 KB,
checked by tests/test_docs.py): plots are reduced to a 256-colour palette (they have few
colours), and grayscale sample sheets above the limit to fewer gray levels.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from ddpmkit.cli import main as ddpm
from ddpmkit.viz.grid import atomic_save

FIG = Path(__file__).resolve().parents[1] / "docs" / "figures"
LIMIT = 290_000  # bytes; the docs test allows 300 KB


# Rows of the text figure: held-out phrasings of single garments (one with an attribute), a
# training pair in a training and in a held-out phrasing, a held-out pair, and a held-out pair
# with its words swapped (docs/tour.md, "From a prompt to a grid").
TEXT_PROMPTS = (
    "an image of a sneaker",
    "a black and white photo of a handbag",
    "an image of a dark coat",
    "a dress to the left of an ankle boot",
    "a dress left of an ankle boot",
    "a pair of trousers to the left of a sneaker",
    "a bag to the left of a sandal",
    "a sandal to the left of a bag",
)


def text_figure(text_run: str, guidance: str | None = None) -> None:
    """docs/figures/text_prompts.png from a trained fashion_text run (6 columns); ``guidance``
    overrides the run's own ``sample.guidance`` (e.g. a run trained before the preset's
    guidance changed)."""
    prompts = [a for p in TEXT_PROMPTS for a in ("--prompt", p)]
    extra = ["--guidance", guidance] if guidance is not None else []
    run("plot", "prompts", text_run, *prompts, "--num", "6", *extra,
        "--out", str(FIG / "text_prompts.png"))  # fmt: skip
    print(f"text_prompts.png: {compact_png(FIG / 'text_prompts.png') / 1000:.0f} KB")


def run(*args: str) -> None:
    print("ddpm", " ".join(args), flush=True)
    code = ddpm(list(args))
    if code != 0:
        raise SystemExit(f"ddpm {' '.join(args)} failed with {code}")


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def compact_png(path: Path) -> int:
    """Re-encode ``path`` smaller if possible (see the module docstring); returns its size."""
    with Image.open(path) as opened:
        im = opened.copy()
    best = path.read_bytes()
    if im.mode == "L":
        candidates = [_png_bytes(im)]
        levels = 128
        while len(min(candidates, key=len)) > LIMIT and levels >= 32:
            k = levels - 1  # posterize: `levels` evenly spaced gray levels, 0 and 255 kept
            candidates.append(_png_bytes(im.point(lambda v, k=k: round(v * k / 255) * 255 // k)))
            levels //= 2
    else:
        rgb = im.convert("RGBA")
        flat = Image.new("RGB", rgb.size, "white")
        flat.paste(rgb, mask=rgb.getchannel("A"))
        candidates = [_png_bytes(flat.quantize(256, method=Image.Quantize.MEDIANCUT))]
    smallest = min(candidates, key=len)
    if len(smallest) < len(best):
        atomic_save(path, lambda f: f.write(smallest))
        return len(smallest)
    return len(best)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--fmnist-run", default=None, help="a trained Fashion-MNIST run folder")
    ap.add_argument("--s-curve-run", default=None, help="a trained S-curve run folder")
    ap.add_argument("--text-run", default=None, help="a trained fashion_text run folder")
    ap.add_argument("--only-text", action="store_true", help="only the text figure")
    ap.add_argument("--text-guidance", default=None, help="the text figure's guidance scale")
    args = ap.parse_args()
    FIG.mkdir(parents=True, exist_ok=True)
    if args.text_run:
        text_figure(args.text_run, args.text_guidance)
    if args.only_text:
        return
    run("plot", "schedules", "--out", str(FIG / "schedules.png"))
    run("plot", "forward", "--dataset", "fashion_mnist", "--index", "1",
        "--schedule", "linear", "--schedule", "cosine", "--schedule", "quadratic",
        "--schedule", "sigmoid", "--out", str(FIG / "forward_fashion.png"))  # fmt: skip
    run("plot", "forward", "--dataset", "s_curve", "--schedule", "sigmoid", "--steps", "100",
        "--out", str(FIG / "s_curve_forward.png"))  # fmt: skip
    tmp = Path(tempfile.mkdtemp())
    try:
        s_run = Path(args.s_curve_run) if args.s_curve_run else tmp / "s_curve"
        if not args.s_curve_run:
            run("train", "s_curve", "--out", str(s_run), "--no-progress")
        shutil.copyfile(s_run / "reverse_process.png", FIG / "s_curve_reverse.png")
        shutil.copyfile(s_run / "data_vs_samples.png", FIG / "s_curve_samples.png")
        run("plot", "loss", str(s_run), "--out", str(FIG / "s_curve_loss.png"))
        if args.fmnist_run:
            f = args.fmnist_run
            # the run's own [sample] section: the preset's sampler, steps and guidance
            run("sample", f, "--grid-by-class", "--num", "8", "--out", str(tmp / "fm"))
            shutil.copyfile(tmp / "fm" / "grid.png", FIG / "fashion_grid.png")
            run("plot", "reverse", f, "--num", "4", "--label", "0",
                "--out", str(FIG / "fashion_reverse.png"))  # fmt: skip
            grids = FIG / "fashion_grids_over_training.png"
            run("plot", "grids", f, "--out", str(grids))
            # four grids side by side: gray, at most 1,600 px wide, to stay under the size limit
            with Image.open(grids) as im:
                scale = min(1.0, 1600 / im.width)
                size = (round(im.width * scale), round(im.height * scale))
                im.convert("L").resize(size, Image.LANCZOS).save(grids)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for png in sorted(FIG.glob("*.png")):
        print(f"{png.name}: {compact_png(png) / 1000:.0f} KB")
    print(f"figures in {FIG}")


if __name__ == "__main__":
    main()
