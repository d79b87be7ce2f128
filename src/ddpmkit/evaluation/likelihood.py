"""Negative log-likelihood in bits/dim through the variational bound (Ho et al. 2020, Eq. 5).

With 0-based timesteps (as everywhere in ddpmkit: x_t for t in [0, T), x_0 data has no index in
the schedule, "t = 0" is one step of noise), for one data point x_0:

    -log p_theta(x_0) <= L = L_prior + sum_{t=1}^{T-1} L_t + L_dec
    L_prior = KL(q(x_{T-1} | x_0) || N(0, I))                            (L_T in Ho et al.)
    L_t     = E_q KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))     (t >= 1; L_{t-1})
    L_dec   = E_q -log p_theta(x_0 | x_{t=0})                            (L_0 in Ho et al.)

p_theta(x_{t-1} | x_t) = N(mu~_t(x_t, x0_hat), sigma_t^2 I): the posterior mean (Ho et al. Eq. 7)
with the model's x_0 estimate (clamped to [-1, 1] by default, ``clip_denoised``) and a fixed
variance, beta~_t (``variance="posterior"``) or beta_t (``"beta"``; at t = 0 it is beta~ of
t = 1, improved-diffusion's "fixed large"), or, for a model with learned variances (output
[prediction; v], twice the channels), the learned one (``"learned"``, Nichol & Dhariwal 2021
Eq. 15: log sigma_t^2 = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1) / 2, beta~
clipped at t = 0), which is what ``variance=None`` (the default) picks for such a model.
The decoder L_dec is the discretised Gaussian of Ho et al. Sec. 3.3: 256 bins of width 2/255
centred on the levels of [-1, 1], the two edge bins extended to -inf and +inf. This follows
improved-diffusion's ``vb_terms_bpd``/``calc_bpd_loop`` (Nichol & Dhariwal 2021); bits/dim
divide nats by D log 2.

Each L_t (and L_dec) is estimated with one draw of x_t ~ q(x_t | x_0) per data point, so every
term is an unbiased estimate of the bound. ``num_timesteps_eval = None`` evaluates every
t = 1 ... T-1 (T - 1 network calls per batch, as ``calc_bpd_loop``). With
``num_timesteps_eval = S < T - 1`` the range 1 ... T-1 is cut into S contiguous strata of
(nearly) equal width; per data point one t is drawn uniformly inside each stratum and its term
is multiplied by the stratum's width (stratified importance sampling, still unbiased; a
fixed stride would be biased, because the terms change by orders of magnitude near t = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ddpmkit.diffusion import (
    PREDICTIONS,
    learned_log_variance,
    model_output_to_eps_x0,
    q_posterior,
    q_sample,
    split_variance_output,
)
from ddpmkit.gaussians import (  # the closed forms live at layer 0; re-exported here
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    normal_kl,
)
from ddpmkit.schedule import NoiseSchedule, expand_like

__all__ = [
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
    "timestep_strata",
    "vlb_terms",
]


def timestep_strata(num_steps: int, num_timesteps_eval: int | None) -> list[tuple[int, int]]:
    """Strata [lo, hi) covering t = 1 ... T-1: one per t (None, or S >= T - 1), else S strata
    of nearly equal width."""
    T = num_steps
    if T < 2:
        return []
    if num_timesteps_eval is None or num_timesteps_eval >= T - 1:
        return [(t, t + 1) for t in range(1, T)]
    if num_timesteps_eval < 1:
        raise ValueError(f"num_timesteps_eval must be >= 1 or None, got {num_timesteps_eval!r}")
    edges = torch.linspace(1, T, num_timesteps_eval + 1, dtype=torch.float64).round().long()
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if int(b) > int(a)]


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
    variance: str | None = None,
    num_timesteps_eval: int | None = None,
    clip_denoised: bool = True,
    generator: torch.Generator | None = None,
    max_batch_elements: int = 1 << 21,
) -> dict[str, Tensor]:
    """Per-sample terms of the variational bound in bits/dim (see the module docstring).

    Args:
        model: ``model(x_t, t)`` or ``model(x_t, t, y)`` (float32 x_t, long t), output of the
            kind ``prediction`` ("eps", "x0" or "v").
        x0: data on the 256-level grid of [-1, 1], shape (B, *D).
        variance: the reverse variance: "posterior" (beta~_t) or "beta" (beta_t), fixed, or
            "learned" (the model's v, Eq. 15); None = "learned" for a model that outputs v
            (twice the channels), else "posterior".
        num_timesteps_eval: None for all T - 1 terms, or S strata (stratified sampling).
        generator: source of the t draws and of the noise of every x_t.
        max_batch_elements: several strata are evaluated in one model call while the batch
            has at most this many elements (at least one stratum, B samples, per call).

    Returns (all float64, on x0's device):
        prior_bpd (B,), vb_bpd (B,) the (weighted) sum of L_t over t >= 1, decoder_bpd (B,),
        total_bpd (B,) = prior + vb + decoder, and terms_bpd (B, T): column 0 is the decoder
        term and column t >= 1 the weighted L_t of the t drawn for that sample (0 elsewhere),
        so terms_bpd.sum(1) + prior_bpd = total_bpd.
    """
    if variance not in (None, "posterior", "beta", "learned"):
        raise ValueError(
            f"unknown variance {variance!r}; expected None, 'posterior', 'beta' or 'learned'"
        )
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {list(PREDICTIONS)}")
    T = schedule.num_steps
    b = x0.shape[0]
    dims = x0[0].numel()
    to_bits = 1.0 / (dims * math.log(2.0))
    device = x0.device
    x0 = x0.double()
    if variance != "beta":  # "posterior", or the learned variance's fallback (never used)
        logvar_table = schedule.posterior_log_variance_clipped.double()
    else:
        large = schedule.betas.double().clone()
        if T > 1:
            large[0] = schedule.posterior_variance.double()[1]
        logvar_table = large.log()
    logvar_table = logvar_table.to(device)

    def model_mean_logvar(x_t: Tensor, tt: Tensor, yy: Tensor | None) -> tuple[Tensor, Tensor]:
        xf = x_t.float()
        out, v = split_variance_output(
            (model(xf, tt) if yy is None else model(xf, tt, yy)).double(), x_t
        )
        if variance == "learned" and v is None:
            raise ValueError(
                "variance='learned' needs a model with learned variances (output [prediction; "
                "v], twice the channels); this one returns the input's shape"
            )
        _, x0_pred = model_output_to_eps_x0(schedule, x_t, tt, out, prediction)
        if clip_denoised:
            x0_pred = x0_pred.clamp(-1, 1)
        mean, _, _ = q_posterior(schedule, x0_pred, x_t, tt)
        if v is not None and variance in (None, "learned"):
            return mean, learned_log_variance(schedule, tt, v)
        return mean, expand_like(logvar_table[tt], x_t)

    def draw(tt: Tensor) -> Tensor:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(device)
        return q_sample(schedule, x0, tt, noise)

    # Prior: q(x_{T-1} | x_0) = N(sqrt(abar) x0, 1 - abar) against N(0, 1).
    abar_last = schedule.alphas_bar.double()[T - 1].item()
    prior = _flat_sum(
        normal_kl(
            math.sqrt(abar_last) * x0,
            torch.full_like(x0, math.log(1.0 - abar_last)),
            torch.zeros_like(x0),
            torch.zeros_like(x0),
        )
    )
    terms = torch.zeros(b, T, dtype=torch.float64, device=device)
    strata = timestep_strata(T, num_timesteps_eval)
    per_call = max(1, max_batch_elements // max(b * dims, 1))  # strata per model call
    for start in range(0, len(strata), per_call):
        group = strata[start : start + per_call]
        ts, xts, widths = [], [], []
        for lo, hi in group:  # per stratum: t draws, then the noise (fixed order)
            tt = (lo + torch.randint(0, hi - lo, (b,), generator=generator)).to(device)
            ts.append(tt)
            xts.append(draw(tt))
            widths.append(float(hi - lo))
        tt, x_t = torch.cat(ts), torch.cat(xts)
        x0_rep = x0.repeat(len(group), *([1] * (x0.ndim - 1)))
        y_rep = None if y is None else y.repeat(len(group))
        true_mean, _, _ = q_posterior(schedule, x0_rep, x_t, tt)
        true_logvar = expand_like(
            schedule.posterior_log_variance_clipped.double().to(device)[tt], x_t
        )
        mean, logvar = model_mean_logvar(x_t, tt, y_rep)
        kl = _flat_sum(normal_kl(true_mean.double(), true_logvar, mean, logvar))  # (G * B,)
        for k, w in enumerate(widths):
            rows = slice(k * b, (k + 1) * b)
            terms[torch.arange(b, device=device), ts[k]] += w * kl[rows]
    # Decoder: -log p(x_0 | x at t = 0), discretised.
    t0 = torch.zeros(b, dtype=torch.long, device=device)
    mean, logvar = model_mean_logvar(draw(t0), t0, y)
    decoder = -_flat_sum(discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar.expand_as(x0)))
    terms[:, 0] = decoder
    terms = terms * to_bits
    prior = prior * to_bits
    vb = terms[:, 1:].sum(dim=1)
    return {
        "prior_bpd": prior,
        "vb_bpd": vb,
        "decoder_bpd": terms[:, 0].clone(),
        "total_bpd": prior + vb + terms[:, 0],
        "terms_bpd": terms,
    }
