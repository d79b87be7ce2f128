"""Beta schedules and the precomputed constants of a Gaussian diffusion.

Index convention (used everywhere in ddpmkit): ``t`` is an integer in ``[0, T)``; ``t = 0`` is
the *first* noising step, so ``alphas_bar[0] = 1 - betas[0]`` and x_0 (the data) has no index in
these arrays. This is the convention of Ho et al.'s and OpenAI's code (their ``t = 0`` means "one
step of noise").

Schedules are built in float64 (cumulative products of ~1000 numbers close to 1 lose digits in
float32) and stored as float32 buffers at use. A :class:`NoiseSchedule` is an immutable value
(a frozen dataclass of tensors): it is never an ``nn.Module`` parameter and so can never be
trained or averaged by an EMA of weights (a known failure elsewhere: EMA-averaged schedule
buffers produced black samples).

Named schedules (``SCHEDULES``):

* ``linear``: betas linear from 1e-4 to 0.02 (Ho et al. 2020, Sec. 4) at T = 1000; for other T
  both ends are rescaled by 1000/T so the chain still ends near N(0, I) (as improved-diffusion
  does), clipped at 0.999.
* ``cosine``: alphas_bar(t) = f(t)/f(0), f(t) = cos(((t/T + s)/(1 + s)) * pi/2)^2, s = 0.008,
  betas clipped at 0.999 (Nichol & Dhariwal 2021, Eq. 17).
* ``quadratic``: sqrt(beta) linear between sqrt(1e-4) and sqrt(0.02) (the "quadratic" schedule of
  the DDPM tutorials and diffusers' ``scaled_linear``).
* ``sigmoid``: seed 002's *beta-space* sigmoid,
  ``betas = sigmoid(linspace(-6, 6, T)) * (5e-3 - 1e-5) + 1e-5``. Note this is **not** the
  alpha_bar-space "sigmoid" schedule of Jabri et al. 2022 / some libraries (lucidrains'
  ``sigmoid_beta_schedule``), which defines alphas_bar through a shifted sigmoid of t; that one
  is not offered under this name to keep the name unambiguous.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "SCHEDULES",
    "NoiseSchedule",
    "ScheduleName",
    "cosine_betas",
    "expand_like",
    "linear_betas",
    "make_betas",
    "quadratic_betas",
    "sigmoid_betas",
    "validate_betas",
]


def _check_num_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Linear betas (Ho et al. 2020): 1e-4 to 0.02 at T = 1000.

    For other T both ends are scaled by 1000/T (improved-diffusion's rule) so that x_{T-1} is
    still close to N(0, I) (unscaled, T = 100 would end at alpha_bar = 0.37, far from noise);
    betas are clipped at 0.999 for very small T.
    """
    _check_num_steps(num_steps)
    scale = 1000.0 / num_steps
    b = torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)
    return b.clamp(max=0.999)


def quadratic_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """betas = linspace(sqrt(beta_start), sqrt(beta_end), T)^2, scaled by 1000/T like linear."""
    _check_num_steps(num_steps)
    scale = 1000.0 / num_steps
    root = torch.linspace(
        math.sqrt(scale * beta_start), math.sqrt(scale * beta_end), num_steps, dtype=torch.float64
    )
    return (root**2).clamp(max=0.999)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, Eq. 17): beta_t = 1 - abar(t+1)/abar(t) <= 0.999."""
    _check_num_steps(num_steps)
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_bar = f / f[0]
    betas = 1 - alphas_bar[1:] / alphas_bar[:-1]
    return betas.clamp(max=max_beta)


def sigmoid_betas(num_steps: int, beta_start: float = 1e-5, beta_end: float = 5e-3) -> Tensor:
    """Seed 002's beta-space sigmoid: sigmoid(linspace(-6, 6, T)) * (end - start) + start."""
    _check_num_steps(num_steps)
    x = torch.linspace(-6.0, 6.0, num_steps, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


# the named schedules; the config type (``ScheduleName``) and this table name the same ones
ScheduleName = Literal["linear", "cosine", "quadratic", "sigmoid"]

SCHEDULES: dict[ScheduleName, Callable[[int], Tensor]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quadratic": quadratic_betas,
    "sigmoid": sigmoid_betas,
}


def validate_betas(betas: Tensor | Sequence[float]) -> Tensor:
    """Return ``betas`` as a 1-D float64 tensor, or raise ValueError if any is outside (0, 1)."""
    b = torch.as_tensor(betas, dtype=torch.float64).detach().clone()
    if b.ndim != 1 or b.numel() < 1:
        raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(b.shape)}")
    if not torch.isfinite(b).all():
        raise ValueError("betas contain NaN or Inf; every beta must be a number in (0, 1)")
    bad = (b <= 0) | (b >= 1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"betas[{i}] = {float(b[i])!r} is outside (0, 1); every beta must be in (0, 1)"
        )
    return b


