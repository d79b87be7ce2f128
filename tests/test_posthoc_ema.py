"""Post-hoc EMA (EDM2 Sec. 3.2, App. C): the profiles' inner product, the least-squares fit,
a reconstruction against a directly tracked average, snapshots in a real run, ``ddpm ema``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import ddpmkit
from ddpmkit.cli import main
from ddpmkit.errors import ConfigError
from ddpmkit.training.config import load_config
from ddpmkit.training.loop import train  # no preview grids: the run is all that is tested
from ddpmkit.training.posthoc_ema import combine, profile_inner, solve_coefficients
from ddpmkit.training.power_ema import (
    PowerEMA,
    gamma_from_sigma_rel,
    list_snapshots,
    read_snapshot,
    snapshot_path,
    write_snapshot,
)


def _profile(tau: np.ndarray, t: float, gamma: float) -> np.ndarray:
    """p_{gamma,t}(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t], else 0."""
    return np.where(tau <= t, (gamma + 1) * (tau / t) ** gamma / t, 0.0)


# ---- (a) the closed form against numerical integration ---------------------------------------


@pytest.mark.parametrize(
    ("t_a", "g_a", "t_b", "g_b"),
    [(100, 16.97, 100, 16.97), (40, 6.94, 100, 16.97), (100, 6.94, 40, 16.97), (7, 0.0, 3, 2.5)],
)
def test_inner_product_matches_numerical_integration(
    t_a: float, g_a: float, t_b: float, g_b: float
) -> None:
    # Trapezoid rule on a fine grid of [0, min(t_a, t_b)], where the product is nonzero.
    tau = np.linspace(0.0, min(t_a, t_b), 400_001)
    f = _profile(tau, t_a, g_a) * _profile(tau, t_b, g_b)
    numeric = float(np.sum((f[1:] + f[:-1]) * np.diff(tau)) / 2)
    assert float(profile_inner(t_a, g_a, t_b, g_b)) == pytest.approx(numeric, rel=1e-6)


def test_least_squares_matches_a_fit_of_the_sampled_profiles() -> None:
    # The same L2 problem solved independently: the profiles sampled on a fine grid (weights of
    # the trapezoid rule), numpy's least squares on those columns, then normalised to sum 1.
    t = np.array([200, 400, 600, 800, 1000, 200, 400, 600, 800, 1000], dtype=float)
    g = np.array([gamma_from_sigma_rel(s) for s in [0.05] * 5 + [0.10] * 5])
    t_r, g_r = 1000.0, gamma_from_sigma_rel(0.08)
    x, err = solve_coefficients(t, g, t_r, g_r)
    tau = np.linspace(0.0, 1000.0, 200_001)
    w = np.sqrt(np.gradient(tau))  # sqrt of the quadrature weights
    cols = np.stack([_profile(tau, ti, gi) * w for ti, gi in zip(t, g, strict=True)], axis=1)
    target = _profile(tau, t_r, g_r) * w
    ref = np.linalg.lstsq(cols, target, rcond=None)[0]
    ref /= ref.sum()
    assert x.sum() == pytest.approx(1.0)
    assert np.allclose(x, ref, atol=2e-3 * np.abs(ref).max())
    resid = np.linalg.norm(cols @ ref - target) / np.linalg.norm(target)
    assert err == pytest.approx(resid, rel=1e-2)
    assert err < 0.05  # between two stored lengths the fit is good


# ---- (b) reconstruction on a known weight trajectory -----------------------------------------

N_STEPS, EVERY = 1000, 50


History = list[dict[str, dict[str, torch.Tensor]]]


@pytest.fixture(scope="module")
def trajectory(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, History]:
    """A tiny network whose weights follow a seeded random walk for N_STEPS steps, with power
    EMAs of 0.05 and 0.10 snapshotted every EVERY steps (through the snapshot files), and one
    of 0.08 tracked directly. Returns the folder and, per step, the weights ("w") and the
    tracked 0.08 average ("ema")."""
    folder = tmp_path_factory.mktemp("trajectory")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).double()
    g = torch.Generator().manual_seed(1)
    emas = [PowerEMA(net, 0.05), PowerEMA(net, 0.10)]
    direct = PowerEMA(net, 0.08)
    history: History = []
    for step in range(1, N_STEPS + 1):
        with torch.no_grad():
            for p in [*net.parameters(), net[1].running_mean]:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype), alpha=0.1)
        for e in [*emas, direct]:
            e.update(net)
        if step % EVERY == 0:
            for e in emas:
                write_snapshot(snapshot_path(folder, e.sigma_rel, step), e, step)
        w = {k: v.clone() for k, v in net.state_dict().items()}
        history.append({"w": w, "ema": {k: v.clone() for k, v in direct.state_dict().items()}})
    return folder, history


def _reconstruct(
    folder: Path, sigma_rel: float, step: int
) -> tuple[dict[str, torch.Tensor], np.ndarray, float]:
    snaps = [s for s in list_snapshots(folder) if s.step <= step]
    x, err = solve_coefficients(
        [s.step for s in snaps], [s.gamma for s in snaps], step, gamma_from_sigma_rel(sigma_rel)
    )
    return combine((read_snapshot(s) for s in snaps), list(x)), x, err


def test_reconstructed_average_matches_the_directly_tracked_one(
    trajectory: tuple[Path, History],
) -> None:
    folder, history = trajectory
    snaps = list_snapshots(folder)
    assert len(snaps) == 2 * N_STEPS // EVERY
    assert {(s.step, s.updates) for s in snaps} == {
        (k, k) for k in range(EVERY, N_STEPS + 1, EVERY)
    }
    gamma = gamma_from_sigma_rel(0.08)
    for step in (N_STEPS, 600):
        rec, _, err = _reconstruct(folder, 0.08, step)
        want = history[step - 1]["ema"]
        near = read_snapshot(next(s for s in snaps if s.step == step and s.sigma_rel == 0.10))
        # Tolerance, derived: the power EMA gives step i exactly the mass of the continuous
        # profile p_r on (i - 1, i] (the product of its decays telescopes to (i/t)^(gamma + 1)),
        # so with w(tau) the piecewise-constant weights and both profiles of mass 1,
        #   |rec - direct| = |<p_fit - p_r, w - c>| <= err * ||p_r|| * ||w - c||   (Cauchy-Schwarz)
        # for any constant c, where err = ||p_fit - p_r|| / ||p_r|| and, by hand,
        # ||p_r||^2 = (gamma + 1)^2 / ((2 gamma + 1) t). Nothing else (no O(1/t) term) is left.
        p_norm = (gamma + 1) / np.sqrt((2 * gamma + 1) * step)
        for k, v in want.items():
            if not v.is_floating_point():
                assert torch.equal(rec[k], v), k
                continue
            w = torch.stack([h["w"][k] for h in history[:step]])  # (step, *shape)
            w_norm = (w - w.mean(0)).norm(dim=0)
            miss = (rec[k] - v).abs()
            assert torch.all(miss <= 1.001 * err * p_norm * w_norm + 1e-12), (step, k, err)
            # And it is a real gain: far closer than the nearest stored length (running_var
            # never moves, so there both are exact).
            gap = (near[k] - v).abs().max()
            assert miss.max() < 0.05 * gap or gap == 0, (step, k)


def test_a_stored_length_at_a_snapshot_step_is_that_snapshot(
    trajectory: tuple[Path, History],
) -> None:
    folder, _ = trajectory
    snaps = [s for s in list_snapshots(folder) if s.step <= 600]
    rec, x, err = _reconstruct(folder, 0.10, 600)
    i = next(i for i, s in enumerate(snaps) if s.step == 600 and s.sigma_rel == 0.10)
    one_hot = np.zeros(len(snaps))
    one_hot[i] = 1.0
    assert np.allclose(x, one_hot, atol=1e-6) and err < 1e-6
    for k, v in read_snapshot(snaps[i]).items():
        assert torch.allclose(rec[k], v, atol=1e-9), k


# ---- (c) a real run with snapshots, then `ddpm ema` ------------------------------------------

TINY = [
    'model.kind="mlp"',
    'train.precision="fp32"',
    "train.log_every=2",
    "train.sample_every=0",
    "sample.steps=3",
    "sample.num=4",
    "train.ema_sigma_rels=[0.05, 0.10]",
    "train.ema_snapshot_every=2",
    "train.steps=8",
    "data.num_points=2000",
]


@pytest.fixture(scope="module")
def snap_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 steps of the moons MLP with snapshots every 2 steps, run as 5 steps plus a resume."""
    out = tmp_path_factory.mktemp("posthoc") / "run"
    cfg = load_config("moons", [*TINY, f'out_dir="{out.as_posix()}"'])
    train(cfg, progress=False, log=lambda s: None, stop_after=5)
    train(cfg, resume=True, progress=False, log=lambda s: None)
    return out


