"""``ddpm eval`` end to end: a tiny trained image model and 2-D model, real and noise samples,
the reference-statistics cache, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _tiny import TINY_DIGITS_UNET
from ddpmkit.cli import main

TINY_DIGITS = [
    *TINY_DIGITS_UNET,
    "--set", 'train.precision="fp32"',
    "--set", "train.log_every=10",
    "--set", "train.sample_every=0",
    "--set", "train.checkpoint_every=10",
    "--set", "sample.steps=3",
    "--set", "sample.num=10",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's ~/.cache: the default cache goes under the test's folder."""
    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path / "ddpmkit_cache"))


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    args = ["train", "fashion_mnist", "--out", str(out), "--steps", "10", "--no-progress"]
    assert main([*args, *TINY_DIGITS]) == 0
    return out


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP trained on two moons for a few hundred steps, exported as a model folder."""
    from ddpmkit.data.toy2d import make_toy
    from ddpmkit.diffusion import diffusion_loss
    from ddpmkit.training.build import TrainData, build_model, build_schedule
    from ddpmkit.training.checkpoint import save_model_export
    from ddpmkit.training.config import load_config

    cfg = load_config("moons", ["diffusion.num_steps=100", "model.hidden=64"])
    x = make_toy("moons", 2000, seed=cfg.train.seed)
    data = TrainData(x, None, [], "toy", "moons (2000 points)")
    model = build_model(cfg.model, data.sample_shape, 0, cfg.diffusion.num_steps)
    sched = build_schedule(cfg.diffusion)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=300)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = x[torch.randint(0, x.shape[0], (256,), generator=g)]
        loss = diffusion_loss(model, sched, batch, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
    out = tmp_path_factory.mktemp("toy") / "model"
    meta = {"config": cfg.to_dict(), "data": data.describe(), "precision": "fp32"}
    save_model_export(out, model.state_dict(), meta)
    return out


def digits() -> tuple[np.ndarray, np.ndarray]:
    from ddpmkit.data.digits import load_digits_data

    d = load_digits_data()
    assert d.labels is not None
    return d.images.numpy(), d.labels.numpy()


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def write_pngs(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img[0]).save(folder / f"img_{i:05d}.png")
    return folder


def run_eval(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:  # type: ignore[type-arg]
    out = Path(args[args.index("--out") + 1])
    assert main(["eval", *args]) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    return json.loads((out / "eval.json").read_text()), stdout


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("ddpm: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_end_to_end(
    image_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ev"
    report, table = run_eval(
        [
            str(image_run), "--num", "20", "--sampler", "ddim", "--steps", "5",
            "--bpd-images", "6", "--bpd-timesteps", "4", "--memorisation", "3", "--out", str(out),
        ],
        capsys,
    )  # fmt: skip
    keys = "source samples reference reference_cache extractor metrics metric_info likelihood"
    assert {*keys.split(), "memorisation", "depends_on", "notes"} <= set(report)
    s = report["samples"]
    assert (s["num"], s["sampler"], s["steps"], s["weights"]) == (20, "ddim", 5, "EMA")
    assert s["spacing"] == "trailing" and "class-balanced" in s["labels"]
    assert s["guidance"] == 3.0  # not given: the model's own sample.guidance (fashion preset)
    assert s["guidance_interval"] == [0.28, 5.42]  # and its noise interval
    ref = report["reference"]
    assert (ref["dataset"], ref["split"], ref["size"]) == ("digits", "only", 1797)
    assert report["reference_cache"] == "miss"
    assert report["extractor"].startswith("digits classifier")
    for needle in ("20 samples", "EMA weights", "ddim sampler, 5 steps", "1797 digits images"):
        assert needle in report["depends_on"], report["depends_on"]
    m = report["metrics"]
    assert set(m) == {"fd", "precision", "recall", "inception_score", "class_accuracy"}
    assert all(math.isfinite(v) for v in m.values())
    assert m["fd"] > 0 and 0 <= m["precision"] <= 1 and 1 <= m["inception_score"] <= 10
    like = report["likelihood"]
    assert like["num_images"] == 6 and like["weights"] == "EMA" and like["bpd"] > 0
    assert like["bpd"] == pytest.approx(
        like["prior_bpd_mean"] + like["vb_bpd_mean"] + like["decoder_bpd_mean"]
    )
    mem = report["memorisation"]
    assert len(mem["closest"]) == 3 and mem["train_set"]["size"] == 1797
    d = [c["pixel_distance"] for c in mem["closest"]]
    assert d == sorted(d) and d[0] == pytest.approx(mem["samples_pixel"]["min"])
    with Image.open(out / "nearest.png") as im:
        assert im.height >= 3 * 64  # three pairs, upscaled 8x8 -> 64
    nn = np.load(out / "nearest.npz")
    assert nn["pixel_distance"].shape == (20,) and nn["pixel_index"].max() < 1797
    assert "depends on: 20 samples; EMA weights; ddim sampler" in table
    assert "class_accuracy" in table and "nll_bpd" in table

    # Raw weights, same reference: the statistics come from the cache.
    out2 = tmp_path / "ev_raw"
    report2, _ = run_eval(
        [str(image_run), "--num", "8", "--raw", "--memorisation", "0", "--bpd-images", "0",
         "--guidance", "1", "--out", str(out2)],
        capsys,
    )  # fmt: skip
    assert report2["samples"]["weights"] == "raw" and "raw weights" in report2["depends_on"]
    s2 = report2["samples"]  # the model's own sampler, steps and spacing; --guidance wins
    got = (s2["sampler"], s2["steps"], s2["spacing"], s2["guidance"])
    assert got == ("dpmpp", 3, "logsnr", 1.0)
    assert report2["reference_cache"] == "hit"
    assert report2["likelihood"] is None and report2["memorisation"] is None
    assert not (out2 / "nearest.png").exists()


def test_toy_model_and_points(
    toy_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ddpmkit.data.toy2d import make_toy

    report, _ = run_eval(
        [str(toy_model), "--num", "400", "--sampler", "ddpm",
         "--out", str(tmp_path / "m")],
        capsys,
    )  # fmt: skip
    m = report["metrics"]
    assert set(m) == {"sliced_wasserstein", "sliced_wasserstein_data_floor", "mmd2",
                      "mmd2_data_floor"}  # fmt: skip
    assert report["reference"]["size"] == 400 and report["reference"]["seed"] != 0
    assert "400 fresh moons points" in report["depends_on"] and report["extractor"] is None
    # the ODE's last step, for continuous data: named in the report, and its samples differ
    ode, _ = run_eval(
        [str(toy_model), "--num", "400", "--sampler", "dpmpp", "--steps", "10",
         "--final-step", "ode", "--out", str(tmp_path / "ode")],
        capsys,
    )  # fmt: skip
    assert "ode final step" in ode["depends_on"], ode["depends_on"]
    assert np.isfinite(ode["metrics"]["sliced_wasserstein"])
    # DDPM's reverse variance: named in the report; beta~ and beta draw different samples
    post, beta = (
        run_eval(
            [str(toy_model), "--num", "400", "--sampler", "ddpm", "--steps", "10",
             "--variance", v, "--out", str(tmp_path / v)],
            capsys,
        )[0]
        for v in ("posterior", "beta")
    )  # fmt: skip
    assert "variance posterior" in post["depends_on"], post["depends_on"]
    assert "variance beta" in beta["depends_on"], beta["depends_on"]
    assert post["samples"]["variance"] == "posterior"
    sw_post, sw_beta = (r["metrics"]["sliced_wasserstein"] for r in (post, beta))
    assert np.isfinite(sw_post) and np.isfinite(sw_beta) and sw_post != sw_beta
    # Fresh data as "samples" sits at the floor; Gaussian noise far above it.
    good = write_npz(tmp_path / "good.npz", points=make_toy("moons", 400, seed=123).numpy())
    noise = write_npz(tmp_path / "noise.npz", points=np.random.default_rng(0).normal(size=(400, 2)))
    r_good, _ = run_eval([str(good), "--dataset", "moons", "--out", str(tmp_path / "g")], capsys)
    r_noise, _ = run_eval([str(noise), "--dataset", "moons", "--out", str(tmp_path / "n")], capsys)
    sw_good, sw_noise = (
        r_good["metrics"]["sliced_wasserstein"],
        r_noise["metrics"]["sliced_wasserstein"],
    )
    floor = r_good["metrics"]["sliced_wasserstein_data_floor"]
    with capsys.disabled():
        print(
            f"\ntoy: model SW {m['sliced_wasserstein']:.4f} MMD2 {m['mmd2']:.5f}; data SW "
            f"{sw_good:.4f} MMD2 {r_good['metrics']['mmd2']:.5f}; noise SW {sw_noise:.4f} "
            f"MMD2 {r_noise['metrics']['mmd2']:.5f}; floor SW {floor:.4f}"
        )
    assert sw_good < 2 * floor + 0.02 and sw_noise > 5 * sw_good
    assert r_noise["metrics"]["mmd2"] > max(0.02, 4 * abs(r_good["metrics"]["mmd2"]))
    assert m["sliced_wasserstein"] < 0.6 * sw_noise  # the trained model beats noise


# ----------------------------------------------------------------------------- samples files


def test_real_digits_score_near_zero_and_noise_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, labels = digits()
    pick = np.random.default_rng(0).permutation(len(images))[:600]
    real = write_npz(tmp_path / "real.npz", images=images[pick], labels=labels[pick])
    rng = np.random.default_rng(1)
    noise = write_npz(tmp_path / "noise.npz", images=rng.integers(0, 256, (600, 1, 8, 8), np.uint8))
    r, table = run_eval(
        [str(real), "--dataset", "digits", "--memorisation", "4", "--out", str(tmp_path / "r")],
        capsys,
    )
    n, _ = run_eval(
        [str(noise), "--dataset", "digits", "--memorisation", "0", "--out", str(tmp_path / "n")],
        capsys,
    )
    mr, mn = r["metrics"], n["metrics"]
    with capsys.disabled():
        print(f"\ndigits classifier: real {mr}\n  noise {mn}")
    assert r["samples"]["weights"] is None and "unknown" in r["depends_on"]
    assert r["samples"]["labels"] == "from the file" and n["reference_cache"] == "hit"
    assert mr["fd"] < 0.02 * mn["fd"]
    assert mr["precision"] > 0.9 and mr["recall"] > 0.9 and mn["recall"] < 0.2
    # k-NN precision of noise is not near 0 in this 8x8 classifier's space (measured 0.60: the
    # noise features sit in one cluster inside the large k-NN balls of outlying digits).
    assert mn["precision"] < mr["precision"] - 0.2
    assert mr["class_accuracy"] > 0.97 and "class_accuracy" not in mn  # no labels in the file
    assert mr["inception_score"] > 8 and mn["inception_score"] < mr["inception_score"]
    # Training images "generated": every one is an exact copy of a training image.
    mem = r["memorisation"]
    assert mem["exact_copies"] == 600 and mem["samples_pixel"]["max"] == 0.0
    assert all(c["pixel_distance"] == 0 for c in mem["closest"])
    assert all(int(pick[c["sample"]]) == c["train"] for c in mem["closest"])
    assert (tmp_path / "r" / "nearest.png").is_file() and "exact_copies" in table

    # The same images as (N, H, W, C) and as a folder of PNGs give the same numbers.
    nhwc = write_npz(tmp_path / "nhwc.npz", images=images[pick].transpose(0, 2, 3, 1))
    r2, _ = run_eval(
        [str(nhwc), "--dataset", "digits", "--memorisation", "0", "--out", str(tmp_path / "r2")],
        capsys,
    )
    assert any("(N, H, W, C)" in note for note in r2["notes"])
    folder = write_pngs(tmp_path / "pngs", images[pick])
    r3, _ = run_eval(
        [str(folder), "--dataset", "digits", "--memorisation", "0", "--out", str(tmp_path / "r3")],
        capsys,
    )
    assert r3["source"]["kind"] == "folder"
    for other in (r2, r3):
        assert other["metrics"]["fd"] == pytest.approx(mr["fd"], rel=1e-6)


def test_folder_reference_generic_features_and_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ddpmkit.evaluation.classifier import GENERIC_EXTRACTOR_NAME

    images, _ = digits()
    perm = np.random.default_rng(0).permutation(len(images))
    ref_dir = write_pngs(tmp_path / "ref", images[perm[:300]])  # independent halves
    real = write_npz(tmp_path / "real.npz", images=images[perm[300:500]])
    noise = write_npz(
        tmp_path / "noise.npz",
        images=np.random.default_rng(1).integers(0, 256, (200, 1, 8, 8), np.uint8),
    )
    cache = tmp_path / "cache"
    common = ["--dataset", "folder", "--root", str(ref_dir), "--memorisation", "0"]
    common += ["--cache-dir", str(cache)]

    def ev(src: Path, name: str) -> dict:  # type: ignore[type-arg]
        return run_eval([str(src), *common, "--out", str(tmp_path / name)], capsys)[0]

    first = ev(real, "a")
    assert first["reference_cache"] == "miss" and first["extractor"] == GENERIC_EXTRACTOR_NAME
    assert any("generic random-feature CNN" in note for note in first["notes"])
    assert "inception_score" not in first["metrics"]  # no classifier, no class probabilities
    second = ev(real, "b")
    assert second["reference_cache"] == "hit"
    assert second["metrics"] == first["metrics"]
    bad = ev(noise, "c")
    assert bad["reference_cache"] == "hit"
    with capsys.disabled():
        print(f"\ngeneric features: real {first['metrics']}\n  noise {bad['metrics']}")
    assert first["metrics"]["fd"] < 0.05 * bad["metrics"]["fd"]
    assert first["metrics"]["precision"] > 0.8 and bad["metrics"]["precision"] < 0.05
    # One reference image changed: new fingerprint, the old statistics are not reused.
    img = np.array(Image.open(ref_dir / "img_00007.png"))
    Image.fromarray(255 - img).save(ref_dir / "img_00007.png")
    third = ev(real, "d")
    assert third["reference_cache"] == "miss"
    assert third["reference"]["fingerprint"] != first["reference"]["fingerprint"]
    assert len(list(cache.glob("*.json"))) == len(list(cache.glob("*.safetensors"))) == 2
    assert not list(cache.glob(".*"))  # no temporaries left behind


def test_reference_cache_rejects_stale_or_corrupt_entries(tmp_path: Path) -> None:
    from ddpmkit.evaluation.reference import reference_statistics

    calls = []

    def features_of(u8: torch.Tensor) -> torch.Tensor:
        calls.append(int(u8.shape[0]))
        return u8.reshape(u8.shape[0], -1)[:, :3].float()

    images = torch.randint(0, 256, (10, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    kw = {"features_of": features_of, "folder": tmp_path, "description": "test"}
    s1, state1, key = reference_statistics(images, fingerprint="f1", extractor_id="e1", **kw)  # type: ignore[arg-type]
    s2, state2, _ = reference_statistics(images, fingerprint="f1", extractor_id="e1", **kw)  # type: ignore[arg-type]
    assert (state1, state2, calls) == ("miss", "hit", [10])
    torch.testing.assert_close(s2.cov, s1.cov)
    assert s2.features.shape == (10, 3) and s2.mu.dtype == torch.float64
    _, state, _ = reference_statistics(images, fingerprint="f1", extractor_id="e2", **kw)  # type: ignore[arg-type]
    assert state == "miss"  # another extractor
    st = tmp_path / f"{key}.safetensors"
    st.write_bytes(st.read_bytes()[:-8])  # truncated
    _, state, _ = reference_statistics(images, fingerprint="f1", extractor_id="e1", **kw)  # type: ignore[arg-type]
    assert state == "miss" and len(calls) == 3
    _, state, _ = reference_statistics(images, fingerprint="f1", extractor_id="e1", **kw)  # type: ignore[arg-type]
    assert state == "hit"  # rewritten
    kw["folder"] = None
    _, state, _ = reference_statistics(images, fingerprint="f1", extractor_id="e1", **kw)  # type: ignore[arg-type]
    assert state == "off" and len(calls) == 4  # --no-cache: computed, neither read nor written


# ----------------------------------------------------------------------------- bad input


def _bad_inputs(tmp: Path, run: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    images, _ = digits()
    u8 = images[:10]
    empty = tmp / "empty"
    empty.mkdir()
    return {
        "wrong shape": (
            [str(write_npz(tmp / "a.npz", images=np.zeros((10, 2, 8, 5), np.uint8))),
             "--dataset", "digits"],
            ("'images' has shape (10, 2, 8, 5)", "(N, C, H, W) or (N, H, W, C)"),
        ),
        "float": (
            [str(write_npz(tmp / "b.npz", images=u8.astype(np.float32) / 127.5 - 1)),
             "--dataset", "digits"],
            ("'images' is float32 with values in [-1, 1]", "expected uint8"),
        ),
        "out of range": (
            [str(write_npz(tmp / "c.npz", images=u8.astype(np.int64) * 2)), "--dataset", "digits"],
            ("values lie in [0, 510], outside the pixel range 0..255",),
        ),
        "size of another dataset": (
            [str(write_npz(tmp / "d.npz", images=np.zeros((10, 1, 28, 28), np.uint8))),
             "--dataset", "digits"],
            ("samples are 1x28x28 but digits images are 1x8x8",),
        ),
        "no images array": (
            [str(write_npz(tmp / "e.npz", x=u8)), "--dataset", "digits"],
            ("no 'images' array", "arrays found: x"),
        ),
        "not an npz": (
            [str(write_npz(tmp / "f.npz", images=u8).rename(tmp / "f.txt")), "--dataset", "digits"],
            ("not an .npz file or a folder",),
        ),
        "empty folder": ([str(empty), "--dataset", "digits"], ("no image files",)),
        "missing source": ([str(tmp / "nope")], ("does not exist",)),
        "no dataset": (
            [str(write_npz(tmp / "ok.npz", images=u8))], ("--dataset: say what the samples",)
        ),
        "sampler for samples": (
            [str(tmp / "ok.npz"), "--dataset", "digits", "--steps", "5"],
            ("--steps: only for a model SOURCE",),
        ),
        "model of another dataset": (
            [str(run), "--dataset", "mnist"],
            ("is a model of 'digits'", "drop --dataset"),
        ),
        "toy name for images": (
            [str(tmp / "ok.npz"), "--dataset", "moons"], ("holds images; expected one of",)
        ),
        "steps out of range": ([str(run), "--steps", "500"], ("--steps: must be in [1, 100]",)),
        "eta for ddpm": (
            [str(run), "--sampler", "ddpm", "--eta", "0.5"], ("--eta: applies to sampler ddim",)
        ),
        "variance for samples": (
            [str(tmp / "ok.npz"), "--dataset", "digits", "--variance", "posterior"],
            ("--variance: only for a model SOURCE",),
        ),
        "variance for dpmpp": (
            [str(run), "--sampler", "dpmpp", "--variance", "posterior"],
            ("--variance: applies to sampler ddpm only",),
        ),
        "final step for samples": (
            [str(tmp / "ok.npz"), "--dataset", "digits", "--final-step", "ode"],
            ("--final-step: only for a model SOURCE",),
        ),
        "ode end on a trailing grid": (
            [str(run), "--sampler", "ddim", "--steps", "4", "--final-step", "ode"],
            ("--final-step: 'ode' needs a time grid that ends at t = 0",),
        ),
    }  # fmt: skip


def test_bad_inputs_are_one_line_errors(
    image_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    for name, (args, needles) in _bad_inputs(tmp_path, image_run).items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        code = main(["eval", *args, "--out", str(out), "--cache-dir", str(cache), "--num", "8"])
        err = capsys.readouterr().err
        if name == "sampler for samples":
            assert "--num" not in err  # --num is allowed for files (first N); --steps is not
        assert_one_line_error(code, err, *needles)
        assert not out.exists(), name
    assert not cache.exists()  # nothing computed, nothing cached
