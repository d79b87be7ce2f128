"""Learned variances (Nichol & Dhariwal 2021): the interpolated variance, the hybrid loss, the
DDPM sampler on respaced chains, bits/dim, and a tiny run through the CLI.

Every expected value is computed here independently of the library: Gaussian KLs by Monte
Carlo, bin probabilities of the discretised decoder by numerical integration of the Gaussian
density (scipy.integrate.quad), schedule quantities from the betas in float64 Python floats.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate

from ddpmkit.diffusion import (
    diffusion_loss_per_sample,
    interpolated_log_variance,
    learned_log_variance,
    split_variance_output,
    vlb_term_bits,
)
from ddpmkit.errors import ConfigError
from ddpmkit.gaussians import discretized_gaussian_log_likelihood, normal_kl
from ddpmkit.schedule import NoiseSchedule, make_betas
from ddpmkit.training.config import RunConfig, config_from_dict, load_config

LN2 = math.log(2.0)


def schedule_floats(name: str, T: int) -> tuple[list[float], list[float], list[float]]:
    """(betas, abar, beta~) as float64 Python floats, from the betas alone."""
    betas = make_betas(name, T).tolist()
    abar = [math.prod(1 - b for b in betas[: t + 1]) for t in range(T)]
    tilde = [0.0] + [betas[t] * (1 - abar[t - 1]) / (1 - abar[t]) for t in range(1, T)]
    return betas, abar, tilde


def gaussian_pdf(x: float, m: float, sd: float) -> float:
    return math.exp(-0.5 * ((x - m) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


def bin_probability(x: float, m: float, sd: float) -> float:
    """P(bin of x) by integrating the density; the edge bins reach to -inf / +inf."""
    lo = -np.inf if x < -0.999 else x - 1 / 255
    hi = np.inf if x > 0.999 else x + 1 / 255
    if np.isfinite(lo) and np.isfinite(hi):
        val, _ = integrate.quad(gaussian_pdf, lo, hi, args=(m, sd), epsabs=0, epsrel=1e-11)
    else:  # split at the mean so quad sees the peak
        edge = hi if np.isfinite(hi) else lo
        a, b = (lo, edge) if np.isfinite(hi) else (edge, hi)
        val, _ = integrate.quad(gaussian_pdf, a, b, args=(m, sd), epsabs=0, epsrel=1e-11)
    return val


# ----------------------------------------------------------------------------- closed forms


def test_normal_kl_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    n = 400_000
    for m1, s1, m2, s2 in [(0.3, 0.5, -0.2, 1.3), (0.0, 0.1, 0.05, 0.08), (1.0, 2.0, 0.0, 1.0)]:
        x = m1 + s1 * torch.randn(n, generator=g, dtype=torch.float64)
        log_ratio = (
            -0.5 * ((x - m1) / s1) ** 2 - math.log(s1) + 0.5 * ((x - m2) / s2) ** 2 + math.log(s2)
        )
        mc, se = float(log_ratio.mean()), float(log_ratio.std()) / math.sqrt(n)
        got = float(
            normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, 2 * math.log(s1), m2)),
                      torch.tensor(2 * math.log(s2), dtype=torch.float64))
        )  # fmt: skip
        assert abs(got - mc) < 5 * se + 1e-12, (got, mc, se)


@pytest.mark.parametrize(("m", "sd"), [(0.0, 0.02), (0.37, 0.004), (-0.95, 0.3), (0.999, 0.01)])
def test_discretized_likelihood_matches_integrated_density(m: float, sd: float) -> None:
    levels = [-1.0, -1 + 2 / 255, -0.5, round(m * 127.5) / 127.5, 0.0, 1 - 2 / 255, 1.0]
    x = torch.tensor(levels, dtype=torch.float64)
    got = discretized_gaussian_log_likelihood(
        x, torch.full_like(x, m), torch.full_like(x, math.log(sd))
    )
    for xi, gi in zip(levels, got.tolist(), strict=True):
        p = bin_probability(xi, m, sd)
        assert gi == pytest.approx(math.log(max(p, 1e-12)), rel=1e-6, abs=1e-9), (xi, p)
    grid = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    total = discretized_gaussian_log_likelihood(
        grid, torch.full_like(grid, m), torch.full_like(grid, math.log(sd))
    ).exp().sum()  # fmt: skip
    assert float(total) == pytest.approx(1.0, abs=1e-9)


def test_interpolated_variance_ends_are_beta_and_beta_tilde() -> None:
    T = 50
    betas, _, tilde = schedule_floats("cosine", T)
    sched = NoiseSchedule.from_name("cosine", T)
    t = torch.arange(T)
    ones = torch.ones(T, 3)
    at_beta = learned_log_variance(sched, t, ones).exp()
    at_tilde = learned_log_variance(sched, t, -ones).exp()
    mid = learned_log_variance(sched, t, torch.zeros(T, 3)).exp()
    for k in range(T):
        want_tilde = tilde[1] if k == 0 else tilde[k]  # log beta~ clipped at t = 0
        assert float(at_beta[k, 0]) == pytest.approx(betas[k], rel=1e-5)
        assert float(at_tilde[k, 0]) == pytest.approx(want_tilde, rel=1e-5)
        assert float(mid[k, 0]) == pytest.approx(math.sqrt(betas[k] * want_tilde), rel=1e-5)
    v = torch.tensor([0.25])  # frac = 0.625
    lv = interpolated_log_variance(v, torch.tensor([-2.0]), torch.tensor([-6.0]))
    assert float(lv) == pytest.approx(0.625 * -2.0 + 0.375 * -6.0)


def test_split_variance_output() -> None:
    x = torch.zeros(4, 3, 8, 8)
    out = torch.arange(4 * 6 * 64, dtype=torch.float32).reshape(4, 6, 8, 8)
    pred, v = split_variance_output(out, x)
    assert v is not None and torch.equal(pred, out[:, :3]) and torch.equal(v, out[:, 3:])
    same, none = split_variance_output(out[:, :3], x)
    assert none is None and same.shape == x.shape
    with pytest.raises(ValueError, match="one value per input value"):
        split_variance_output(torch.zeros(4, 5, 8, 8), x)


# ----------------------------------------------------------------------------- the hybrid loss


class Parts(torch.nn.Module):
    """out = [a; b] for every input: the prediction and v are separate parameters."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.a = torch.nn.Parameter(0.3 * torch.randn(shape, generator=g))
        self.b = torch.nn.Parameter(0.5 * torch.randn(shape, generator=g))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return torch.cat([self.a.expand(b, *self.a.shape), self.b.expand(b, *self.b.shape)], 1)