def test_snapshots_are_written_every_n_steps_and_survive_a_resume(snap_run: Path) -> None:
    snaps = list_snapshots(snap_run)
    # Steps 2, 4, then 5 (the first call's last step), 6 and 8 after the resume; each length.
    assert sorted({s.step for s in snaps}) == [2, 4, 5, 6, 8]
    assert sorted({s.sigma_rel for s in snaps}) == [0.05, 0.10]
    assert all(s.updates == s.step for s in snaps)
    assert not list((snap_run / "ema_snapshots").rglob(".*"))  # no temporary files left
    # The last snapshot of each length is the average the run wrote as its model folder.
    for sr in (0.05, 0.10):
        last = load_file(str(snapshot_path(snap_run, sr, 8)))
        folder = snap_run / "model_ema" / f"sigma_rel_{sr:.3f}" / "model.safetensors"
        for k, v in load_file(str(folder)).items():
            assert torch.equal(last[k], v), (sr, k)


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("ddpm: error")]
    assert len(lines) == 1, lines
    return lines[0]


def test_ddpm_ema_writes_a_loadable_model(
    snap_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ema", str(snap_run), "--sigma-rel", "0.08"]) == 0
    err = capsys.readouterr().err
    assert "snapshots of sigma_rel 0.05: 5, steps 2..8" in err and "fit error" in err
    folder = snap_run / "model_ema" / "posthoc_sigma_rel_0.080"
    model = ddpmkit.load(folder)
    assert model.sample(4, seed=0).shape == (4, 2)
    info = json.loads((folder / "config.json").read_text())["posthoc_ema"]
    assert info["step"] == 8 and len(info["snapshots"]) == 10
    assert sum(info["coefficients"]) == pytest.approx(1.0)
    # A stored length at a snapshot step: that snapshot's weights, through the command.
    out = tmp_path / "m"
    assert main(["ema", str(snap_run), "--sigma-rel", "0.1", "--step", "6", "--out", str(out)]) == 0
    want = load_file(str(snapshot_path(snap_run, 0.10, 6)))
    got = ddpmkit.load(out, device="cpu").network.state_dict()
    for k, v in want.items():
        assert torch.allclose(got[k], v, atol=1e-5), k


# ---- (d) bad inputs: one line each, nothing written ------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sigma-rel", "0.3"], r"--sigma-rel: must be in \(0, 0.2887\)"),
        (["--sigma-rel", "0"], r"--sigma-rel: must be in \(0, 0.2887\)"),
        (["--sigma-rel", "0.08", "--step", "1"], r"--step: must be within .* \[2, 8\], got 1"),
        (["--sigma-rel", "0.08", "--step", "9"], r"--step: must be within .* \[2, 8\], got 9"),
    ],
)
def test_ddpm_ema_bad_inputs(
    snap_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "m"
    assert main(["ema", str(snap_run), "--out", str(out), *extra]) == 2
    assert re.search(message, _err(capsys))
    assert not out.exists()


def test_ddpm_ema_without_snapshots_or_with_a_broken_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert main(["ema", str(run), "--sigma-rel", "0.08"]) == 2
    assert "no EMA snapshots" in _err(capsys)
    assert main(["ema", str(tmp_path / "nothing"), "--sigma-rel", "0.08"]) == 2
    assert "not a run folder" in _err(capsys)
    bad = snapshot_path(run, 0.05, 2)
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"broken")
    assert main(["ema", str(run), "--sigma-rel", "0.08"]) == 2
    assert "not a readable EMA snapshot" in _err(capsys)
    assert not (run / "model_ema").exists()


def test_snapshots_of_a_restarted_average_are_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An average that restarted on a resume at step 3 and was snapshotted at step 5 has
    # profile ~ (tau - 3)^gamma on (3, 5]: no power-function profile from 0, so not usable.
    ema = PowerEMA(nn.Linear(2, 2), 0.05)
    ema.num_updates = 2
    write_snapshot(snapshot_path(tmp_path, 0.05, 5), ema, 5)
    assert [(s.step, s.updates) for s in list_snapshots(tmp_path)] == [(5, 2)]
    assert main(["ema", str(tmp_path), "--sigma-rel", "0.08"]) == 2
    assert "restarted" in _err(capsys)


def test_config_rejects_bad_snapshot_settings() -> None:
    with pytest.raises(ConfigError, match=r"train.ema_snapshot_every: must be >= 0"):
        load_config("moons", ["train.ema_snapshot_every=-1", "train.ema_sigma_rels=[0.05]"])
    with pytest.raises(ConfigError, match=r"train.ema_snapshot_every: .*ema_sigma_rels"):
        load_config("moons", ["train.ema_snapshot_every=10"])
    assert load_config("moons", ["train.ema_snapshot_every=0"]).train.ema_snapshot_every == 0
