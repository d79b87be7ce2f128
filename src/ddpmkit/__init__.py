"""ddpmkit: Denoising Diffusion Probabilistic Models end to end.

A trained model: ``model = ddpmkit.load("runs/fashion_mnist")``, then
``model.sample(num=16, guidance=2.0, seed=0)`` (see :mod:`ddpmkit.trained`). The formulas
(schedules, q(x_t | x_0), posteriors, losses) and the samplers are importable from here too.
"""

from typing import TYPE_CHECKING, Any

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
from ddpmkit.version import __version__ as __version__

if TYPE_CHECKING:
    from ddpmkit.fit import train
    from ddpmkit.sample_settings import SampleSettings
    from ddpmkit.trained import TrainedModel, load


_LAZY = {"load": "ddpmkit.trained", "TrainedModel": "ddpmkit.trained",
         "SampleSettings": "ddpmkit.sample_settings", "train": "ddpmkit.fit"}  # fmt: skip


def __getattr__(name: str) -> Any:
    """The model API, imported on first use (it pulls in the trainer's config and builders)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ddpmkit' has no attribute {name!r}")


__all__ = [
    "NULL_LABEL",
    "SAMPLERS",
    "SCHEDULES",
    "NoiseSchedule",
    "SampleSettings",
    "TrainedModel",
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
    "load",
    "make_betas",
    "make_timesteps",
    "q_posterior",
    "q_sample",
    "sample_timesteps",
    "train",
    "v_from_eps",
    "x0_from_eps",
    "x0_from_v",
]
