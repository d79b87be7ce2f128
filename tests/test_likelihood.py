"""The variational bound in bits/dim, against independent computations on Gaussian data.

Data x_0 ~ N(mu, diag(s^2)) quantised to the 256 levels of [-1, 1]; the model is the exact
predictor ``GaussianOracle``. Every term is recomputed here in plain Python floats (float64)
from the betas alone: q(x_{t-1} | x_t, x_0) by conditioning the forward chain, Gaussian KL and
the discretised decoder written out with math.erf.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpmkit.evaluation.likelihood import (
    discretized_gaussian_log_likelihood,
    normal_kl,
    timestep_strata,
    vlb_terms,
)
from ddpmkit.evaluation.oracle import GaussianOracle
from ddpmkit.schedule import NoiseSchedule, make_betas

MU, S = 0.1, 0.3


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Snap to the 256-level grid of [-1, 1]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def kl(m1: float, v1: float, m2: float, v2: float) -> float:
    return 0.5 * (math.log(v2 / v1) + v1 / v2 + (m1 - m2) ** 2 / v2 - 1)


def phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def log_bin_probability(x: float, m: float, sd: float) -> float:
    upper = 1.0 if x > 0.999 else phi((x + 1 / 255 - m) / sd)
    lower = 0.0 if x < -0.999 else phi((x - 1 / 255 - m) / sd)
    return math.log(max(upper - lower, 1e-12))


def as_x0_model(schedule: NoiseSchedule, eps_model: GaussianOracle):  # noqa: ANN201
    """The same predictor answering with x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
    abar = schedule.alphas_bar.double()

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = abar[t].reshape(-1, *([1] * (x.ndim - 1)))
        return ((x.double() - (1 - ab).sqrt() * eps_model(x, t).double()) / ab.sqrt()).float()

    return model


