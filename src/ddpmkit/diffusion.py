"""The Gaussian diffusion itself: forward process, posterior, parameterisations and the loss.

Pure functions of a :class:`~ddpmkit.schedule.NoiseSchedule` and tensors; randomness only from
arguments (a ``noise`` tensor or a ``torch.Generator``). Index ``t`` in ``[0, T)``; see
``ddpmkit.schedule`` for the convention.

Equations cite Ho et al. 2020 ("DDPM"), Salimans & Ho 2022 ("v"), Hang et al. 2023 ("min-SNR"),
Nichol & Dhariwal 2021 ("improved DDPM": learned variances and the hybrid loss).

Learned variances (``learn_sigma``): the network returns twice the input's channels (dim 1),
``[prediction; v]``; the reverse variance is interpolated in log space between beta_t and
beta~_t by frac = (v + 1) / 2 (:func:`interpolated_log_variance`, improved DDPM Eq. 15), and
trained by the VLB term of the hybrid loss L_simple + lambda L_vlb (Eq. 16) through a
stop-gradient on the mean (:func:`vlb_term_bits`, :func:`diffusion_loss_per_sample`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpmkit.gaussians import discretized_gaussian_log_likelihood, gaussian_log_density, normal_kl
from ddpmkit.schedule import NoiseSchedule, expand_like

__all__ = [
    "Prediction",
    "diffusion_loss",
    "diffusion_loss_per_sample",
    "eps_from_v",
    "eps_from_x0",
    "interpolated_log_variance",
    "learned_log_variance",
    "lognormal_timestep_probs",
    "loss_weights",
    "model_output_to_eps_x0",
    "q_posterior",
    "q_sample",
    "sample_timesteps",
    "split_variance_output",
    "v_from_eps",
    "vlb_term_bits",
    "x0_from_eps",
    "x0_from_v",
]

# the model-output parameterisations: the one list (config, CLI and samplers import it)
Prediction = Literal["eps", "x0", "v"]
PREDICTIONS: tuple[Prediction, ...] = get_args(Prediction)
# the decoder term -log p(x_0 | x_{t=0}) of the bound: 256-level images or continuous data
Decoder = Literal["discretized", "continuous"]
DEFAULT_VLB_WEIGHT = 0.001  # lambda of the hybrid loss (improved DDPM, Sec. 3.1)


def _gather(values: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """values[t] moved to x's device/dtype and shaped (B, 1, ..., 1)."""
    return expand_like(values.to(x.device)[t.to(x.device)].to(x.dtype), x)


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Draw x_t ~ q(x_t | x_0) (DDPM Eq. 4): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.

    Shapes: x0, noise (B, *D); t (B,) long in [0, T). Returns (B, *D).
    """
    return (
        _gather(schedule.sqrt_alphas_bar, t, x0) * x0
        + _gather(schedule.sqrt_one_minus_alphas_bar, t, x0) * noise
    )


def q_posterior(
    schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM Eqs. 6-7).

        mu~_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t) x_0
                + (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t) x_t
        beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t      (0 at t = 0: x_{-1} is x_0 exactly)

    Shapes: x0, x_t (B, *D); t (B,). Returns mean (B, *D), variance and log-variance (B, 1, ...).
    """
    mean = (
        _gather(schedule.posterior_mean_coef1, t, x_t) * x0
        + _gather(schedule.posterior_mean_coef2, t, x_t) * x_t
    )
    var = _gather(schedule.posterior_variance, t, x_t)
    log_var = _gather(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, var, log_var


def x0_from_eps(schedule: NoiseSchedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Invert Eq. 4: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    return (x_t - _gather(schedule.sqrt_one_minus_alphas_bar, t, x_t) * eps) / _gather(
        schedule.sqrt_alphas_bar, t, x_t
    )


def eps_from_x0(schedule: NoiseSchedule, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """Invert Eq. 4 for the noise: eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
    return (x_t - _gather(schedule.sqrt_alphas_bar, t, x_t) * x0) / _gather(
        schedule.sqrt_one_minus_alphas_bar, t, x_t
    )


def v_from_eps(schedule: NoiseSchedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Velocity target (Salimans & Ho 2022, Sec. 4): v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""
    return (
        _gather(schedule.sqrt_alphas_bar, t, x0) * eps
        - _gather(schedule.sqrt_one_minus_alphas_bar, t, x0) * x0
    )


def x0_from_v(schedule: NoiseSchedule, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v (the rotation inverse of the v definition)."""
    return (
        _gather(schedule.sqrt_alphas_bar, t, x_t) * x_t
        - _gather(schedule.sqrt_one_minus_alphas_bar, t, x_t) * v
    )


def eps_from_v(schedule: NoiseSchedule, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v."""
    return (
        _gather(schedule.sqrt_one_minus_alphas_bar, t, x_t) * x_t
        + _gather(schedule.sqrt_alphas_bar, t, x_t) * v
    )


def model_output_to_eps_x0(
    schedule: NoiseSchedule, x_t: Tensor, t: Tensor, out: Tensor, prediction: str
) -> tuple[Tensor, Tensor]:
    """Turn a network output of the given parameterisation into the pair (eps, x_0)."""
    if prediction == "eps":
        return out, x0_from_eps(schedule, x_t, t, out)
    if prediction == "x0":
        return eps_from_x0(schedule, x_t, t, out), out
    if prediction == "v":
        return eps_from_v(schedule, x_t, t, out), x0_from_v(schedule, x_t, t, out)
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {list(PREDICTIONS)}")


def split_variance_output(out: Tensor, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """A network output as (prediction, v): v is None when ``out`` has x's shape; an output with
    twice x's channels (dim 1; the rest as x) is a learned-variance model's [prediction; v].

    Raises ValueError for any other shape (the model contract of ARCHITECTURE.md).
    """
    if out.shape == x.shape:
        return out, None
    if out.ndim == x.ndim >= 2 and out.shape[1] == 2 * x.shape[1] and out.shape[2:] == x.shape[2:]:
        pred, v = out.chunk(2, dim=1)
        return pred, v
    raise ValueError(
        f"model output has shape {tuple(out.shape)} but the input has shape {tuple(x.shape)}; "
        "the network must return one value per input value (or two per value with learned "
        "variances: [prediction; v] along dim 1)"
    )


def interpolated_log_variance(
    v: Tensor, log_beta: Tensor | float, log_beta_tilde: Tensor | float
) -> Tensor:
    """improved DDPM Eq. 15: log Sigma = frac log beta_t + (1 - frac) log beta~_t,
    frac = (v + 1) / 2, so v = 1 gives beta_t and v = -1 gives beta~_t.

    v is used as the network returns it, not clamped (as improved-diffusion's learned_range);
    arguments broadcast (the ends may be Python floats, a sampler's step).
    """
    frac = (v + 1.0) / 2.0
    return frac * log_beta + (1.0 - frac) * log_beta_tilde


def learned_log_variance(schedule: NoiseSchedule, t: Tensor, v: Tensor) -> Tensor:
    """The model's log-variance of p(x_{t-1} | x_t) (Eq. 15) at the schedule's timesteps t (B,):
    beta_t and beta~_t, log beta~ clipped at t = 0 (``posterior_log_variance_clipped``, as
    improved-diffusion). v (B, *D) -> (B, *D)."""
    log_beta = _gather(schedule.betas.log(), t, v)
    log_beta_tilde = _gather(schedule.posterior_log_variance_clipped, t, v)
    return interpolated_log_variance(v, log_beta, log_beta_tilde)


def vlb_term_bits(
    schedule: NoiseSchedule,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    mean: Tensor,
    log_var: Tensor,
    *,
    decoder: Decoder = "discretized",
) -> Tensor:
    """One term of the variational bound per sample, in bits per dimension, shape (B,):

        t >= 1: L_t   = KL(q(x_{t-1} | x_t, x_0) || N(mean, e^log_var))     (DDPM Eq. 5)
        t  = 0: L_dec = -log p(x_0 | x_{t=0}), the discretised Gaussian of DDPM Eq. 13 for
                images on the 256 levels of [-1, 1] (``decoder="discretized"``), the Gaussian
                density for continuous data (``"continuous"``)

    each averaged over the dimensions and divided by log 2 (improved-diffusion's
    ``_vb_terms_bpd``). The KL's q uses beta~ clipped at t = 0, where the decoder is used.
    """
    true_mean, _, true_log_var = q_posterior(schedule, x0, x_t, t)
    b = x0.shape[0]
    kl = normal_kl(true_mean.float(), true_log_var.float(), mean.float(), log_var.float())
    if decoder == "discretized":
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
    elif decoder == "continuous":
        nll = -gaussian_log_density(x0.float(), mean.float(), log_var.float())
    else:
        raise ValueError(f"unknown decoder {decoder!r}; expected 'discretized' or 'continuous'")
    per_kl = kl.reshape(b, -1).mean(dim=1) / math.log(2.0)
    per_nll = nll.float().reshape(b, -1).mean(dim=1) / math.log(2.0)
    return torch.where(t.to(per_kl.device) == 0, per_nll, per_kl)


def sample_timesteps(
    batch_size: int,
    num_steps: int,
    *,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Training timesteps, shape (B,) long in [0, T).

    Uniform by default. ``antithetic=True`` is seed 002's variance reduction: draw half the batch
    uniformly and pair each t with T - 1 - t (for odd B the extra one is uniform).
    """
    if not antithetic:
        return torch.randint(0, num_steps, (batch_size,), generator=generator, device="cpu").to(
            device
        )
    half = batch_size // 2
    t = torch.randint(0, num_steps, (batch_size - half,), generator=generator, device="cpu")
    return torch.cat([t, num_steps - 1 - t[:half]]).to(device)


def lognormal_timestep_probs(schedule: NoiseSchedule, p_mean: float, p_std: float) -> Tensor:
    """The probabilities (T,) of drawing each training t when ln sigma ~ N(p_mean, p_std^2).

    EDM's training noise distribution (Karras et al. 2022, Sec. 5 and Table 1: P_mean = -1.2,
    P_std = 1.2) on a discrete VP schedule, with sigma_t = sqrt((1 - abar_t) / abar_t) the
    noise-to-signal ratio of x_t / sqrt(abar_t). A drawn sigma goes to the t whose ln sigma_t
    is nearest: t gets the normal mass between the midpoints of ln sigma_{t-1}, ln sigma_t and
    ln sigma_t, ln sigma_{t+1},

        P(t) = Phi((m_t+ - p_mean) / p_std) - Phi((m_t- - p_mean) / p_std),

    with the tails below the first and above the last midpoint going to t = 0 and t = T - 1.
    Requires ln sigma_t increasing in t (every schedule of ``ddpmkit.schedule`` is).
    """
    abar = schedule.alphas_bar.double()
    log_sigma = 0.5 * (torch.log1p(-abar) - torch.log(abar))
    mids = 0.5 * (log_sigma[1:] + log_sigma[:-1])
    normal = torch.distributions.Normal(
        torch.tensor(p_mean, dtype=torch.float64), torch.tensor(p_std, dtype=torch.float64)
    )
    cdf = normal.cdf(mids)
    upper = torch.cat([cdf, torch.ones(1, dtype=torch.float64)])
    lower = torch.cat([torch.zeros(1, dtype=torch.float64), cdf])
    return (upper - lower).clamp(min=0.0)


def loss_weights(
    schedule: NoiseSchedule, t: Tensor, prediction: str, min_snr_gamma: float | None
) -> Tensor:
    """Per-sample weights of min-SNR-gamma weighting (Hang et al. 2023, Eq. 9), shape (B,).

    With w_x0(t) = min(SNR_t, gamma) for an x_0 loss, the equivalent weights on the losses the
    network is trained with are: eps: min(SNR, gamma) / SNR; v: min(SNR, gamma) / (SNR + 1);
    x0: min(SNR, gamma). ``None`` gives weight 1 (L_simple).
    """
    if min_snr_gamma is None:
        return torch.ones(t.shape[0], device=t.device)
    snr = schedule.snr().to(t.device)[t]
    clipped = torch.clamp(snr, max=min_snr_gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1.0)
    if prediction == "x0":
        return clipped
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {list(PREDICTIONS)}")


def diffusion_loss_per_sample(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    y: Tensor | None = None,
    prediction: str = "eps",
    loss_type: Literal["mse", "l1"] = "mse",
    min_snr_gamma: float | None = None,
    antithetic: bool = False,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    learn_sigma: bool = False,
    vlb_weight: float = DEFAULT_VLB_WEIGHT,
    decoder: Decoder = "discretized",
) -> tuple[Tensor, Tensor]:
    """Per-sample weighted losses (B,) and the timesteps t (B,) they were drawn at.

    The terms of L_simple = E_t,eps ||target - f(x_t, t)||^2 (DDPM Eq. 14), each averaged over
    the sample's dimensions. ``prediction`` picks the target (eps, x_0 or v); ``loss_type`` MSE
    (default) or L1 (seed 000);
    ``min_snr_gamma`` weights each sample by :func:`loss_weights`. ``t``/``noise`` may be given
    (tests, likelihood terms); otherwise drawn from ``generator``.

    ``learn_sigma``: the network returns [prediction; v] (twice the channels) and the loss is
    improved DDPM's hybrid L_simple + lambda L_vlb (Eq. 16), lambda = ``vlb_weight``. Per
    sample the VLB part is lambda T L_t (``vlb_term_bits``, bits/dim): T times the term of the
    uniformly drawn t estimates L_vlb = sum_t L_t, which is improved-diffusion's
    ``vb * num_timesteps / 1000`` at lambda = 0.001. Its mean is the posterior mean (Eq. 7) of
    the x_0 that the *detached* prediction gives (for eps, x0 or v alike, not clipped), so
    L_vlb trains only the variance (the stop-gradient of Sec. 3.1); its variance is
    :func:`learned_log_variance`. min-SNR weights apply to L_simple only. ``decoder`` is the
    t = 0 term's likelihood (:func:`vlb_term_bits`).
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {list(PREDICTIONS)}")
    if loss_type not in ("mse", "l1"):
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of ['l1', 'mse']")
    b = x0.shape[0]
    if t is None:
        t = sample_timesteps(
            b, schedule.num_steps, antithetic=antithetic, generator=generator, device=x0.device
        )
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device="cpu").to(
            x0.device
        )
    x_t = q_sample(schedule, x0, t, noise)
    out = model(x_t, t) if y is None else model(x_t, t, y)
    v_out: Tensor | None = None
    if learn_sigma:
        out, v_out = split_variance_output(out, x0)
        if v_out is None:
            raise ValueError(
                f"learn_sigma: the model output has the input's shape {tuple(x0.shape)}; a "
                "learned-variance network returns twice the channels ([prediction; v], dim 1)"
            )
    elif out.shape != x0.shape:
        raise ValueError(
            f"model output has shape {tuple(out.shape)} but the input has shape "
            f"{tuple(x0.shape)}; the network must return one value per input value"
        )
    if prediction == "eps":
        target = noise
    elif prediction == "x0":
        target = x0
    else:
        target = v_from_eps(schedule, x0, t, noise)
    out = out.float()
    if loss_type == "mse":
        per = F.mse_loss(out, target.float(), reduction="none")
    else:
        per = F.l1_loss(out, target.float(), reduction="none")
    per_sample = per.reshape(b, -1).mean(dim=1)  # (B,)
    w = loss_weights(schedule, t, prediction, min_snr_gamma)
    if v_out is None:
        return w * per_sample, t
    # the VLB term sees the mean through a stop-gradient: it trains the variance only
    _, x0_pred = model_output_to_eps_x0(schedule, x_t, t, out.detach(), prediction)
    mean, _, _ = q_posterior(schedule, x0_pred, x_t, t)
    log_var = learned_log_variance(schedule, t, v_out.float())
    vb = vlb_term_bits(schedule, x0, x_t, t, mean, log_var, decoder=decoder)
    return w * per_sample + vlb_weight * schedule.num_steps * vb, t


def diffusion_loss(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x0: Tensor,
    **kwargs: object,
) -> Tensor:
    """The training objective as a scalar: the batch mean of :func:`diffusion_loss_per_sample`."""
    per_sample, _ = diffusion_loss_per_sample(model, schedule, x0, **kwargs)  # type: ignore[arg-type]
    return per_sample.mean()
