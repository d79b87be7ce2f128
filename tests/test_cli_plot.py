"""Each ``ddpm plot`` command on tiny models writes a valid PNG/GIF; bad inputs: clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpmkit.cli import main

TINY_IMG = [
    "--set", 'data.name="digits"', "--set", "model.base_channels=16",
    "--set", "model.channel_mults=[1, 2]", "--set", "model.attention_resolutions=[4]",
    "--set", "model.groups=4", "--set", "model.num_res_blocks=1",
    "--set", "diffusion.num_steps=50", "--set", "train.batch_size=16",
    "--set", "train.log_every=2", "--set", "train.sample_every=5",
    "--set", "train.checkpoint_every=10", "--set", "sample.steps=3", "--set", "sample.num=10",
]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("plots")
    img, toy = base / "img", base / "toy"
    assert (
        main(
            [
                "train",
                "fashion_mnist",
                "--out",
                str(img),
                "--steps",
                "10",
                "--no-progress",
                *TINY_IMG,
            ]
        )
        == 0
    )
    toy_args = [
        "--set",
        "train.log_every=5",
        "--set",
        "train.sample_every=10",
        "--set",
        "diffusion.num_steps=50",
    ]
    assert (
        main(["train", "moons", "--out", str(toy), "--steps", "20", "--no-progress", *toy_args])
        == 0
    )
    return {"img": img, "toy": toy}


def png(path: Path, min_w: int = 200, min_h: int = 100) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= min_w and im.height >= min_h, im.size
        return im.size


def test_schedules(tmp_path: Path) -> None:
    assert main(["plot", "schedules", "--out", str(tmp_path / "s.png")]) == 0
    w, h = png(tmp_path / "s.png", 800, 250)
    assert w > h  # three panels side by side


def test_forward_image_file_dataset_and_toy(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(
        src
    )
    args = ["--image", str(src), "--schedule", "linear", "--schedule", "cosine"]
    assert main(["plot", "forward", *args, "--out", str(tmp_path / "f.png")]) == 0
    w2, h2 = png(tmp_path / "f.png", 800, 150)
    assert main(["plot", "forward", "--dataset", "digits", "--out", str(tmp_path / "d.png")]) == 0
    w1, h1 = png(tmp_path / "d.png", 800, 80)
    assert h2 > h1  # one row per schedule
    assert main(["plot", "forward", "--dataset", "moons", "--out", str(tmp_path / "m.png")]) == 0
    png(tmp_path / "m.png", 800, 100)


def test_reverse_image_and_toy(runs: dict[str, Path], tmp_path: Path) -> None:
    out, gif = tmp_path / "r.png", tmp_path / "r.gif"
    assert main(["plot", "reverse", str(runs["img"]), "--steps", "10", "--num", "4", "--label", "3",
                 "--out", str(out), "--gif", str(gif)]) == 0  # fmt: skip
    png(out, 600, 150)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 10
    out2 = tmp_path / "r2.png"
    assert (
        main(
            [
                "plot",
                "reverse",
                str(runs["toy"]),
                "--out",
                str(out2),
                "--gif",
                str(tmp_path / "t.gif"),
            ]
        )
        == 0
    )
    png(out2, 800, 100)


def test_loss_and_grids(runs: dict[str, Path], tmp_path: Path) -> None:
    assert main(["plot", "loss", str(runs["img"]), "--out", str(tmp_path / "l.png")]) == 0
    png(tmp_path / "l.png", 400, 200)
    assert main(["plot", "grids", str(runs["img"]), "--out", str(tmp_path / "g.png")]) == 0
    png(tmp_path / "g.png", 100, 50)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["reverse", "{tmp}"], "not a ddpmkit run, checkpoint or model folder"),
        (["loss", "{tmp}"], "no metrics.jsonl"),
        (["grids", "{tmp}"], "no sample grids"),
        (["forward", "--image", "{tmp}/bad.png"], "cannot be read as an image"),
        (["forward", "--image", "{tmp}/missing.png"], "does not exist"),
        (
            ["forward", "--dataset", "digits", "--schedule", "cosin"],
            "--schedule: 'cosin' is not one of",
        ),
    ],
)
def test_bad_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "o.png"
    code = main(["plot", *[a.replace("{tmp}", str(tmp_path)) for a in args], "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not out.exists()