@pytest.mark.parametrize(
    ("variance", "prediction"), [("posterior", "eps"), ("beta", "eps"), ("posterior", "x0")]
)
def test_every_term_matches_a_direct_computation(variance: str, prediction: str) -> None:
    T, B = 6, 4
    betas = make_betas("linear", T).tolist()  # python floats, float64
    sched = NoiseSchedule.from_betas(betas)
    mu, sd = [0.1, -0.4], [0.3, 0.8]
    oracle = GaussianOracle(sched, torch.tensor(mu), torch.tensor(sd))
    model = oracle if prediction == "eps" else as_x0_model(sched, oracle)
    x0 = quantise(torch.tensor([[-0.5, 1.0], [0.2, -1.0], [0.9, 0.0], [1.0, 0.33]]))
    got = vlb_terms(
        model,
        sched,
        x0,
        variance=variance,
        prediction=prediction,
        generator=torch.Generator().manual_seed(0),
    )
    # The same draws, in vlb_terms' documented order: per t = 1..T-1 the (trivial) t draw and
    # the noise, then the decoder's noise.
    g = torch.Generator().manual_seed(0)
    noise = {}
    for t in range(1, T):
        torch.randint(0, 1, (B,), generator=g)
        noise[t] = torch.randn(B, 2, generator=g, dtype=torch.float64).tolist()
    noise[0] = torch.randn(B, 2, generator=g, dtype=torch.float64).tolist()
    abar = [math.prod(1 - b for b in betas[: t + 1]) for t in range(T)]
    beta_tilde = [0.0] + [betas[t] * (1 - abar[t - 1]) / (1 - abar[t]) for t in range(1, T)]
    model_var = [beta_tilde[1]] + (beta_tilde[1:] if variance == "posterior" else betas[1:])

    def x0_hat(xt: float, t: int, d: int) -> float:
        ab = abar[t]
        eps = math.sqrt(1 - ab) * (xt - math.sqrt(ab) * mu[d]) / (ab * sd[d] ** 2 + 1 - ab)
        return max(-1.0, min(1.0, (xt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)))

    bits = 2 * math.log(2)  # nats -> bits per dim, D = 2
    for i in range(B):
        terms = [0.0] * T
        for d in range(2):
            x = float(x0[i, d])
            for t in range(1, T):
                a_t, ab, ab_prev = 1 - betas[t], abar[t], abar[t - 1]
                xt = math.sqrt(ab) * x + math.sqrt(1 - ab) * noise[t][i][d]
                # (x_{t-1}, x_t) given x_0: jointly Gaussian; condition on x_t.
                v_prev, cov = 1 - ab_prev, math.sqrt(a_t) * (1 - ab_prev)
                v_t = a_t * (1 - ab_prev) + betas[t]
                # E[x_{t-1} | x_t, x_0 = z] = sqrt(abar_{t-1}) z + cov / v_t (x_t - sqrt(abar_t) z)
                z_hat = x0_hat(xt, t, d)
                m_true = math.sqrt(ab_prev) * x + cov / v_t * (xt - math.sqrt(ab) * x)
                m_model = math.sqrt(ab_prev) * z_hat + cov / v_t * (xt - math.sqrt(ab) * z_hat)
                var_true = v_prev - cov**2 / v_t
                assert var_true == pytest.approx(beta_tilde[t], rel=1e-9)
                terms[t] += kl(m_true, var_true, m_model, model_var[t])
            x_first = math.sqrt(abar[0]) * x + math.sqrt(1 - abar[0]) * noise[0][i][d]
            terms[0] -= log_bin_probability(x, x0_hat(x_first, 0, d), math.sqrt(model_var[0]))
        prior = sum(kl(math.sqrt(abar[-1]) * float(x0[i, d]), 1 - abar[-1], 0, 1) for d in (0, 1))
        assert float(got["prior_bpd"][i]) == pytest.approx(prior / bits, rel=1e-6)
        # The model takes and returns float32 (the contract): x_0 estimates carry relative
        # errors ~1e-7, and a KL term proportional to (x_0 - x0_hat)^2 with x_0 - x0_hat ~ 1e-2
        # then moves by ~1e-5 relative; 1e-3 still catches any wrong coefficient.
        for t in range(T):
            assert float(got["terms_bpd"][i, t]) == pytest.approx(
                terms[t] / bits, rel=1e-3, abs=1e-9
            ), (i, t)
        assert float(got["decoder_bpd"][i]) == pytest.approx(terms[0] / bits, rel=1e-3)
        assert float(got["vb_bpd"][i]) == pytest.approx(sum(terms[1:]) / bits, rel=1e-3)
        total = (prior + sum(terms)) / bits
        assert float(got["total_bpd"][i]) == pytest.approx(total, rel=1e-3)
        assert float(got["total_bpd"][i]) == pytest.approx(
            float(got["prior_bpd"][i] + got["terms_bpd"][i].sum()), rel=1e-12
        )


def test_normal_kl_and_discretised_decoder() -> None:
    m1, lv1, m2, lv2 = (torch.tensor(v, dtype=torch.float64) for v in (0.3, -1.0, -0.2, 0.5))
    want = kl(0.3, math.exp(-1.0), -0.2, math.exp(0.5))
    assert float(normal_kl(m1, lv1, m2, lv2)) == pytest.approx(want, rel=1e-12)
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_scale in [(0.0, -2.0), (0.7, -4.0), (-1.0, 0.0), (0.95, -6.0)]:
        logp = discretized_gaussian_log_likelihood(
            levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale)
        )
        assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-6)
        for k in (0, 1, 100, 128, 254, 255):
            want = log_bin_probability(float(levels[k]), mean, math.exp(log_scale))
            assert float(logp[k]) == pytest.approx(want, rel=1e-9, abs=1e-9), (mean, k)
    # Top bin far in the tail (z = 4.8 and 6.4, P ~ 1e-10): 1 - Phi(z) without cancellation.
    for sd in (0.02, 0.015):
        top = discretized_gaussian_log_likelihood(
            *(torch.tensor([v], dtype=torch.float64) for v in (1.0, 0.9, math.log(sd)))
        )
        z = (1 - 1 / 255 - 0.9) / sd
        assert float(top) == pytest.approx(math.log(0.5 * math.erfc(z / math.sqrt(2))), rel=1e-12)


def test_strata() -> None:
    assert timestep_strata(5, None) == [(1, 2), (2, 3), (3, 4), (4, 5)]
    assert timestep_strata(5, 10) == timestep_strata(5, None)
    strata = timestep_strata(1000, 7)
    assert len(strata) == 7 and strata[0][0] == 1 and strata[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(strata, strata[1:]))
    assert timestep_strata(1, None) == []


