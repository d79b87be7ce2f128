"""Learned variances (Nichol & Dhariwal 2021): the interpolated variance, the hybrid loss, the
DDPM sampler on respaced chains, bits/dim, and a tiny run through the CLI.

Every expected value is computed here independently of the library: Gaussian KLs by Monte
Carlo, bin probabilities of the discretised decoder by numerical integration of the Gaussian
density (scipy.integrate.quad), schedule quantities from the betas in float64 Python floats.
"""

from __future__ import annotations

import math

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
