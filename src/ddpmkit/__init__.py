"""ddpmkit: Denoising Diffusion Probabilistic Models end to end."""

from ddpmkit.diffusion import (
    diffusion_loss,
    diffusion_loss_per_sample,
    eps_from_v,
    eps_from_x0,
    q_posterior,
    q_sample,
    sample_timesteps,
    v_from_eps,
    x0_from_eps,
    x0_from_v,
)
from ddpmkit.sampling import (
    NULL_LABEL,
    SAMPLERS,
    StepInfo,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    dpm_solver_pp_sample,
    initial_noise,
    make_timesteps,
)
from ddpmkit.schedule import SCHEDULES, NoiseSchedule, make_betas

__version__ = "0.1.0"

__all__ = [
    "NULL_LABEL",
    "SAMPLERS",
    "SCHEDULES",
    "NoiseSchedule",
    "StepInfo",
    "ddim_invert",
    "ddim_sample",
    "ddpm_sample",
    "diffusion_loss",
    "diffusion_loss_per_sample",
    "dpm_solver_pp_sample",
    "eps_from_v",
    "eps_from_x0",
    "initial_noise",
    "make_betas",
    "make_timesteps",
    "q_posterior",
    "q_sample",
    "sample_timesteps",
    "v_from_eps",
    "x0_from_eps",
    "x0_from_v",
]