def analytic_vb_bits(sched: NoiseSchedule, s: float) -> float:
    """E[sum_t L_t] for Gaussian data, exact predictor, posterior variance, no clamp.

    L_t = coef1_t^2 (x_0 - E[x_0 | x_t])^2 / (2 beta~_t) with coef1 = beta_t sqrt(abar_{t-1}) /
    (1 - abar_t); in expectation Var(x_0 | x_t) = s^2 (1 - abar_t) / (abar_t s^2 + 1 - abar_t).
    """
    ab, b = sched.alphas_bar.double(), sched.betas.double()
    total = 0.0
    for t in range(1, sched.num_steps):
        ratio = b[t] * ab[t - 1] / ((1 - ab[t]) * (1 - ab[t - 1]))  # coef1^2 / beta~
        mmse = s * s * (1 - ab[t]) / (ab[t] * s * s + 1 - ab[t])
        total += float(ratio * mmse / 2)
    return total / math.log(2)


def entropy_bits() -> float:
    """Entropy of N(MU, S^2) quantised to the 256 bins of [-1, 1]: the data's true NLL."""
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    mean, log_s = torch.full_like(levels, MU), torch.full_like(levels, math.log(S))
    p = discretized_gaussian_log_likelihood(levels, mean, log_s).exp()
    return float(-(p * p.clamp_min(1e-300).log2()).sum())


def gaussian_data(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return quantise(MU + S * torch.randn(n, 1, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("num_timesteps_eval", [None, 40])
def test_expected_bound_matches_closed_form_and_exceeds_entropy(
    num_timesteps_eval: int | None,
) -> None:
    sched = NoiseSchedule.from_name("cosine", 200)
    n = 4000
    terms = vlb_terms(
        GaussianOracle(sched, MU, S),
        sched,
        gaussian_data(n, 0),
        num_timesteps_eval=num_timesteps_eval,
        generator=torch.Generator().manual_seed(1),
    )
    vb = terms["vb_bpd"]
    se = float(vb.std()) / math.sqrt(n)
    # Quantisation of the data (bins 0.0078 against s = 0.3) and the clamp of x_0 estimates
    # (data beyond [-1, 1] is 0.1% of the mass) move the expectation by far less than 0.05 bits;
    # the rest is Monte Carlo noise (4 SE).
    assert float(vb.mean()) == pytest.approx(analytic_vb_bits(sched, S), abs=4 * se + 0.05)
    # Upper bound on the model's NLL, which is itself >= the data's entropy.
    assert float(terms["total_bpd"].mean()) > entropy_bits()
    if num_timesteps_eval is not None:  # one t per stratum and sample
        assert int((terms["terms_bpd"][:, 1:] != 0).sum(1).max()) <= num_timesteps_eval


def test_bound_is_close_to_the_entropy_and_tightens_with_finer_schedules() -> None:
    # With the exact predictor the slack is the fixed reverse variance (the true reverse
    # variance is beta~_t + coef1_t^2 Var(x_0 | x_t), between beta~_t and beta_t here) and the
    # Gaussian predictor's ignorance of the quantisation. Measured on 20,000 points over five
    # data/noise seeds (SE of a mean bound 0.015-0.03 bits), cosine schedule: variance beta_t,
    # T = 200: gap 0.10-0.14; beta~_t: 1.06-1.13 (T = 50), 0.91-0.99 (200), 0.60-0.73 (1000).
    x0 = gaussian_data(20_000, 2)
    h = entropy_bits()

    def gap(T: int, variance: str) -> float:
        sched = NoiseSchedule.from_name("cosine", T)
        terms = vlb_terms(
            GaussianOracle(sched, MU, S),
            sched,
            x0,
            variance=variance,
            num_timesteps_eval=100,
            generator=torch.Generator().manual_seed(0),
        )
        return float(terms["total_bpd"].mean()) - h

    close = gap(200, "beta")
    assert 0 < close < 0.2, close
    gaps = [gap(T, "posterior") for T in (50, 200, 1000)]
    assert gaps[0] > gaps[1] + 0.05 and gaps[1] > gaps[2] + 0.15 and gaps[2] > close, gaps
