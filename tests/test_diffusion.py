"""Forward process, posterior, parameterisations and the loss against independent derivations."""

from __future__ import annotations

import pytest
import torch

from ddpmkit.diffusion import (
    diffusion_loss,
    diffusion_loss_per_sample,
    eps_from_v,
    eps_from_x0,
    loss_weights,
    q_posterior,
    q_sample,
    sample_timesteps,
    v_from_eps,
    x0_from_eps,
    x0_from_v,
)
from ddpmkit.schedule import NoiseSchedule, make_betas


@pytest.mark.parametrize("t", [0, 5, 49])
def test_one_step_q_sample_matches_t_single_noising_steps(t: int) -> None:
    """One-step x_t matches t+1 single steps x_k = sqrt(1-b_k) x_{k-1} + sqrt(b_k) e."""
    betas = make_betas("linear", 50)
    s = NoiseSchedule.from_betas(betas)
    g = torch.Generator().manual_seed(1)
    n, x0 = 200_000, 0.7
    x = torch.full((n,), x0, dtype=torch.float64)
    for k in range(t + 1):
        x = torch.sqrt(1 - betas[k]) * x + torch.sqrt(betas[k]) * torch.randn(
            n, generator=g, dtype=torch.float64
        )
    direct = q_sample(
        s, torch.full((n, 1), x0), torch.full((n,), t), torch.randn(n, 1, generator=g)
    )
    # Mean: standard error <= 1/sqrt(n) = 0.0022; 5 SE for the difference of two means is 0.016.
    assert float(direct.mean()) == pytest.approx(float(x.mean()), abs=0.016)
    # Variance: SE of a sample variance of a Gaussian is var*sqrt(2/n) <= 0.0032.
    assert float(direct.var()) == pytest.approx(float(x.var()), abs=0.02)
    # And both agree with the closed form.
    abar = float(torch.prod(1 - betas[: t + 1]))
    assert float(x.mean()) == pytest.approx(abar**0.5 * x0, abs=0.012)
    assert float(x.var()) == pytest.approx(1 - abar, abs=0.012)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_posterior_equals_direct_gaussian_conditioning(name: str) -> None:
    betas = make_betas(name, 100)  # float64
    s = NoiseSchedule.from_betas(betas)
    x0 = torch.tensor([[0.3], [-1.2], [2.0]])
    x_t = torch.tensor([[0.1], [0.5], [-0.7]])
    for t in (0, 1, 37, 99):
        # Joint of (x_{t-1}, x_t) given x_0, from the definition of the chain, in float64:
        abar_prev = float(torch.prod(1 - betas[:t])) if t > 0 else 1.0
        a_t, b_t = 1 - float(betas[t]), float(betas[t])
        m1 = abar_prev**0.5 * x0.double()
        v1 = 1 - abar_prev
        cov = a_t**0.5 * v1
        v2 = a_t * v1 + b_t
        mean_ref = m1 + cov / v2 * (x_t.double() - a_t**0.5 * m1)
        var_ref = v1 - cov**2 / v2
        mean, var, _ = q_posterior(s, x0, x_t, torch.full((3,), t))
        assert torch.allclose(mean.double(), mean_ref, atol=1e-5), t
        assert float(var[0]) == pytest.approx(var_ref, abs=1e-7, rel=1e-4), t


