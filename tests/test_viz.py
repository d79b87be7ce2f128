"""Figures: every function writes a valid file of the expected format and size."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.sampling import StepInfo, ddim_sample
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.viz import (
    TrajectoryRecorder,
    atomic_write_bytes,
    contact_sheet,
    grid_with_row_labels,
    make_grid,
    plot_data_vs_samples,
    plot_forward_2d,
    plot_forward_process,
    plot_loss_curve,
    plot_reverse_process,
    plot_schedules,
    save_grid,
    save_images,
    save_reverse_gif,
    to_uint8,
)

DPI = 40  # small figures keep the file fast


def u8(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def open_image(path: Path, fmt: str = "PNG") -> Image.Image:
    im = Image.open(path)
    assert im.format == fmt
    im.load()
    return im


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- grid.py


def test_make_grid_places_each_image_at_its_offset() -> None:
    n, c, h, w, nrow, pad = 5, 3, 4, 6, 3, 2
    imgs = torch.zeros(n, c, h, w, dtype=torch.uint8)
    for i in range(n):
        imgs[i] = 10 * (i + 1)
    imgs[3, 1, 2, 5] = 7  # one distinctive pixel
    grid = make_grid(imgs, nrow=nrow, padding=pad, pad_value=255)
    assert grid.shape == (2 * (h + pad) + pad, 3 * (w + pad) + pad, c)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        block = grid[y : y + h, x : x + w]
        expected = imgs[i].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(block, expected)
    assert grid[pad + (h + pad) + 2, pad + 0 * (w + pad) + 5, 1] == 7  # image 3: row 1, col 0
    assert (grid[:pad] == 255).all() and (grid[:, :pad] == 255).all()
    # the empty 6th cell is padding
    y, x = pad + (h + pad), pad + 2 * (w + pad)
    assert (grid[y : y + h, x : x + w] == 255).all()


def test_make_grid_one_channel_has_no_channel_axis_and_per_channel_pad() -> None:
    grid = make_grid(u8(4, 1, 3, 3), nrow=2, padding=1, pad_value=0)
    assert grid.shape == (2 * 4 + 1, 2 * 4 + 1)
    rgb = make_grid(u8(1, 3, 2, 2), nrow=4, padding=1, pad_value=(1, 2, 3))
    assert rgb.shape == (4, 4, 3) and tuple(rgb[0, 0]) == (1, 2, 3)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(3, 8, 8, dtype=torch.uint8),  # no batch axis
        torch.zeros(2, 2, 8, 8, dtype=torch.uint8),  # 2 channels
        torch.zeros(2, 3, 8, 8),  # float, not uint8
        torch.zeros(0, 3, 8, 8, dtype=torch.uint8),  # empty
    ],
)
def test_make_grid_rejects_bad_input(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError) as e:
        make_grid(bad, nrow=2)
    assert "\n" not in str(e.value)


def test_make_grid_rejects_bad_nrow_and_padding() -> None:
    with pytest.raises(ValueError, match="nrow"):
        make_grid(u8(2, 3, 4, 4), nrow=0)
    with pytest.raises(ValueError, match="padding"):
        make_grid(u8(2, 3, 4, 4), nrow=2, padding=-1)


@pytest.mark.parametrize(("c", "mode"), [(1, "L"), (3, "RGB")])
def test_save_grid_mode_and_exact_size(tmp_path: Path, c: int, mode: str) -> None:
    imgs = u8(6, c, 8, 5)
    path = save_grid(imgs, tmp_path / "grid.png", nrow=4, upscale=3)
    im = open_image(path)
    assert im.mode == mode
    assert im.size == (3 * (4 * (5 + 2) + 2), 3 * (2 * (8 + 2) + 2))
    # pixels survive the round trip (upscale repeats each pixel)
    arr = np.asarray(im)
    expected = make_grid(imgs, nrow=4)
    np.testing.assert_array_equal(arr[::3, ::3], expected)
    assert no_temp_files(tmp_path)


def test_save_images_writes_one_png_each(tmp_path: Path) -> None:
    imgs = u8(3, 3, 7, 9)
    paths = save_images(imgs, tmp_path / "out", prefix="s_", start=10)
    assert [p.name for p in paths] == ["s_00010.png", "s_00011.png", "s_00012.png"]
    for p, img in zip(paths, imgs):
        im = open_image(p)
        assert im.mode == "RGB" and im.size == (9, 7)
        np.testing.assert_array_equal(np.asarray(im), img.permute(1, 2, 0).numpy())
    gray = save_images(u8(1, 1, 4, 4), tmp_path / "out", prefix="g_")
    assert open_image(gray[0]).mode == "L"
    assert no_temp_files(tmp_path / "out")


def test_grid_with_row_labels(tmp_path: Path) -> None:
    imgs = u8(6, 3, 8, 8)
    path = grid_with_row_labels(imgs, 3, ["class 0", "a longer label"], tmp_path / "g.png")
    im = open_image(path)
    grid_w, grid_h = 3 * 10 + 2, 2 * 10 + 2
    assert im.mode == "RGB" and im.size[1] == grid_h and im.size[0] > grid_w + 20
    # the grid sits at the right edge, unchanged
    np.testing.assert_array_equal(np.asarray(im)[:, -grid_w:], make_grid(imgs, 3))
    # the label column has dark text pixels
    assert np.asarray(im)[:, : im.size[0] - grid_w].min() < 100
    gray = grid_with_row_labels(u8(2, 1, 8, 8), 2, ["x"], tmp_path / "l.png")
    assert open_image(gray).mode == "L"
    with pytest.raises(ValueError, match="labels"):
        grid_with_row_labels(imgs, 3, ["only one"], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_to_uint8_maps_model_range() -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0, float("nan")])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255, 0]


def test_atomic_write_leaves_no_temp_files_on_success_or_failure(tmp_path: Path) -> None:
    p = atomic_write_bytes(tmp_path / "sub" / "f.bin", b"abc")
    assert p.read_bytes() == b"abc" and no_temp_files(p.parent)
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"
    umask = os.umask(0o022)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual mode, not mkstemp's 0600

    class Boom(RuntimeError):
        pass

    def fail(_: object) -> None:
        raise Boom

    from ddpmkit.viz import atomic_save

    with pytest.raises(Boom):
        atomic_save(p, fail)
    assert p.read_bytes() == b"new" and no_temp_files(p.parent)


def test_grid_module_does_not_import_matplotlib() -> None:
    code = (
        "import sys, torch; from ddpmkit.viz.grid import save_grid; import ddpmkit.viz; "
        "print(any(m.startswith(('matplotlib', 'PIL')) for m in sys.modules))"
    )
    out = subprocess.run(  # killed on a timeout or any exception
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- matplotlib figures


def _png_size_ok(path: Path, min_wh: tuple[int, int], max_wh: tuple[int, int]) -> Image.Image:
    im = open_image(path)
    assert min_wh[0] <= im.size[0] <= max_wh[0], im.size
    assert min_wh[1] <= im.size[1] <= max_wh[1], im.size
    assert no_temp_files(path.parent)
    return im


def test_plot_schedules(tmp_path: Path) -> None:
    p = plot_schedules(tmp_path / "s.png", num_steps=100, dpi=DPI)
    _png_size_ok(p, (15 * DPI - 5, 3 * DPI), (15 * DPI + 5, 6 * DPI))
    with pytest.raises(ValueError, match="unknown schedule"):
        plot_schedules(tmp_path / "bad.png", names=("nope",))


def test_plot_forward_process(tmp_path: Path) -> None:
    img = torch.rand(3, 16, 16) * 2 - 1
    p = plot_forward_process(
        img, tmp_path / "f.png", ("linear", "cosine"), num_steps=50, num_snapshots=5, dpi=DPI
    )
    _png_size_ok(p, (5 * DPI, 3 * DPI), (10 * DPI, 6 * DPI))
    plot_forward_process(img[:1], tmp_path / "gray.png", num_steps=20, num_snapshots=3, dpi=DPI)
    for bad in (torch.zeros(16, 16), torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8)):
        with pytest.raises(ValueError, match="image must have shape"):
            plot_forward_process(bad, tmp_path / "bad.png", dpi=DPI)


def test_plot_forward_2d(tmp_path: Path) -> None:
    pts = torch.randn(200, 2)
    p = plot_forward_2d(
        pts, tmp_path / "f2.png", "linear", num_snapshots=10, num_steps=100, dpi=DPI
    )
    _png_size_ok(p, (14 * DPI, 2 * DPI), (17 * DPI, 4 * DPI))
    sched = NoiseSchedule.from_name("cosine", 30)
    plot_forward_2d(
        pts.numpy(), tmp_path / "g.png", sched, num_snapshots=3, share_axes=True, dpi=DPI
    )
    with pytest.raises(ValueError, match=r"points must have shape \(N, 2\)"):
        plot_forward_2d(torch.randn(10, 3), tmp_path / "bad.png", dpi=DPI)


def _info(i: int, n: int, t: int, x: torch.Tensor) -> StepInfo:
    return StepInfo(index=i, num_steps=n, t=t, x_t=x, x0_pred=x * 0.5)


def test_trajectory_recorder_keeps_evenly_spaced_snapshots() -> None:
    rec = TrajectoryRecorder(num_snapshots=4, max_items=2)
    ts = list(range(90, -1, -10))  # 10 steps
    for i, t in enumerate(ts):
        rec(_info(i, len(ts), t, torch.full((5, 2), float(i), requires_grad=False)))
    assert [s.index for s in rec.snapshots] == [0, 3, 6, 9]
    assert rec.timesteps == [90, 60, 30, 0]
    assert [s.t_next for s in rec.snapshots] == [80, 50, 20, -1]
    assert rec.snapshots[1].x_t.shape == (2, 2) and float(rec.snapshots[1].x_t[0, 0]) == 3.0
    rec(_info(0, 2, 5, torch.zeros(5, 2)))  # a new run starts afresh
    assert len(rec) == 1


def _exact_model(data: torch.Tensor, sched: NoiseSchedule):  # noqa: ANN202
    flat = data.reshape(data.shape[0], -1).double()

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = sched.alphas_bar[t[0]].double()
        xf = x.reshape(x.shape[0], -1).double()
        w = torch.softmax(-(torch.cdist(xf, ab.sqrt() * flat) ** 2) / (2 * (1 - ab)), dim=1)
        return ((xf - ab.sqrt() * (w @ flat)) / (1 - ab).sqrt()).reshape(x.shape).float()

    return model


@pytest.mark.parametrize("c", [1, 3])
def test_reverse_process_images(tmp_path: Path, c: int) -> None:
    sched = NoiseSchedule.from_name("cosine", 100)
    data = torch.rand(4, c, 8, 8) * 2 - 1
    rec = TrajectoryRecorder(num_snapshots=6, max_items=4)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(6, c, 8, 8, generator=g)
    ddim_sample(_exact_model(data, sched), sched, x_T, num_steps=12, callback=rec)
    assert len(rec) == 6 and rec.snapshots[-1].t_next == -1
    p = plot_reverse_process(rec, tmp_path / "r.png", dpi=DPI)
    _png_size_ok(p, (8 * DPI, 2 * DPI), (12 * DPI, 5 * DPI))
    gif = save_reverse_gif(rec, tmp_path / "r.gif", fps=5, min_size=64)
    im = open_image(gif, "GIF")
    assert im.n_frames == 6
    assert 64 <= im.size[0] <= 400 and 64 <= im.size[1] <= 400
    assert no_temp_files(tmp_path)


def test_reverse_process_scatter(tmp_path: Path) -> None:
    sched = NoiseSchedule.from_name("linear", 50)
    data = torch.randn(30, 2)
    rec = TrajectoryRecorder(num_snapshots=10, max_items=100)
    x_T = torch.randn(100, 2, generator=torch.Generator().manual_seed(1))
    ddim_sample(_exact_model(data, sched), sched, x_T, num_steps=20, callback=rec)
    p = plot_reverse_process(rec, tmp_path / "r2.png", dpi=DPI)
    _png_size_ok(p, (14 * DPI, 2 * DPI), (17 * DPI, 4 * DPI))
    plot_reverse_process(rec, tmp_path / "r3.png", show_x0=True, share_axes=True, dpi=DPI)
    gif = save_reverse_gif(rec, tmp_path / "r2.gif", fps=10)
    im = open_image(gif, "GIF")
    assert im.n_frames == 10 and im.size == (320, 320)
    with pytest.raises(ValueError, match="kind='image'"):
        plot_reverse_process(rec, tmp_path / "bad.png", kind="image")
    with pytest.raises(ValueError, match="no snapshots"):
        plot_reverse_process(TrajectoryRecorder(), tmp_path / "bad.png")


def _write_metrics(path: Path, quarters: bool) -> None:
    lines = []
    for step in range(0, 300, 5):
        rec: dict[str, float] = {"step": step, "loss": 0.05 + math.exp(-step / 50) * (1 + step % 3)}
        if quarters and step % 20 == 0:
            rec |= {f"loss_q{q}": 0.1 * (4 - q) + 0.01 for q in range(4)}
        lines.append(json.dumps(rec))
    lines.append('{"step": 300, "fid": 12.5}')  # other kinds of records are ignored
    path.write_text("\n".join(lines) + '\n{"step": 305, "lo')  # a half-written last line


@pytest.mark.parametrize("quarters", [False, True])
def test_plot_loss_curve(tmp_path: Path, quarters: bool) -> None:
    m = tmp_path / "metrics.jsonl"
    _write_metrics(m, quarters)
    p = plot_loss_curve(m, tmp_path / "loss.png", dpi=DPI)
    im = _png_size_ok(p, (6 * DPI, 3 * DPI), (14 * DPI, 6 * DPI))
    assert (im.size[0] > 10 * DPI) == quarters  # the quarter panel widens the figure


def test_plot_loss_curve_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read metrics file"):
        plot_loss_curve(tmp_path / "missing.jsonl", tmp_path / "l.png")
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match="no records"):
        plot_loss_curve(empty, tmp_path / "l.png")


def test_contact_sheet(tmp_path: Path) -> None:
    paths = [save_grid(u8(4, 3, 8, 8, seed=i), tmp_path / f"g{i}.png", 2) for i in range(3)]
    out = contact_sheet(paths, tmp_path / "sheet.png", [f"step {1000 * i}" for i in range(3)])
    im = open_image(out)
    assert im.mode == "RGB"
    assert im.size[0] >= 3 * 22 and im.size[1] > 22
    contact_sheet(paths, tmp_path / "sheet2.png", ncols=2)
    with pytest.raises(ValueError, match="labels"):
        contact_sheet(paths, tmp_path / "bad.png", ["one"])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        contact_sheet([tmp_path / "broken.png"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="cannot read image"):
        contact_sheet([tmp_path / "nope.png"], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plot_data_vs_samples(tmp_path: Path) -> None:
    data, samples = torch.randn(100, 2), torch.randn(80, 2)
    samples[0] = 1e6  # a diverged sample must not squash the view
    p = plot_data_vs_samples(data, samples, tmp_path / "d.png", "toy", dpi=DPI)
    _png_size_ok(p, (10 * DPI - 5, 5 * DPI - 5), (10 * DPI + 5, 6 * DPI))
    with pytest.raises(ValueError, match="samples must have shape"):
        plot_data_vs_samples(data, torch.randn(5, 2, 1), tmp_path / "bad.png")
