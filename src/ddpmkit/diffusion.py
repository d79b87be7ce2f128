"""The Gaussian diffusion itself: forward process, posterior, parameterisations and the loss.

Pure functions of a :class:`~ddpmkit.schedule.NoiseSchedule` and tensors; randomness only from
arguments (a ``noise`` tensor or a ``torch.Generator``). Index ``t`` in ``[0, T)``; see
``ddpmkit.schedule`` for the convention.

Equations cite Ho et al. 2020 ("DDPM"), Salimans & Ho 2022 ("v"), Hang et al. 2023 ("min-SNR").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpmkit.schedule import NoiseSchedule, expand_like

__all__ = [
    "Prediction",
    "diffusion_loss",
    "diffusion_loss_per_sample",
    "eps_from_v",
    "eps_from_x0",
    "loss_weights",
    "model_output_to_eps_x0",
    "q_posterior",
    "q_sample",
    "sample_timesteps",
    "v_from_eps",
    "x0_from_eps",
    "x0_from_v",
]

# the model-output parameterisations: the one list (config, CLI and samplers import it)
Prediction = Literal["eps", "x0", "v"]
PREDICTIONS: tuple[Prediction, ...] = get_args(Prediction)


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
) -> tuple[Tensor, Tensor]:
    """Per-sample weighted losses (B,) and the timesteps t (B,) they were drawn at.

    The terms of L_simple = E_t,eps ||target - f(x_t, t)||^2 (DDPM Eq. 14), each averaged over
    the sample's dimensions. ``prediction`` picks the target (eps, x_0 or v); ``loss_type`` MSE
    (default) or L1 (seed 000);
    ``min_snr_gamma`` weights each sample by :func:`loss_weights`. ``t``/``noise`` may be given
    (tests, likelihood terms); otherwise drawn from ``generator``.
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
    if out.shape != x0.shape:
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
    return w * per_sample, t


def diffusion_loss(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x0: Tensor,
    **kwargs: object,
) -> Tensor:
    """The training objective as a scalar: the batch mean of :func:`diffusion_loss_per_sample`."""
    per_sample, _ = diffusion_loss_per_sample(model, schedule, x0, **kwargs)  # type: ignore[arg-type]
    return per_sample.mean()
