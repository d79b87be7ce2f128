"""A tiny image run end to end through the CLI: train, checkpoint, sample, the files it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddpmkit
from _tiny import TINY_LABEL_UNET as TINY
from ddpmkit.cli import main
from ddpmkit.sampling import SAMPLERS, Guidance, initial_noise
from ddpmkit.step_schedule import discrepancy


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    assert (
        main(["train", "fashion_mnist", "--out", str(out), "--steps", "30", "--no-progress", *TINY])
        == 0
    )
    return out


def test_run_folder(run: Path) -> None:
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["latest", "step_00000020", "step_00000030"]  # keep_checkpoints = 2
    assert (run / "model" / "model.safetensors").is_file()
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["data"]["num_classes"] == 10 and meta["data"]["sample_shape"] == [1, 8, 8]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    assert all(k in records[-1] for k in ("loss", "lr", "images_per_s", "loss_q0", "loss_q3"))
    grids = sorted(p.name for p in (run / "samples").iterdir())
    assert grids == ["latest.png", "step_00000010.png", "step_00000020.png", "step_00000030.png"]
    with Image.open(run / "samples" / "latest.png") as im:
        assert im.mode == "L"  # 1-channel data stays 1-channel
        assert im.height > 10 * 8  # ten rows, one per class
    assert any((run / "tensorboard").iterdir())


def test_sample_grid_by_class(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    args = [
        "sample",
        str(run),
        "--sampler",
        "ddim",
        "--steps",
        "4",
        "--num",
        "3",
        "--grid-by-class",
    ]
    assert main([*args, "--guidance", "2", "--seed", "5", "--out", str(out)]) == 0
    z = np.load(out / "samples.npz")
    assert z["images"].shape == (30, 1, 8, 8) and z["images"].dtype == np.uint8
    assert z["labels"].tolist() == [c for c in range(10) for _ in range(3)]
    assert len(list((out / "images").glob("*.png"))) == 30
    with Image.open(out / "grid.png") as im:
        assert im.format == "PNG"


def test_sample_label_seed_and_batch_independence(run: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    common = [
        "sample",
        str(run),
        "--sampler",
        "ddpm",
        "--steps",
        "10",
        "--label",
        "7",
        "--seed",
        "3",
    ]
    assert main([*common, "--num", "4", "--batch-size", "4", "--out", str(a)]) == 0
    assert main([*common, "--num", "2", "--batch-size", "1", "--out", str(b)]) == 0
    za, zb = np.load(a / "samples.npz"), np.load(b / "samples.npz")
    assert (za["labels"] == 7).all()
    assert np.array_equal(za["images"][:2], zb["images"])  # sample i depends only on seed + i


def test_sample_errors(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x"
    assert main(["sample", str(run), "--label", "12", "--out", str(out)]) == 2
    assert "--label: 12 is not a class of this model (0..9)" in capsys.readouterr().err
    assert main(["sample", str(run), "--steps", "500", "--out", str(out)]) == 2
    assert "--steps: must be in [1, 100]" in capsys.readouterr().err
    assert main(["sample", str(run), "--eta", "1.5", "--out", str(out)]) == 2
    assert "--eta: must be in [0, 1], got 1.5" in capsys.readouterr().err
    assert main(["sample", str(run), "--sampler", "ddpm", "--eta", "1", "--out", str(out)]) == 2
    assert "--eta: applies to sampler ddim or dpmpp" in capsys.readouterr().err
    ddim4 = ["--sampler", "ddim", "--steps", "4"]  # trailing: the grid ends at t = 24
    assert main(["sample", str(run), *ddim4, "--final-step", "ode", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--final-step: 'ode' needs a time grid that ends at t = 0" in err
    assert err.count("\n") == 1
    assert not out.exists()


def test_sample_final_step(run: Path, tmp_path: Path) -> None:
    outs = {}
    for end in ("denoise", "ode"):
        outs[end] = tmp_path / end
        args = ["sample", str(run), "--num", "4", "--final-step", end]
        assert main([*args, "--out", str(outs[end])]) == 0
    a, b = (np.load(outs[e] / "samples.npz")["images"] for e in ("denoise", "ode"))
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_schedule_optimises_the_guidance_the_run_samples_with(run: Path, tmp_path: Path) -> None:
    # The preset guides with w = 3 only at sigma in (0.28, 5.42]: the grid's objective J must be
    # the discrepancy of exactly that sampling, recomputed here from the library's samplers.
    out = tmp_path / "steps_3.json"
    argv = ["schedule", str(run), "--steps", "3", "--batch", "8", "--reference-steps", "20"]
    assert main([*argv, "--max-evals", "4", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["reference"]["guidance"] == 3.0
    assert data["reference"]["guidance_interval"] == [0.28, 5.42]
    model = ddpmkit.load(run)
    kw = {
        "y": model.labels_for(8),
        "prediction": model.config.diffusion.prediction,
        "clip_x0": 1.0,
        "guidance_scale": Guidance(3.0, 0.28, 5.42),
    }
    x_T = initial_noise((8, *model.sample_shape), seeds=[10_000 + i for i in range(8)])
    net, sched = model.network, model.schedule

    def j(**over: object) -> float:
        k = {**kw, **over}
        # the command's numeric path: bf16 autocast where the CPU has native bf16, else fp32
        bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=model.compute.bf16)
        with bf16:
            ref = SAMPLERS["unipc"](net, sched, x_T, num_steps=20, spacing="logsnr", **k)
            x = SAMPLERS[data["sampler"]](net, sched, x_T, timesteps=data["timesteps"], **k)
        return discrepancy(x, ref, "mse")

    assert j() == pytest.approx(data["objective"], rel=1e-5)
    assert j(guidance_scale=3.0) != pytest.approx(data["objective"], rel=1e-3)  # w everywhere


def test_resume_continues(run: Path) -> None:
    assert main(["train", "--resume", "--out", str(run), "--steps", "35", "--no-progress"]) == 0
    assert (run / "checkpoints" / "step_00000035").is_dir()
