"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", EDM2, Sec. 3.2 and Appendix C): an average of ANY relative length, chosen after
training, as a linear combination of stored snapshots of a few power-function EMAs.

The math, with no files and no networks. A power-function EMA of exponent gamma
(:mod:`~ddpmkit.training.power_ema`) read at time t (its number of updates) has averaged the
weights of the steps tau in [0, t] with the normalised profile (EDM2 App. C.1)

    p_{gamma,t}(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)   for 0 < tau <= t, else 0.

The EMA is linear in the weight sequence, so a combination sum_i x_i snapshot_i averages the
weights with the profile sum_i x_i p_i. EDM2's reconstruction (App. C.3, its
``solve_posthoc_coefficients``) picks the x that bring this profile closest in L2 to the target
p_r = p_{gamma_r,t_r}:

    min_x || sum_i x_i p_i - p_r ||^2   <=>   A x = b,
    A_ij = <p_i, p_j>,   b_i = <p_i, p_r>,   <f, g> = int_0^inf f(tau) g(tau) dtau,

with the closed-form inner product (:func:`profile_inner`; for t_a <= t_b)

    <p_{gamma_a,t_a}, p_{gamma_b,t_b}> = (gamma_a + 1)(gamma_b + 1) / ((gamma_a + gamma_b + 1) t_b)
                                         * (t_a / t_b)^gamma_b,

and then rescales x to sum to 1 (each p_i integrates to 1, so a weight sequence that does not
change is returned unchanged). :func:`solve_coefficients` returns x and the fit error
||sum_i x_i p_i - p_r|| / ||p_r||, from x^T A x - 2 x^T b + <p_r, p_r>; :func:`combine` applies
x to state dicts.

Usage: train with ``train.ema_sigma_rels = [0.05, 0.10]`` and ``train.ema_snapshot_every =
N`` (snapshots in ``<run>/ema_snapshots/``), then ``ddpm ema RUN --sigma-rel 0.08`` writes the
model folder ``<run>/model_ema/posthoc_sigma_rel_0.080/`` (``ddpm sample``, ``ddpm eval`` and
``ddpmkit.load`` read it). EDM2 uses two stored lengths and 160 snapshots per run; a handful
per length already fits well for lengths between the stored ones (the command prints the fit
error).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

__all__ = ["combine", "profile_inner", "solve_coefficients"]


def profile_inner(
    t_a: ArrayLike, gamma_a: ArrayLike, t_b: ArrayLike, gamma_b: ArrayLike
) -> NDArray[np.float64]:
    """<p_{gamma_a,t_a}, p_{gamma_b,t_b}>: the L2 inner product of two power-function EMA
    profiles (module docstring), elementwise with numpy broadcasting, in float64.

    The integrand is nonzero on [0, min(t_a, t_b)]; integrating
    (gamma_a + 1)(gamma_b + 1) tau^(gamma_a + gamma_b) / (t_a^(gamma_a+1) t_b^(gamma_b+1)) there
    gives the closed form, written with the ratio min/max so that large gammas do not overflow.
    """
    ta, ga, tb, gb = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    lo, hi = np.minimum(ta, tb), np.maximum(ta, tb)
    g_of_max = np.where(ta <= tb, gb, ga)  # the exponent of the longer profile
    return (ga + 1) * (gb + 1) / ((ga + gb + 1) * hi) * (lo / hi) ** g_of_max


def solve_coefficients(
    t: Sequence[float], gamma: Sequence[float], t_r: float, gamma_r: float
) -> tuple[NDArray[np.float64], float]:
    """The coefficients x (summing to 1) of the snapshots (t[i], gamma[i]) whose combined profile
    best matches the target (t_r, gamma_r) in L2, and the relative fit error of that profile.

    Solves the normal equations A x = b of the module docstring (by least squares, so that
    nearly dependent snapshots, e.g. two lengths read at the same step, cannot blow up), then
    rescales x to sum 1 as EDM2 does. Shapes: t, gamma (N,) -> x (N,).
    """
    ts, gs = np.asarray(t, dtype=np.float64), np.asarray(gamma, dtype=np.float64)
    if ts.ndim != 1 or ts.shape != gs.shape or len(ts) == 0:
        raise ValueError(f"need matching non-empty 1-D t and gamma, got {ts.shape}, {gs.shape}")
    if not (np.all(ts > 0) and t_r > 0):
        raise ValueError("snapshot and target times must be > 0")
    A = profile_inner(ts[:, None], gs[:, None], ts[None, :], gs[None, :])  # (N, N)
    b = profile_inner(ts, gs, t_r, gamma_r)  # (N,)
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    x = x / x.sum()
    c = float(profile_inner(t_r, gamma_r, t_r, gamma_r))  # <p_r, p_r>
    sq = float(x @ A @ x - 2 * x @ b + c)  # || sum_i x_i p_i - p_r ||^2
    return x, float(np.sqrt(max(sq, 0.0) / c))


def combine(states: Iterable[Mapping[str, Tensor]], coefs: Sequence[float]) -> dict[str, Tensor]:
    """sum_i coefs[i] * states[i] for floating-point tensors (accumulated in float64, returned
    in each tensor's own dtype); other tensors (integer counters) come from the last state.

    ``states`` may be a generator, so snapshots are read from disk one at a time. All states
    must have the same keys and shapes.
    """
    out: dict[str, Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    n = 0
    for n, (state, c) in enumerate(zip(states, coefs, strict=True), start=1):
        if out and state.keys() != out.keys():
            raise ValueError(f"state {n - 1} has other keys than state 0")
        for k, v in state.items():
            if not v.is_floating_point():
                out[k] = v.clone()
            elif k not in dtypes:
                dtypes[k] = v.dtype
                out[k] = v.detach().to(torch.float64) * float(c)
            else:
                out[k].add_(v.detach().to(torch.float64), alpha=float(c))
    if n == 0:
        raise ValueError("no states to combine")
    return {k: v.to(dtypes[k]) if k in dtypes else v for k, v in out.items()}
