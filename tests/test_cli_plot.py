"""Each ``ddpm plot`` command on tiny models writes a valid PNG/GIF; bad inputs: clear errors.

Two tiny runs are trained once for the module through the library: a U-Net on the 8x8 digits
(class-conditional, 10 steps) and the moons MLP (20 steps).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.cli_plot import auto_smoothing
from ddpmkit.fit import train
from ddpmkit.training.config import load_config

TINY_UNET = [
    'data.name="digits"', 'model.kind="unet"', "model.base_channels=16",
    "model.channel_mults=[1, 2]", "model.attention_resolutions=[4]", "model.groups=4",
    "model.num_res_blocks=1", "diffusion.num_steps=50", "train.batch_size=16",
    "train.log_every=2", "train.sample_every=5", "train.checkpoint_every=10",
    "sample.steps=5", "sample.num=10", "train.steps=10",
]  # fmt: skip
TINY_TOY = [
    "train.steps=20", "train.log_every=5", "train.sample_every=10",
    "train.checkpoint_every=10", "diffusion.num_steps=50",
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny networks: one torch thread is faster, and several times faster on a busy machine
    (with 2 threads on 2 loaded cores, OpenMP workers wait for each other at every op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("plots")
    out = {}
    for key, preset, overrides in (
        ("img", "fashion_mnist", TINY_UNET),
        ("toy", "moons", TINY_TOY),
    ):
        run = base / key
        cfg = load_config(preset, [*overrides, f'out_dir="{run.as_posix()}"'])
        train(cfg, progress=False, log=lambda s: None)
        out[key] = run
    return out


def png(path: Path, min_w: int = 200, min_h: int = 100) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # the whole file decodes
        assert im.width >= min_w and im.height >= min_h, im.size
        return im.size


def gif_frames(path: Path) -> tuple[int, tuple[int, int]]:
    with Image.open(path) as im:
        assert im.format == "GIF"
        return im.n_frames, im.size


def test_schedules(tmp_path: Path) -> None:
    assert main(["plot", "schedules", "--out", str(tmp_path / "s.png")]) == 0
    w, h = png(tmp_path / "s.png", 800, 250)
    assert w > 2 * h  # three panels side by side
    assert main(["plot", "schedules", "--steps", "50", "--out", str(tmp_path / "s50.png")]) == 0
    png(tmp_path / "s50.png", 800, 250)


def test_forward_image_file_dataset_and_toy(tmp_path: Path) -> None:
    src = tmp_path / "in.jpg"  # any format Pillow reads, any size, RGB
    rgb = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src)
    args = ["--image", str(src), "--schedule", "linear", "--schedule", "cosine"]
    assert main(["plot", "forward", *args, "--out", str(tmp_path / "f.png")]) == 0
    w2, h2 = png(tmp_path / "f.png", 800, 150)
    assert main(["plot", "forward", "--dataset", "digits", "--index", "5",
                 "--out", str(tmp_path / "d.png")]) == 0  # fmt: skip
    w1, h1 = png(tmp_path / "d.png", 800, 80)
    assert h2 > 1.5 * h1  # one row per schedule
    assert main(["plot", "forward", "--dataset", "moons", "--out", str(tmp_path / "m.png")]) == 0
    _, hm1 = png(tmp_path / "m.png", 800, 100)
    two = ["--schedule", "linear", "--schedule", "sigmoid", "--steps", "100"]
    assert main(["plot", "forward", "--dataset", "s_curve", *two,
                 "--out", str(tmp_path / "m2.png")]) == 0  # fmt: skip
    _, hm2 = png(tmp_path / "m2.png", 800, 100)
    assert hm2 == 2 * hm1  # 2-D: one scatter row per schedule too


def test_forward_folder_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("L", (40 + 10 * i, 30), color=60 * i).save(folder / f"{i}.png")
    out = tmp_path / "f.png"
    args = ["--dataset", "folder", "--root", str(folder), "--index", "2", "--size", "32"]
    assert main(["plot", "forward", *args, "--out", str(out)]) == 0
    png(out, 800, 80)


def test_reverse_image(runs: dict[str, Path], tmp_path: Path) -> None:
    out, gif = tmp_path / "r.png", tmp_path / "r.gif"
    assert main(["plot", "reverse", str(runs["img"]), "--steps", "10", "--num", "4", "--label", "3",
                 "--out", str(out), "--gif", str(gif)]) == 0  # fmt: skip
    w, h = png(out, 600, 150)
    assert w > 2 * h  # ten snapshots side by side, x_t above predicted x_0
    frames, size = gif_frames(gif)
    assert frames == 10 and min(size) >= 64
    # Any sampler, from a checkpoint folder as well as a run folder.
    ckpt = next((runs["img"] / "checkpoints").glob("step_*"))
    out2 = tmp_path / "r2.png"
    assert main(["plot", "reverse", str(ckpt), "--sampler", "dpmpp", "--steps", "4",
                 "--guidance", "2", "--out", str(out2)]) == 0  # fmt: skip
    png(out2, 300, 150)


def test_reverse_toy(runs: dict[str, Path], tmp_path: Path) -> None:
    out, gif = tmp_path / "t.png", tmp_path / "t.gif"
    args = ["--sampler", "ddim", "--steps", "20", "--num", "500"]
    assert main(["plot", "reverse", str(runs["toy"]), *args, "--out", str(out),
                 "--gif", str(gif)]) == 0  # fmt: skip
    png(out, 800, 100)
    frames, _ = gif_frames(gif)
    assert frames == 10  # seed 002's ten snapshots


def test_loss_and_grids(runs: dict[str, Path], tmp_path: Path) -> None:
    assert main(["plot", "loss", str(runs["img"]), "--out", str(tmp_path / "l.png")]) == 0
    w, _ = png(tmp_path / "l.png", 400, 200)
    assert w > 1000  # the second panel: loss by quarter of t (logged by the trainer)
    assert main(["plot", "grids", str(runs["img"]), "--out", str(tmp_path / "g.png")]) == 0
    w1, _ = png(tmp_path / "g.png", 100, 50)
    assert len(list((runs["img"] / "samples").glob("step_*.png"))) == 2  # steps 5 and 10
    assert main(["plot", "grids", str(runs["img"]), "--max", "1",
                 "--out", str(tmp_path / "g1.png")]) == 0  # fmt: skip
    w2, _ = png(tmp_path / "g1.png", 50, 50)
    assert w2 < w1  # one grid instead of two
    assert main(["plot", "loss", str(runs["toy"]), "--out", str(tmp_path / "lt.png")]) == 0
    png(tmp_path / "lt.png", 400, 200)


def test_auto_smoothing_follows_the_length_of_the_log() -> None:
    assert auto_smoothing(10) == 0.0  # a handful of logs: no smoothing
    assert auto_smoothing(40) == pytest.approx(0.5)  # the S-curve preset: 8000 / 200 logs
    assert auto_smoothing(100_000) == 0.98


@pytest.mark.parametrize(
    "args, needle",
    [
        (["reverse", "{tmp}"], "not a ddpmkit run, checkpoint or model folder"),
        (["reverse", "{tmp}/nowhere"], "nowhere"),
        (["reverse", "{toy}", "--label", "1"], "needs a class-conditional model"),
        (["reverse", "{toy}", "--steps", "51"], "--steps: must be in [1, 50]"),
        (["reverse", "{img}", "--label", "10"], "--label: 10 is not a class of this model"),
        (["reverse", "{img}", "--num", "0"], "--num: must be >= 1"),
        (["loss", "{tmp}"], "no metrics.jsonl"),
        (["loss", "{tmp}/empty_run"], "no loss logged"),
        (["loss", "{img}", "--smoothing", "1"], "--smoothing: must be in [0, 1)"),
        (["grids", "{tmp}"], "no sample grids"),
        (["forward", "--image", "{tmp}/bad.png"], "cannot be read as an image"),
        (["forward", "--image", "{tmp}/missing.png"], "does not exist"),
        (["forward", "--dataset", "nope"], "--dataset: 'nope' is not one of"),
        (["forward", "--dataset", "digits", "--index", "5000"], "--index: 5000 is outside"),
        (["forward", "--dataset", "folder"], "give the folder with --root"),
        (["forward", "--dataset", "digits", "--schedule", "cosin"], "'cosin' is not one of"),
        (["schedules", "--steps", "0"], "--steps: must be >= 1"),
    ],
)
def test_bad_inputs(
    runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    needle: str,
) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "empty_run" / "metrics.jsonl").write_text(json.dumps({"step": 0}) + "\n")
    subs = {"{tmp}": str(tmp_path), "{toy}": str(runs["toy"]), "{img}": str(runs["img"])}
    out = tmp_path / "o.png"
    argv = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        argv.append(a)
    capsys.readouterr()
    code = main(["plot", *argv, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("ddpm: error: "), err
    assert needle in err[0], err
    assert not out.exists()
