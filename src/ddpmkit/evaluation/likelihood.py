"""Negative log-likelihood in bits/dim through the variational bound (Ho et al. 2020, Eq. 5).

    L = L_T + sum_{t=1}^{T-1} L_{t} + L_0       (0-based indices, as everywhere in ddpmkit)
    L_T   = KL(q(x_{T-1} | x_0) || N(0, I))                          (prior term)
    L_t   = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))       (t >= 1)
    L_0   = -log p_theta(x_0 | x_0-noised-once), discretised Gaussian decoder over 256 bins of
            width 2/255 in [-1, 1], edge bins extended to -inf/+inf (Ho et al. Sec. 3.3)

p_theta has the posterior mean with the model's x_0 estimate and a fixed variance: the
posterior's beta~_t (``variance="posterior"``) or beta_t (``"beta"``), as in improved-diffusion's
``vb_terms_bpd``. Each L_t uses one draw of x_t (an unbiased estimate of the bound); with
``num_timesteps < T - 1`` one t per stratum of the t range is drawn and weighted by the
stratum's width (stratified sampling, still unbiased).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ddpmkit.diffusion import model_output_to_eps_x0, q_posterior, q_sample
from ddpmkit.schedule import NoiseSchedule, expand_like

__all__ = ["discretized_gaussian_log_likelihood", "normal_kl", "vlb_terms"]


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1.0
    )


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log P(bin of x) under N(means, e^(2 log_scales)), bins of width 2/255 centred on the 256
    levels of [-1, 1]; the lowest bin extends to -inf and the highest to +inf. Elementwise, nats."""
    x, means, log_scales = x.double(), means.double(), log_scales.double()
    centred = x - means
    inv = torch.exp(-log_scales)
    cdf_plus = _std_normal_cdf(inv * (centred + 1.0 / 255))
    cdf_min = _std_normal_cdf(inv * (centred - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta)
    )


def _flat_sum(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).sum(dim=1)


@torch.no_grad()
def vlb_terms(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    y: Tensor | None = None,
    prediction: str = "eps",
    variance: str = "posterior",
    num_timesteps: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Per-sample bound terms in bits/dim: prior, vb (sum of L_t, t >= 1), decoder (L_0), total.

    x0: data in [-1, 1] on the 256-level grid, shape (B, *D). Returns tensors of shape (B,).
    """
    if variance not in ("posterior", "beta"):
        raise ValueError(f"unknown variance {variance!r}; expected 'posterior' or 'beta'")
    T = schedule.num_steps
    b = x0.shape[0]
    dims = x0[0].numel()
    to_bits = 1.0 / (dims * math.log(2.0))
    x0 = x0.double()

    def model_mean_logvar(x_t: Tensor, tt: Tensor) -> tuple[Tensor, Tensor]:
        out = (model(x_t.float(), tt) if y is None else model(x_t.float(), tt, y)).double()
        _, x0_pred = model_output_to_eps_x0(schedule, x_t, tt, out, prediction)
        mean, _, post_logvar = q_posterior(schedule, x0_pred.clamp(-1, 1), x_t, tt)
        if variance == "posterior":
            logvar = post_logvar
        else:  # beta_t, with beta~_1 at t = 0 as improved-diffusion's "fixed large"
            large = schedule.betas.clone()
            if T > 1:
                large[0] = schedule.posterior_variance[1]
            logvar = expand_like(large.to(x_t.device)[tt].log(), x_t)
        return mean.double(), logvar.double()

    def draw(tt: Tensor) -> Tensor:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
        return q_sample(schedule, x0, tt, noise)

    # Prior: q(x_{T-1} | x_0) = N(sqrt(abar) x0, 1 - abar) against N(0, 1).
    abar_T = float(schedule.alphas_bar[T - 1])
    prior = _flat_sum(
        normal_kl(
            math.sqrt(abar_T) * x0,
            torch.full_like(x0, math.log(1 - abar_T)),
            torch.zeros_like(x0),
            torch.zeros_like(x0),
        )
    )
    # Strata of the t range (each t >= 1 alone, or num_timesteps strata of equal width): per
    # sample, one t drawn uniformly in each stratum and weighted by its width (stratified
    # sampling: unbiased; a fixed stride is not, because the terms change fast near t = 1).
    if num_timesteps is not None and 0 < num_timesteps < T - 1:
        edges = torch.linspace(1, T, num_timesteps + 1).round().long().tolist()
    else:
        edges = list(range(1, T + 1))
    vb = torch.zeros(b, dtype=torch.float64, device=x0.device)
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        tt = (lo + torch.randint(0, hi - lo, (b,), generator=generator)).to(x0.device)
        x_t = draw(tt)
        true_mean, _, true_logvar = q_posterior(schedule, x0, x_t, tt)
        mean, logvar = model_mean_logvar(x_t, tt)
        kl = normal_kl(
            true_mean.double(), true_logvar.double().expand_as(x0), mean, logvar.expand_as(x0)
        )
        vb += float(hi - lo) * _flat_sum(kl)
    # Decoder L_0: -log p(x0 | x at t = 0), discretised.
    t0 = torch.zeros(b, dtype=torch.long, device=x0.device)
    mean, logvar = model_mean_logvar(draw(t0), t0)
    decoder = -_flat_sum(discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar.expand_as(x0)))
    prior, vb, decoder = prior * to_bits, vb * to_bits, decoder * to_bits
    return {
        "prior_bpd": prior,
        "vb_bpd": vb,
        "decoder_bpd": decoder,
        "total_bpd": prior + vb + decoder,
    }