def _hybrid_inputs() -> tuple[NoiseSchedule, torch.Tensor, torch.Tensor, torch.Tensor]:
    T = 40
    sched = NoiseSchedule.from_name("linear", T)
    g = torch.Generator().manual_seed(1)
    x0 = (torch.randint(0, 256, (5, 2, 3, 3), generator=g) / 127.5 - 1).float()
    t = torch.tensor([0, 1, 7, 20, 39])
    noise = torch.randn(x0.shape, generator=g)
    return sched, x0, t, noise


def test_vlb_gradient_does_not_reach_the_mean() -> None:
    sched, x0, t, noise = _hybrid_inputs()
    model = Parts((2, 3, 3))
    hybrid, _ = diffusion_loss_per_sample(
        model, sched, x0, t=t, noise=noise, learn_sigma=True, min_snr_gamma=5.0
    )
    ga, gb = torch.autograd.grad(hybrid.sum(), [model.a, model.b])
    # L_simple alone on the prediction half: the same gradient for a, none for b
    simple, _ = diffusion_loss_per_sample(
        lambda x, tt: model(x, tt)[:, :2], sched, x0, t=t, noise=noise, min_snr_gamma=5.0
    )
    (ga_simple,) = torch.autograd.grad(simple.sum(), [model.a])
    assert torch.equal(ga, ga_simple)
    assert torch.isfinite(gb).all() and float(gb.abs().sum()) > 0


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_hybrid_loss_is_simple_plus_lambda_T_times_the_vlb_term(prediction: str) -> None:
    """L = L_simple + 0.001 T L_t, L_t in bits/dim with the mean from the predicted x_0."""
    sched, x0, t, noise = _hybrid_inputs()
    T = sched.num_steps
    betas, abar, tilde = schedule_floats("linear", T)
    g = torch.Generator().manual_seed(5)
    x0_hat = 0.8 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    v = torch.rand(x0.shape, generator=g, dtype=torch.float64) * 2 - 1
    x_t = (
        sched.sqrt_alphas_bar[t].reshape(-1, 1, 1, 1) * x0
        + sched.sqrt_one_minus_alphas_bar[t].reshape(-1, 1, 1, 1) * noise
    )  # the library's x_t, to feed the same one to both

    def model(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        ab = torch.tensor([abar[k] for k in tt.tolist()], dtype=torch.float64).reshape(-1, 1, 1, 1)
        eps = (x.double() - ab.sqrt() * x0_hat) / (1 - ab).sqrt()
        out = {"eps": eps, "x0": x0_hat, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0_hat}
        return torch.cat([out[prediction], v], 1).float()

    got, _ = diffusion_loss_per_sample(
        model, sched, x0, t=t, noise=noise, prediction=prediction, learn_sigma=True
    )
    simple, _ = diffusion_loss_per_sample(
        lambda x, tt: model(x, tt)[:, :2], sched, x0, t=t, noise=noise, prediction=prediction
    )
    for i, k in enumerate(t.tolist()):
        terms = []
        for c, h, w in np.ndindex(2, 3, 3):
            z, zh, xt = float(x0[i, c, h, w]), float(x0_hat[i, c, h, w]), float(x_t[i, c, h, w])
            frac = (float(v[i, c, h, w]) + 1) / 2
            lt = tilde[1] if k == 0 else tilde[k]
            var = math.exp(frac * math.log(betas[k]) + (1 - frac) * math.log(lt))
            ab_prev = abar[k - 1] if k > 0 else 1.0
            c1 = betas[k] * math.sqrt(ab_prev) / (1 - abar[k])
            c2 = (1 - ab_prev) * math.sqrt(1 - betas[k]) / (1 - abar[k])
            m_model = c1 * zh + c2 * xt
            if k == 0:  # decoder: -log P(bin of x_0) under N(mean, var)
                terms.append(-math.log(max(bin_probability(z, m_model, math.sqrt(var)), 1e-12)))
            else:
                m_true, v_true = c1 * z + c2 * xt, tilde[k]
                terms.append(
                    0.5
                    * (math.log(var / v_true) + v_true / var + (m_true - m_model) ** 2 / var - 1)
                )
        want = float(simple[i]) + 0.001 * T * (sum(terms) / len(terms)) / LN2
        assert float(got[i]) == pytest.approx(want, rel=2e-4), (prediction, k)


def test_min_snr_weights_only_the_simple_part() -> None:
    sched, x0, t, noise = _hybrid_inputs()
    model = Parts((2, 3, 3))
    kw = dict(t=t, noise=noise, learn_sigma=True)
    h0, _ = diffusion_loss_per_sample(model, sched, x0, **kw)
    h5, _ = diffusion_loss_per_sample(model, sched, x0, min_snr_gamma=0.5, **kw)
    kw2 = dict(t=t, noise=noise)
    s0, _ = diffusion_loss_per_sample(lambda x, tt: model(x, tt)[:, :2], sched, x0, **kw2)
    s5, _ = diffusion_loss_per_sample(
        lambda x, tt: model(x, tt)[:, :2], sched, x0, min_snr_gamma=0.5, **kw2
    )
    assert not torch.allclose(s0, s5)  # the weighting does change L_simple here
    torch.testing.assert_close(h5 - s5, h0 - s0, rtol=1e-5, atol=1e-6)


def test_vlb_term_continuous_decoder_is_the_gaussian_density() -> None:
    sched = NoiseSchedule.from_name("linear", 10)
    x0 = torch.tensor([[0.3, -1.7]])
    mean, lv = torch.tensor([[0.1, -1.5]]), torch.tensor([[-3.0, -2.0]])
    got = vlb_term_bits(sched, x0, x0, torch.tensor([0]), mean, lv, decoder="continuous")
    nll = [
        -math.log(gaussian_pdf(z, m, math.exp(0.5 * s)))
        for z, m, s in [(0.3, 0.1, -3.0), (-1.7, -1.5, -2.0)]
    ]
    assert float(got) == pytest.approx(sum(nll) / 2 / LN2, rel=1e-5)


def test_loss_rejects_a_model_without_variance_channels() -> None:
    sched, x0, t, noise = _hybrid_inputs()
    with pytest.raises(ValueError, match="learn_sigma: the model output has the input's shape"):
        diffusion_loss_per_sample(lambda x, tt: x, sched, x0, t=t, noise=noise, learn_sigma=True)
    with pytest.raises(ValueError, match="one value per input value"):
        diffusion_loss_per_sample(Parts((2, 3, 3)), sched, x0, t=t, noise=noise)


# ----------------------------------------------------------------------------- config, networks


def test_config_learn_sigma_and_its_checks() -> None:
    cfg = load_config(None, ["diffusion.learn_sigma=true", "diffusion.vlb_weight=0.002"])
    assert cfg.diffusion.learn_sigma and cfg.diffusion.vlb_weight == 0.002
    # a saved run from before the keys: no learn_sigma, the default lambda
    old = config_from_dict(RunConfig, {"diffusion": {"schedule": "linear", "num_steps": 100}})
    assert old.diffusion.learn_sigma is False and old.diffusion.vlb_weight == 0.001
    for overrides, msg in [
        (["diffusion.learn_sigma=true", "diffusion.vlb_weight=0"], "must be > 0 with"),
        (["diffusion.vlb_weight=0.01"], "only used with diffusion.learn_sigma = true"),
        (["diffusion.learn_sigma=1"], "diffusion.learn_sigma: expected true or false"),
    ]:
        with pytest.raises(ConfigError, match=msg) as e:
            load_config(None, overrides)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("patch", [1, 2])
def test_networks_return_twice_the_channels(patch: int) -> None:
    from ddpmkit.training.build import build_model

    cfg = load_config(
        None,
        [
            "model.base_channels=8",
            "model.channel_mults=[1, 2]",
            "model.attention_resolutions=[]",
            "model.groups=4",
            "model.num_res_blocks=1",
            f"model.patch_size={patch}",
        ],
    )
    fixed = build_model(cfg.model, (3, 8, 8), 0, 100)
    learned = build_model(cfg.model, (3, 8, 8), 0, 100, learn_sigma=True)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 50])
    assert fixed(x, t).shape == (2, 3, 8, 8) and learned(x, t).shape == (2, 6, 8, 8)
    diff = {k for k, w in learned.state_dict().items() if fixed.state_dict()[k].shape != w.shape}
    assert diff == {"out.2.weight", "out.2.bias"}  # only conv_out widens
    for kind in ("mlp", "mlp_step"):
        mcfg = load_config(None, [f'model.kind="{kind}"']).model
        net = build_model(mcfg, (2,), 0, 100, learn_sigma=True)
        assert net(torch.randn(5, 2), torch.arange(5)).shape == (5, 4)
        assert build_model(mcfg, (2,), 0, 100)(torch.randn(5, 2), torch.arange(5)).shape == (5, 2)