def make_betas(name: str, num_steps: int) -> Tensor:
    """Betas (float64, shape (T,)) of the named schedule; ValueError names the allowed values."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")
    return validate_betas(SCHEDULES[name](num_steps))


def expand_like(v: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample values ``v`` of shape (B,) to (B, 1, ..., 1) to broadcast against x."""
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


@dataclass(frozen=True)
class NoiseSchedule:
    """Constants of the forward process, float32, index t in [0, T) (see module docstring).

    Fields (all shape (T,)):
        betas: beta_t, the variance of q(x_t | x_{t-1}).
        alphas: 1 - beta_t.
        alphas_bar: prod_{s<=t} alpha_s, so q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).
        alphas_bar_prev: abar_{t-1}, with abar_{-1} = 1 (x_0 is noiseless).
        sqrt_alphas_bar, sqrt_one_minus_alphas_bar: the two coefficients of Ho et al. Eq. 4.
        posterior_variance: beta-tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)  (Eq. 7);
            exactly 0 at t = 0 (the last reverse step is deterministic).
        posterior_log_variance_clipped: log beta-tilde_t with the t = 0 value replaced by the
            t = 1 value (the log of 0 is not usable; Ho et al./OpenAI do the same).
        posterior_mean_coef1, posterior_mean_coef2: mu-tilde_t = coef1 * x_0 + coef2 * x_t (Eq. 7).
    """

    betas: Tensor
    alphas: Tensor
    alphas_bar: Tensor
    alphas_bar_prev: Tensor
    sqrt_alphas_bar: Tensor
    sqrt_one_minus_alphas_bar: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas: Tensor | Sequence[float]) -> NoiseSchedule:
        """Build every constant in float64 from ``betas`` and store them as float32."""
        b = validate_betas(betas)
        a = 1.0 - b
        abar = torch.cumprod(a, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = b * (1.0 - abar_prev) / (1.0 - abar)
        post_var[0] = 0.0  # explicit: q(x_{-1} | x_0, x_0) is a point mass at x_0
        if b.numel() > 1:
            log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        else:  # T = 1: there is no t = 1 value to borrow; use beta_0 (the only variance there is)
            log_var = torch.log(b)
        coef1 = b * torch.sqrt(abar_prev) / (1.0 - abar)
        coef2 = (1.0 - abar_prev) * torch.sqrt(a) / (1.0 - abar)
        values = {
            "betas": b,
            "alphas": a,
            "alphas_bar": abar,
            "alphas_bar_prev": abar_prev,
            "sqrt_alphas_bar": torch.sqrt(abar),
            "sqrt_one_minus_alphas_bar": torch.sqrt(1.0 - abar),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": log_var,
            "posterior_mean_coef1": coef1,
            "posterior_mean_coef2": coef2,
        }
        return cls(**{k: v.to(torch.float32) for k, v in values.items()})

    @classmethod
    def from_name(cls, name: str, num_steps: int = 1000) -> NoiseSchedule:
        """The named schedule (one of ``SCHEDULES``) with ``num_steps`` steps."""
        return cls.from_betas(make_betas(name, num_steps))

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """A copy with every tensor on ``device``."""
        return NoiseSchedule(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def snr(self) -> Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t), shape (T,)."""
        return self.alphas_bar / (1.0 - self.alphas_bar)