def test_parameterisation_round_trips() -> None:
    s = NoiseSchedule.from_name("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    t = torch.arange(0, 1000, 37)
    x0 = torch.randn(len(t), 3, generator=g)
    eps = torch.randn(len(t), 3, generator=g)
    x_t = q_sample(s, x0, t, eps)
    v = v_from_eps(s, x0, t, eps)
    assert torch.allclose(eps_from_x0(s, x_t, t, x0), eps, atol=2e-3)
    assert torch.allclose(x0_from_v(s, x_t, t, v), x0, atol=1e-4)
    assert torch.allclose(eps_from_v(s, x_t, t, v), eps, atol=1e-4)
    keep = t < 900  # x0 from eps divides by sqrt(abar) -> ill-conditioned at the very end
    assert torch.allclose(x0_from_eps(s, x_t[keep], t[keep], eps[keep]), x0[keep], atol=1e-3)


def test_antithetic_timesteps_pair_t_with_T_minus_1_minus_t() -> None:
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(64, 100, antithetic=True, generator=g)
    assert t.shape == (64,) and t.dtype == torch.long
    assert torch.equal(t[32:], 99 - t[:32])
    t_odd = sample_timesteps(7, 100, antithetic=True, generator=g)
    assert t_odd.shape == (7,) and torch.equal(t_odd[4:], 99 - t_odd[:3])
    u = sample_timesteps(10_000, 100, generator=g)
    assert int(u.min()) == 0 and int(u.max()) == 99


def test_loss_targets_and_types() -> None:
    s = NoiseSchedule.from_name("linear", 100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 2, generator=g)
    t = torch.randint(0, 100, (8,), generator=g)
    noise = torch.randn(8, 2, generator=g)
    zero = lambda x, tt: torch.zeros_like(x)  # noqa: E731
    # With a zero predictor the MSE loss is the mean square of the target.
    assert float(diffusion_loss(zero, s, x0, t=t, noise=noise)) == pytest.approx(
        float(noise.square().mean())
    )
    assert float(diffusion_loss(zero, s, x0, t=t, noise=noise, prediction="x0")) == pytest.approx(
        float(x0.square().mean())
    )
    v = s.sqrt_alphas_bar[t, None] * noise - s.sqrt_one_minus_alphas_bar[t, None] * x0
    assert float(diffusion_loss(zero, s, x0, t=t, noise=noise, prediction="v")) == pytest.approx(
        float(v.square().mean()), rel=1e-5
    )
    assert float(diffusion_loss(zero, s, x0, t=t, noise=noise, loss_type="l1")) == pytest.approx(
        float(noise.abs().mean())
    )
    # The exact predictor has zero loss.
    exact = lambda x, tt: noise  # noqa: E731
    assert float(diffusion_loss(exact, s, x0, t=t, noise=noise)) == 0.0


def test_min_snr_weights() -> None:
    s = NoiseSchedule.from_name("linear", 1000)
    t = torch.tensor([0, 100, 500, 999])
    snr = (s.alphas_bar / (1 - s.alphas_bar))[t]
    gamma = 5.0
    w_eps = loss_weights(s, t, "eps", gamma)
    assert torch.allclose(w_eps, torch.minimum(snr, torch.tensor(gamma)) / snr)
    # Low noise (high SNR): down-weighted; high noise (SNR < gamma): weight 1 for eps.
    assert float(w_eps[0]) < 0.01 and float(w_eps[-1]) == pytest.approx(1.0)
    assert torch.allclose(
        loss_weights(s, t, "v", gamma), torch.minimum(snr, torch.tensor(gamma)) / (snr + 1)
    )
    # Weighted per-sample loss = weight * unweighted per-sample loss.
    zero = lambda x, tt: torch.zeros_like(x)  # noqa: E731
    x0 = torch.randn(4, 3)
    noise = torch.randn(4, 3)
    per, _ = diffusion_loss_per_sample(zero, s, x0, t=t, noise=noise, min_snr_gamma=gamma)
    assert torch.allclose(per, w_eps * noise.square().mean(1))


def test_wrong_shaped_model_output_is_a_clear_error() -> None:
    s = NoiseSchedule.from_name("linear", 10)
    bad = lambda x, t: x[:, :1]  # noqa: E731
    with pytest.raises(
        ValueError, match=r"model output has shape \(4, 1\) but the input has shape \(4, 2\)"
    ):
        diffusion_loss(bad, s, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="unknown prediction 'noise'"):
        diffusion_loss(bad, s, torch.zeros(4, 2), prediction="noise")