# ----------------------------------------------------------------------------- sampling


V_CONST = torch.tensor([1.0, -1.0, 0.3])  # per dimension: beta, beta~ and in between


def learned_const(x0_value: float = 0.0):  # noqa: ANN201
    """x0-prediction model: x0_hat = x0_value, v = V_CONST (data of 3 dimensions)."""

    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([torch.full_like(x, x0_value), V_CONST.expand_as(x)], 1)

    return model


@pytest.mark.parametrize("ts", [[999, 998, 0], [999, 700, 0], [640, 20, 0], [40, 39, 0]])
def test_ddpm_step_std_is_the_respaced_interpolated_variance(ts: list[int]) -> None:
    """x_T = 0 and x0_hat = 0 make the first step's mean 0, so x_s = sigma z with z the first
    draw of each sample's generator: sigma = x_s / z exactly."""
    from ddpmkit.sampling import ddpm_sample

    T = 1000
    betas, abar, _ = schedule_floats("cosine", T)
    sched = NoiseSchedule.from_name("cosine", T)
    seeds = [3, 4]
    states = []
    ddpm_sample(
        learned_const(), sched, torch.zeros(2, 3), timesteps=ts, seeds=seeds, prediction="x0",
        callback=lambda info: states.append(info.x_t.clone()),
    )  # fmt: skip
    z = torch.stack([torch.randn(3, generator=torch.Generator().manual_seed(s)) for s in seeds])
    t, s = ts[0], ts[1]
    beta_ts = 1 - math.prod(1 - b for b in betas[s + 1 : t + 1])  # the kept steps' alphas_bar
    tilde_ts = beta_ts * (1 - abar[s]) / (1 - abar[t])
    for d, v in enumerate(V_CONST.tolist()):
        frac = (v + 1) / 2
        want = math.exp(0.5 * (frac * math.log(beta_ts) + (1 - frac) * math.log(tilde_ts)))
        got = states[0][:, d] / z[:, d]
        # the sampler forms beta_{t|s} from float32 alphas_bar (rounding ~6e-8 each), so a
        # small beta carries an absolute error of ~1.2e-7 (sigma: half of it, relatively)
        rtol = 2e-5 + 1.2e-7 / beta_ts
        torch.testing.assert_close(got, torch.full((2,), want), rtol=rtol, atol=0)


