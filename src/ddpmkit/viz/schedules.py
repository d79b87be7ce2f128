"""Comparison of the named beta schedules: alpha_bar_t, beta_t and log SNR against t."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ddpmkit.schedule import SCHEDULES, make_betas
from ddpmkit.viz._figure import new_figure, save_figure

__all__ = ["plot_schedules"]

PathLike = str | os.PathLike[str]


def plot_schedules(
    path: PathLike,
    num_steps: int = 1000,
    names: Sequence[str] = ("linear", "cosine", "quadratic", "sigmoid"),
    dpi: float = 100,
) -> Path:
    """One figure, three panels, one line per schedule: alpha_bar_t, beta_t (log y) and
    ln SNR(t) = ln(alpha_bar_t / (1 - alpha_bar_t)) against the timestep index t in [0, T).

    Computed in float64 from :func:`ddpmkit.schedule.make_betas`. Returns ``path``.
    """
    names = list(names)
    if not names:
        raise ValueError("names must list at least one schedule")
    unknown = [n for n in names if n not in SCHEDULES]
    if unknown:
        raise ValueError(f"unknown schedule(s) {unknown}; expected names from {sorted(SCHEDULES)}")
    fig = new_figure(15, 4.4)
    ax_abar, ax_beta, ax_snr = fig.subplots(1, 3)
    t = np.arange(num_steps)
    for name in names:
        betas = make_betas(name, num_steps)
        abar = torch.cumprod(1.0 - betas, dim=0)
        log_snr = (torch.log(abar) - torch.log1p(-abar)).numpy()
        ax_abar.plot(t, abar.numpy(), label=name, lw=1.8)
        ax_beta.plot(t, betas.numpy(), label=name, lw=1.8)
        ax_snr.plot(t, log_snr, label=name, lw=1.8)
    ax_abar.set_title(r"Signal kept: $\bar\alpha_t$")
    ax_abar.set_ylabel(r"$\bar\alpha_t$ = prod of $(1 - \beta_s)$, $s \leq t$")
    ax_abar.set_ylim(-0.02, 1.02)
    ax_beta.set_title(r"Noise per step: $\beta_t$ (log scale)")
    ax_beta.set_ylabel(r"$\beta_t$")
    ax_beta.set_yscale("log")
    ax_snr.set_title(r"Log signal-to-noise ratio (natural log)")
    ax_snr.set_ylabel(r"ln SNR = ln($\bar\alpha_t$ / (1 - $\bar\alpha_t$))")
    ax_snr.axhline(0.0, color="0.5", lw=0.8, ls="--")
    for ax in (ax_abar, ax_beta, ax_snr):
        ax.set_xlabel(f"timestep t (T = {num_steps})")
        ax.set_xlim(0, max(num_steps - 1, 1))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=9)
    fig.suptitle(f"Noise schedules, T = {num_steps}", fontsize=13)
    return save_figure(fig, path, dpi)
