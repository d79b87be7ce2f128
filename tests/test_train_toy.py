"""The 2-D toy end to end: training reaches a sliced-Wasserstein distance near the data floor.

Thresholds, justified by references measured in the test with the same estimators and sizes:
  floor = SW2(fresh data, fresh data): estimator noise alone (~0.0037 for 2000 points);
  noise = SW2(N(0, I), data): what an untrained model gives (~0.89: the S-curve has scale 0.1).
A trained model must be within 4x the floor (measured: 2.2-2.4x for 5000-8000 steps), i.e.
>50x below noise. Sliced W2 is weak at detecting blur (a visibly blurred S scored 3.5x floor), so
a second check: the 90th percentile of each sample's distance to the nearest of 10,000 fresh
points must be within 2.5x that of fresh data (measured: 1.2-1.7x for good runs, 12-16x for
blurred ones).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddpmkit.data.toy2d import make_toy
from ddpmkit.evaluation.metrics import sliced_wasserstein
from ddpmkit.fit import train
from ddpmkit.sampling import ddpm_sample
from ddpmkit.trained import load
from ddpmkit.training.config import load_config


@pytest.fixture(scope="module")
def s_curve_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s_curve")
    cfg = load_config(
        "s_curve",
        [
            f'out_dir="{out.as_posix()}"',
            "train.steps=5000",
            "train.log_every=100",
            "train.sample_every=0",
            "train.checkpoint_every=5000",
        ],
    )
    train(cfg, progress=False, log=lambda s: None)
    return out


def test_trained_s_curve_is_close_to_data(s_curve_run: Path) -> None:
    m = load(s_curve_run)
    model, sched = m.network, m.schedule
    g = torch.Generator().manual_seed(0)
    n = 2000
    samples = ddpm_sample(model, sched, torch.randn(n, 2, generator=g), generator=g)
    fresh_a = make_toy("s_curve", n, seed=101)
    fresh_b = make_toy("s_curve", n, seed=102)
    proj = dict(num_projections=512)
    floor = sliced_wasserstein(fresh_a, fresh_b, generator=torch.Generator().manual_seed(1), **proj)
    noise = sliced_wasserstein(
        torch.randn(n, 2, generator=g), fresh_a, generator=torch.Generator().manual_seed(1), **proj
    )
    got = sliced_wasserstein(samples, fresh_a, generator=torch.Generator().manual_seed(1), **proj)
    assert floor < 0.01 and noise > 0.5  # the references are what the docstring says
    assert got < 4 * floor, (got, floor, noise)
    ref = make_toy("s_curve", 10_000, seed=200)

    def p90_nn(x: torch.Tensor) -> float:
        return float(torch.cdist(x, ref).min(dim=1).values.quantile(0.9))

    assert p90_nn(samples) < 2.5 * p90_nn(fresh_a), (p90_nn(samples), p90_nn(fresh_a))


def test_run_folder_has_model_and_figures(s_curve_run: Path) -> None:
    from PIL import Image

    assert (s_curve_run / "model" / "model.safetensors").is_file()
    assert (s_curve_run / "model" / "config.json").is_file()
    for name in ("reverse_process.png", "data_vs_samples.png"):
        with Image.open(s_curve_run / name) as im:
            assert im.format == "PNG" and im.width > 500
    with Image.open(s_curve_run / "reverse_process.gif") as im:
        assert im.n_frames == 10
    lines = (s_curve_run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 50  # 5000 steps, one line per 100