def test_guidance_guides_the_mean_and_keeps_the_conditional_variance() -> None:
    from ddpmkit.sampling import ddpm_sample

    T = 100
    betas, abar, _ = schedule_floats("linear", T)
    sched = NoiseSchedule.from_name("linear", T)

    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cond = (y >= 0).float()[:, None]  # x0_hat 0.5 / -0.5, v 0.6 / -0.9 (cond / uncond)
        return torch.cat([(cond - 0.5).expand_as(x), (1.5 * cond - 0.9).expand_as(x)], 1)

    ts, w = [60, 30, 0], 3.0
    states = []
    ddpm_sample(
        model, sched, torch.zeros(2, 3), timesteps=ts, seeds=[1, 2], prediction="x0",
        y=torch.tensor([4, 7]), guidance_scale=w,
        callback=lambda info: states.append(info.x_t.clone()),
    )  # fmt: skip
    z = torch.stack([torch.randn(3, generator=torch.Generator().manual_seed(s)) for s in (1, 2)])
    t, s = ts[0], ts[1]
    beta_ts = 1 - abar[t] / abar[s]
    tilde_ts = beta_ts * (1 - abar[s]) / (1 - abar[t])
    x0_guided = -0.5 + w * (0.5 - -0.5)
    mean = math.sqrt(abar[s]) * beta_ts / (1 - abar[t]) * x0_guided
    frac = (0.6 + 1) / 2
    sd = math.exp(0.5 * (frac * math.log(beta_ts) + (1 - frac) * math.log(tilde_ts)))
    torch.testing.assert_close(states[0], mean + sd * z, rtol=1e-5, atol=1e-6)


