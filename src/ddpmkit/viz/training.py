"""Training figures: the loss curve from a metrics JSON-lines file, and a contact sheet of the
sample grids saved over training."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ddpmkit.viz._figure import new_figure, save_figure
from ddpmkit.viz.grid import load_font, save_pil, text_size

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = ["contact_sheet", "ema_smooth", "plot_loss_curve", "read_metrics"]

PathLike = str | os.PathLike[str]
QUARTER_KEYS = ("loss_q0", "loss_q1", "loss_q2", "loss_q3")
QUARTER_LABELS = (
    "t in [0, T/4) (least noise)",
    "t in [T/4, T/2)",
    "t in [T/2, 3T/4)",
    "t in [3T/4, T) (most noise)",
)


def read_metrics(path: PathLike) -> list[dict[str, object]]:
    """The JSON objects of a JSON-lines file. Blank lines, lines that are not JSON objects (a
    line still being written by a running trainer) are skipped. ValueError if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read metrics file {str(path)!r}: {e}") from None
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _series(records: list[dict[str, object]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records having a finite numeric ``step`` and ``key``."""
    steps, values = [], []
    for rec in records:
        s, v = rec.get("step"), rec.get(key)
        if isinstance(s, bool) or isinstance(v, bool):
            continue
        if isinstance(s, int | float) and isinstance(v, int | float) and math.isfinite(v):
            steps.append(float(s))
            values.append(float(v))
    return np.asarray(steps), np.asarray(values)


def ema_smooth(values: np.ndarray, smoothing: float) -> np.ndarray:
    """Debiased exponential moving average (as TensorBoard and Adam do): m_k / (1 - s^k)."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    out = np.empty(len(values), dtype=np.float64)
    m = 0.0
    for k, v in enumerate(values, start=1):
        m = smoothing * m + (1.0 - smoothing) * float(v)
        out[k - 1] = m / (1.0 - smoothing**k)
    return out


def plot_loss_curve(
    metrics_jsonl: PathLike, out_path: PathLike, smoothing: float = 0.98, dpi: float = 100
) -> Path:
    """Loss against step: raw (thin, transparent) and debiased-EMA smoothed, log y axis.

    Reads records with "step" and "loss"; if any record has "loss_q0".."loss_q3" (the loss by
    quarter of the t range) a second panel shows their smoothed curves. Returns ``out_path``.
    """
    records = read_metrics(metrics_jsonl)
    steps, loss = _series(records, "loss")
    if steps.size == 0:
        raise ValueError(f"no records with numeric 'step' and 'loss' in {str(metrics_jsonl)!r}")
    ema_smooth(loss[:0], smoothing)  # validates smoothing before any drawing
    quarters = [(k, lbl, *_series(records, k)) for k, lbl in zip(QUARTER_KEYS, QUARTER_LABELS)]
    quarters = [q for q in quarters if q[2].size > 0]
    fig = new_figure(13 if quarters else 7.5, 4.5)
    axes = fig.subplots(1, 2 if quarters else 1, squeeze=False)[0]
    ax = axes[0]
    ax.plot(steps, loss, color="tab:blue", lw=0.6, alpha=0.3, label="raw")
    ax.plot(steps, ema_smooth(loss, smoothing), color="tab:blue", lw=2.0,
            label=f"EMA (smoothing {smoothing:g}, debiased)")  # fmt: skip
    ax.set_title(f"Training loss (last smoothed: {ema_smooth(loss, smoothing)[-1]:.4g})")
    ax.set_ylabel("loss")
    panels = [ax]
    if quarters:
        qax = axes[1]
        colors = ("tab:green", "tab:olive", "tab:orange", "tab:red")
        for (_, label, qs, qv), color in zip(quarters, colors):
            qax.plot(qs, qv, color=color, lw=0.5, alpha=0.2)
            qax.plot(qs, ema_smooth(qv, smoothing), color=color, lw=1.8, label=label)
        qax.set_title("Loss by quarter of the timestep range (smoothed)")
        qax.set_ylabel("loss")
        panels.append(qax)
    for a in panels:
        ys = [ln.get_ydata() for ln in a.get_lines()]
        if all(np.all(np.asarray(y, dtype=np.float64) > 0) for y in ys):
            a.set_yscale("log")
            a.set_ylabel("loss (log scale)")
        a.set_xlabel("training step")
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=9)
    return save_figure(fig, out_path, dpi)


def contact_sheet(
    grid_pngs: Sequence[PathLike],
    out_path: PathLike,
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
    max_height: int = 512,
    gap: int = 12,
) -> Path:
    """Sample grids saved over training, side by side (``ncols`` per row; default all in one
    row), each with its label above (default: the file name, e.g. "step 1000" is a good label).

    Images are scaled to a common height (the smallest one, at most ``max_height``; pixel art
    is scaled with nearest neighbour). PNG, atomic. ValueError if a file cannot be read.
    """
    from PIL import Image, ImageDraw, UnidentifiedImageError

    paths = [Path(p) for p in grid_pngs]
    if not paths:
        raise ValueError("grid_pngs is empty; give at least one image path")
    names = [p.stem for p in paths] if labels is None else [str(s) for s in labels]
    if len(names) != len(paths):
        raise ValueError(f"got {len(names)} labels for {len(paths)} images; give one per image")
    images: list[PILImage.Image] = []
    for p in paths:
        try:
            with Image.open(p) as opened:
                images.append(opened.convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise ValueError(f"cannot read image {str(p)!r}: {e}") from None
    height = min(min(im.height for im in images), max_height)
    scaled: list[PILImage.Image] = []
    for im in images:
        if im.height != height:
            w = max(1, round(im.width * height / im.height))
            up = height > im.height
            im = im.resize(
                (w, height), Image.Resampling.NEAREST if up else Image.Resampling.LANCZOS
            )
        scaled.append(im)
    ncols = len(scaled) if ncols is None else ncols
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be an integer >= 1, got {ncols!r}")
    font = load_font(int(min(max(height * 0.12, 18), 36)))
    label_h = max(text_size(font, s)[1] for s in [*names, "Ag"]) + max(4, gap // 2)
    col_w = max(im.width for im in scaled)
    rows = math.ceil(len(scaled) / ncols)
    cols = min(ncols, len(scaled))
    cell_h = label_h + height
    sheet = Image.new(
        "RGB", (cols * col_w + (cols + 1) * gap, rows * cell_h + (rows + 1) * gap), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for i, (im, name) in enumerate(zip(scaled, names)):
        r, c = divmod(i, ncols)
        x = gap + c * (col_w + gap)
        y = gap + r * (cell_h + gap)
        left, top, right, _ = font.getbbox(name)
        draw.text((x + (col_w - (right - left)) / 2 - left, y - top), name, fill="black", font=font)
        sheet.paste(im, (x + (col_w - im.width) // 2, y + label_h))
    return save_pil(sheet, out_path)
