"""EDM's log-normal training noise levels on a discrete VP schedule (diffusion.t_sampling).

The probabilities of :func:`lognormal_timestep_probs` come from normal CDF differences at the
midpoints of ln sigma_t; the check here draws ln sigma from the normal directly (numpy) and
rounds each draw to the t of the nearest ln sigma_t, the definition the CDF formula integrates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit.diffusion import lognormal_timestep_probs
from ddpmkit.errors import ConfigError
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.training.config import load_config
from ddpmkit.training.setup import build_run


def _log_sigma(s: NoiseSchedule) -> np.ndarray:
    abar = s.alphas_bar.double().numpy()
    return 0.5 * (np.log1p(-abar) - np.log(abar))


@pytest.mark.parametrize(
    ("name", "steps", "p_mean", "p_std"),
    [("cosine", 1000, -1.2, 1.2), ("linear", 100, 0.0, 2.0), ("cosine", 50, -0.4, 1.0)],
)
def test_probs_match_nearest_t_of_drawn_log_sigmas(
    name: str, steps: int, p_mean: float, p_std: float
) -> None:
    s = NoiseSchedule.from_name(name, steps)
    p = lognormal_timestep_probs(s, p_mean, p_std).numpy()
    assert p.shape == (steps,)
    assert abs(p.sum() - 1.0) < 1e-12 and (p >= 0).all()
    ls = _log_sigma(s)
    n = 400_000
    draws = np.random.default_rng(0).normal(p_mean, p_std, n)
    # nearest ln sigma_t: compare the two neighbours of each draw in the sorted table
    hi = np.clip(np.searchsorted(ls, draws), 1, steps - 1)
    lo = hi - 1
    t = np.where(np.abs(draws - ls[lo]) <= np.abs(draws - ls[hi]), lo, hi)
    freq = np.bincount(t, minlength=steps) / n
    tol = 5.0 * np.sqrt(p * (1.0 - p) / n) + 1e-5
    assert (np.abs(freq - p) <= tol).all(), np.abs(freq - p).max()
    # the mass sits where EDM puts it: the median draw sigma = exp(p_mean) lands near the
    # t whose sigma_t is nearest exp(p_mean)
    median_t = int(np.searchsorted(np.cumsum(p), 0.5))
    assert abs(median_t - int(np.argmin(np.abs(ls - p_mean)))) <= max(1, steps // 100)


def test_batcher_draws_t_from_the_lognormal(tmp_path: Path) -> None:
    cfg = load_config(
        "moons",
        [
            'model.kind="mlp"',
            'train.precision="fp32"',
            "train.batch_size=512",
            'diffusion.t_sampling="lognormal"',
            "diffusion.t_lognormal=[-1.2, 1.2]",
            f'out_dir="{tmp_path.as_posix()}"',
        ],
    )
    run = build_run(cfg, resume=False, log=lambda *_: None)
    p = lognormal_timestep_probs(run.sched, -1.2, 1.2).numpy()
    ts = torch.cat([run.batcher.draw(run.gen, torch.device("cpu"))[2] for _ in range(40)])
    freq = np.bincount(ts.numpy(), minlength=run.sched.num_steps) / ts.numel()
    # the mean t and its spread match the categorical's (20,480 draws)
    idx = np.arange(run.sched.num_steps)
    mean, sd = (p * idx).sum(), np.sqrt((p * (idx - (p * idx).sum()) ** 2).sum())
    assert abs((freq * idx).sum() - mean) < 5 * sd / np.sqrt(ts.numel())
    # and differ from uniform t: the lognormal rarely draws the noisiest tenth of the steps
    top = run.sched.num_steps * 9 // 10
    assert freq[top:].sum() < 0.5 * 0.1 and p[top:].sum() < 0.05


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (['diffusion.t_sampling="lognormal"', "diffusion.t_lognormal=[-1.2, 0.0]"], "P_std > 0"),
        (['diffusion.t_sampling="lognormal"', "diffusion.antithetic=true"], "antithetic"),
        (['diffusion.t_sampling="beta"'], "t_sampling"),
    ],
)
def test_bad_t_sampling_is_a_one_line_config_error(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_config("moons", overrides)
    assert "\n" not in str(e.value)