def test_deterministic_samplers_ignore_the_variance_channels() -> None:
    from ddpmkit.sampling import SAMPLERS, ddpm_sample

    sched = NoiseSchedule.from_name("linear", 100)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 3, generator=g) * 0.3

    def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w + t[:, None].float() / 100)

    def with_v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([eps_model(x, t), torch.sin(x) * 0.7], 1)

    x_T = torch.randn(4, 3, generator=g)
    for name, sampler in SAMPLERS.items():
        kw = {"seeds": [0, 1, 2, 3], "num_steps": 8}
        if name == "ddpm":
            a = ddpm_sample(with_v, sched, x_T, variance="beta", **kw)
        else:
            a = sampler(with_v, sched, x_T, **kw)
        b = sampler(eps_model, sched, x_T, **kw)
        assert torch.equal(a, b), name
    learned = ddpm_sample(with_v, sched, x_T, **kw)  # the default uses v
    assert not torch.allclose(learned, ddpm_sample(eps_model, sched, x_T, **kw))
    with pytest.raises(ValueError, match="variance='learned' needs a model"):
        ddpm_sample(eps_model, sched, x_T, variance="learned", **kw)


# ----------------------------------------------------------------------------- bits/dim


@pytest.mark.parametrize(("v", "fixed"), [(-1.0, "posterior"), (1.0, "beta")])
def test_bits_per_dim_use_the_learned_variance(v: float, fixed: str) -> None:
    """v = -1 is beta~ everywhere (= the fixed posterior variance, decoder included); v = 1 is
    beta_t, the fixed "beta" variance for t >= 1 (its decoder variance is beta~_1 there, the
    learned one beta_0). The fixed variances' terms are checked against direct computations in
    tests/test_likelihood.py."""
    from ddpmkit.evaluation.likelihood import vlb_terms

    T = 8
    sched = NoiseSchedule.from_name("linear", T)
    g = torch.Generator().manual_seed(2)
    x0 = (torch.randint(0, 256, (6, 2, 2, 2), generator=g) / 127.5 - 1).float()
    w = torch.randn(2, 2, generator=g)

    def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,cd->bdhw", x, w) * 0.2

    def learned(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([eps_model(x, t), torch.full_like(x, v)], 1)

    a = vlb_terms(learned, sched, x0, generator=torch.Generator().manual_seed(0))
    b = vlb_terms(eps_model, sched, x0, variance=fixed, generator=torch.Generator().manual_seed(0))
    cols = slice(0, T) if fixed == "posterior" else slice(1, T)
    torch.testing.assert_close(
        a["terms_bpd"][:, cols], b["terms_bpd"][:, cols], rtol=1e-5, atol=1e-7
    )
    if fixed == "beta":  # the learned decoder has variance beta_0, the fixed one beta~_1
        assert not torch.allclose(a["decoder_bpd"], b["decoder_bpd"])
    fixed_of_learned = vlb_terms(
        learned, sched, x0, variance=fixed, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(fixed_of_learned["total_bpd"], b["total_bpd"])


# ----------------------------------------------------------------------------- end to end

TINY = [
    "--set", 'data.name="digits"',
    "--set", "model.base_channels=8",
    "--set", "model.channel_mults=[1, 2]",
    "--set", "model.attention_resolutions=[]",
    "--set", "model.groups=4",
    "--set", "model.num_res_blocks=1",
    "--set", "model.patch_size=1",
    "--set", "diffusion.num_steps=50",
    "--set", "train.batch_size=16",
    "--set", "train.log_every=5",
    "--set", "train.sample_every=0",
    "--set", "train.checkpoint_every=20",
    "--set", "sample.steps=4",
    "--set", "sample.num=10",
]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ddpmkit.cli import main

    out = {}
    for arm, flag in (("learned", "true"), ("fixed", "false")):
        folder = tmp_path_factory.mktemp(arm) / "run"
        # the preset's v-prediction and min-SNR weighting compose with the hybrid loss
        args = ["train", "fashion_mnist", "--out", str(folder), "--steps", "20", "--no-progress"]
        assert main([*args, *TINY, "--set", f"diffusion.learn_sigma={flag}"]) == 0
        out[arm] = folder
    return out


def test_learned_run_trains_samples_and_evaluates(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    from ddpmkit.cli import main

    run = runs["learned"]
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["config"]["diffusion"]["learn_sigma"] is True
    weights = load_file(run / "model" / "model.safetensors")
    assert weights["out.2.weight"].shape[0] == 2  # [prediction; v] of one channel
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records)
    for sampler, steps in (("ddpm", "10"), ("ddim", "4"), ("unipc", "4")):
        out = tmp_path / sampler
        args = ["sample", str(run), "--sampler", sampler, "--steps", steps, "--num", "4"]
        capsys.readouterr()
        assert main([*args, "--label", "3", "--guidance", "2", "--out", str(out)]) == 0
        # the settings line says when the learned variances are used (ddpm only)
        said = "learned variances" in capsys.readouterr().err.splitlines()[0]
        assert said == (sampler == "ddpm"), sampler
        z = np.load(out / "samples.npz")
        assert z["images"].shape == (4, 1, 8, 8) and z["images"].dtype == np.uint8
    ev = tmp_path / "ev"
    args = ["eval", str(run), "--num", "8", "--sampler", "ddpm", "--steps", "5"]
    more = ["--bpd-images", "6", "--bpd-timesteps", "4", "--memorisation", "0", "--out", str(ev)]
    assert main([*args, *more]) == 0, capsys.readouterr().err
    like = json.loads((ev / "eval.json").read_text())["likelihood"]
    assert like["variance"].startswith("learned") and math.isfinite(like["bpd"]) and like["bpd"] > 0


def test_saved_run_without_the_keys_still_loads(runs: dict[str, Path]) -> None:
    from ddpmkit.trained import load

    run = runs["fixed"]
    before = load(run).sample(num=3, sampler="ddpm", steps=5, seed=1)
    path = run / "model" / "config.json"
    meta = json.loads(path.read_text())
    for key in ("learn_sigma", "vlb_weight"):  # as written before learned variances existed
        del meta["config"]["diffusion"][key]
    path.write_text(json.dumps(meta))
    m = load(run)
    assert m.config.diffusion.learn_sigma is False
    assert np.array_equal(m.sample(num=3, sampler="ddpm", steps=5, seed=1), before)


def _ddpm_output_variance(abar: torch.Tensor, ts: list[int], s2: float, var: str) -> float:
    """Var[x_0] that DDPM ancestral sampling with the exact posterior-mean predictor gives for
    N(mu, s2) data, by the linear recursion of its steps: with g_t = abar_t s2 + 1 - abar_t,
    E[x_0 | x_t] is affine in x_t with slope sqrt(abar_t) s2 / g_t, and a step t -> s is
    x_s = (c0 slope + cx) x_t + const + sigma z, so v_s = (c0 slope + cx)^2 v_t + sigma^2;
    the last step (to s = -1) returns E[x_0 | x_t] itself. v starts at 1 (x_T ~ N(0, 1))."""
    v = 1.0
    for i, t in enumerate(ts):
        ab_t = float(abar[t])
        slope = math.sqrt(ab_t) * s2 / (ab_t * s2 + 1 - ab_t)
        if i + 1 == len(ts):
            return slope**2 * v
        ab_s = float(abar[ts[i + 1]])
        beta = 1 - ab_t / ab_s
        c0 = math.sqrt(ab_s) * beta / (1 - ab_t)
        cx = math.sqrt(ab_t / ab_s) * (1 - ab_s) / (1 - ab_t)
        sigma2 = beta if var == "beta" else beta * (1 - ab_s) / (1 - ab_t)
        v = (c0 * slope + cx) ** 2 * v + sigma2
    raise AssertionError("unreachable")


def test_sample_settings_variance_reaches_ddpm_and_matches_the_recursion() -> None:
    from ddpmkit.evaluation.oracle import GaussianOracle
    from ddpmkit.sample_settings import SampleSettings, SettingsError, draw

    sched = NoiseSchedule.from_name("linear", 1000)
    mu, s = 0.3, 0.5
    oracle = GaussianOracle(sched, mu, s)
    ts = [999, 600, 250, 60, 0]
    got = {}
    for var in ("beta", "posterior"):
        settings = SampleSettings(sampler="ddpm", timesteps=tuple(ts), variance=var)
        r = settings.resolve(sched, conditional=False)
        assert f"variance {var}" in r.describe() and r.as_dict()["variance"] == var
        x = draw(oracle, sched, r, shape=(1,), num=20000, seed=0).double()
        want = _ddpm_output_variance(sched.alphas_bar.double(), ts, s**2, var)
        got[var] = float(x.var())
        # 20,000 samples: the sample variance's relative s.e. is sqrt(2 / N) = 1%
        assert got[var] == pytest.approx(want, rel=0.05), (var, got[var], want)
    assert got["beta"] > got["posterior"] * 1.05  # the two settings are distinguishable here
    with pytest.raises(SettingsError, match="variance: applies to sampler ddpm"):
        SampleSettings(sampler="dpmpp", variance="posterior").resolve(sched, conditional=False)
    with pytest.raises(SettingsError, match="variance: 'wide' is not allowed"):
        SampleSettings(sampler="ddpm", variance="wide").resolve(sched, conditional=False)


def test_sample_variance_flag(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ddpmkit.cli import main

    base = ["sample", "--sampler", "ddpm", "--steps", "5", "--num", "2", "--label", "1"]
    fixed, learned = str(runs["fixed"]), str(runs["learned"])
    capsys.readouterr()
    assert main([base[0], fixed, *base[1:], "--variance", "posterior",
                 "--out", str(tmp_path / "a")]) == 0  # fmt: skip
    assert "variance posterior" in capsys.readouterr().err.splitlines()[0]
    assert main([base[0], learned, *base[1:], "--variance", "beta",
                 "--out", str(tmp_path / "b")]) == 0  # fmt: skip
    line = capsys.readouterr().err.splitlines()[0]
    assert "variance beta" in line and "learned variances" not in line
    assert main([base[0], fixed, *base[1:], "--variance", "learned",
                 "--out", str(tmp_path / "c")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "learn_sigma = true" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c").exists()
