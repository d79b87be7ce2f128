"""Step schedules chosen by measurement: integer timesteps optimised for a model and a solver.

A few-step ODE solver is a map x_T -> x_0 that approximates the probability-flow ODE's own map
(the solution of the same ODE with many steps). How close it comes depends on where its few
timesteps are put, and the best place depends on the model (a network's errors, the data's
scale) as much as on the solver. :func:`optimise_timesteps` measures it: for a batch of x_T it
minimises the discrepancy

    J(t_1..t_n) = mean over the batch and the coordinates of (x_0^{n}(x_T) - x_0^{ref}(x_T))^2

between the solution of the chosen sampler on the grid t_1 = T-1 > t_2 > ... > t_n >= 0 and a
reference solution from the same x_T: ``unipc`` (UniP-2 + UniC, third order) on
``reference_steps`` log-SNR steps (default 100; on the exact predictors of
``docs/samplers.md`` its distance to the 1,000-step solution is far below any few-step error).
This is the "discrepancy to a many-step reference" route of issue 16, like the local-truncation
objective of Watson et al. ("Learning fast samplers", 2021) and unlike the KL bound of "Align
Your Steps" (Sabour et al. 2024), which needs a score model's training loss instead of its
samples; J has the advantage of measuring exactly what the user gets (the final x_0) and of
needing nothing but model calls.

(``metric="distance"`` averages each sample's RMS distance instead, which weighs a sample that
lands in the wrong mode less against the in-mode errors; on the frontier of docs/samplers.md
neither form was better on every row, MSE was at 5 evaluations, so MSE is the default.)

Search (deterministic given x_T; no randomness inside): every fixed spacing of ``SPACINGS``
that starts at T-1 is measured at n steps; t_1 = T-1 stays fixed (x_T is drawn there), and the
other n - 1 timesteps (n - 2 with ``end_at_zero``, the default, which keeps t_n = 0: the
output is the x_0 estimate there) are improved by coordinate descent in half log-SNR
lambda = log(abar / (1 - abar)) / 2, from each of the ``starts`` best spacings in turn: each
timestep is moved by +-delta in lambda (at least one index; delta starts at
(lambda_0 - lambda_min) / 2n), kept strictly between its neighbours, and the move is kept
only if J goes down; after a sweep without a gain delta is halved, until
delta < ``min_delta`` or the descent's share of ``max_evals``. J is not convex in the grid
(multistep solvers couple neighbouring steps), so several starts find better minima than one
(measured on the frontier). Because a move is kept only when it lowers J, the result is never
worse than the best fixed spacing (``baseline``).
lambda is the natural coordinate: the exponential integrators step in it, and a move of 0.1 in
lambda is a comparable change at every noise level (a fixed number of indices is not).

Cost: each evaluation of J is one few-step run on the batch; model calls whose input is
bit-identical to an earlier call (the unchanged prefix of the trajectory before the moved
timestep) are answered from a small cache, so a move of step k costs n - k calls. The reference
costs ``reference_steps`` calls once.

Only the deterministic ODE samplers have a per-sample reference (``ODE_SAMPLERS``; ddpm and the
eta > 0 variants add noise, so their few-step output is not a function of x_T). Heun's ``steps``
are its time points (2 n - 1 evaluations).

The result is a :class:`StepSchedule`, saved as JSON by :func:`save_schedule` (atomic, through
:func:`ddpmkit.io.atomic_write_text`) and read by :func:`load_schedule`; its ``timesteps`` key is
what ``ddpm sample --timesteps FILE.json`` reads, and ``ddpm sample --schedule-from FILE`` uses
the file's sampler as well.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddpmkit.errors import SettingsError
from ddpmkit.io import atomic_write_text, read_json_object
from ddpmkit.sampling import LAMBDA_MIN, SAMPLERS, SPACINGS, make_timesteps, sampling_timesteps
from ddpmkit.schedule import NoiseSchedule

__all__ = [
    "ODE_SAMPLERS",
    "REFERENCE_SAMPLER",
    "StepSchedule",
    "discrepancy",
    "load_schedule",
    "optimise_timesteps",
    "save_schedule",
]

ODE_SAMPLERS: tuple[str, ...] = ("ddim", "dpmpp", "dpmpp3m", "unipc", "heun")
REFERENCE_SAMPLER = "unipc"
FORMAT = "ddpmkit.step_schedule/1"


@dataclass(frozen=True)
class StepSchedule:
    """An optimised grid and how it was measured (the saved JSON has these keys).

    ``objective`` is J of ``timesteps``; ``baseline`` is J of the start (the best fixed spacing,
    ``start_spacing``); ``spacings`` J of every fixed spacing tried. ``num_train_steps`` is the
    model's T (a grid is only valid for it); ``evaluations`` the number of J evaluations.
    """

    timesteps: tuple[int, ...]
    sampler: str
    steps: int
    objective: float
    baseline: float
    start_spacing: str
    num_train_steps: int
    spacings: dict[str, float] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    batch: int = 0
    seed: int | None = None
    evaluations: int = 0
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timesteps"] = list(self.timesteps)
        return {"format": FORMAT, **d}


# ----------------------------------------------------------------------------- objective


DISCREPANCIES = ("distance", "mse")


def discrepancy(x: Tensor, x_ref: Tensor, kind: str = "distance") -> float:
    """J over the batch, in float64: ``distance`` = mean_i sqrt(mean_d (x_id - ref_id)^2)
    (each sample's RMS distance to its reference, averaged), ``mse`` = mean_{i,d} (x - ref)^2."""
    if x.shape != x_ref.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(x_ref.shape)}")
    sq = (x.double() - x_ref.double()).pow(2).reshape(x.shape[0], -1).mean(1)
    if kind == "mse":
        return float(sq.mean())
    if kind == "distance":
        return float(sq.sqrt().mean())
    raise ValueError(f"unknown discrepancy {kind!r}; expected one of {list(DISCREPANCIES)}")


class _Memo:
    """The model with a small LRU cache of its outputs, keyed by the exact bytes of (x, t, y).

    A few-step run whose grid differs from the previous one only from step k on repeats the
    first k calls bit for bit; they are answered here. A miss calls the model.
    """

    def __init__(self, model: Callable[..., Tensor], capacity: int):
        self.model = model
        self.capacity = max(1, capacity)
        self.cache: OrderedDict[bytes, Tensor] = OrderedDict()
        self.calls = 0

    @staticmethod
    def _key(*tensors: Tensor | None) -> bytes:
        h = hashlib.blake2b(digest_size=20)
        for v in tensors:
            if v is None:
                h.update(b"none")
                continue
            c = v.detach().contiguous().cpu()
            h.update(str((c.dtype, tuple(c.shape))).encode())
            h.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")
        return h.digest()

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        key = self._key(x, t, y)
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            return hit
        self.calls += 1
        out = self.model(x, t) if y is None else self.model(x, t, y)
        self.cache[key] = out
        if len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return out


# ----------------------------------------------------------------------------- search


def _half_log_snr(schedule: NoiseSchedule) -> Tensor:
    """lambda_t = log(abar_t / (1 - abar_t)) / 2 for t in [0, T), float64, decreasing in t."""
    ab = schedule.alphas_bar.double()
    return 0.5 * torch.log(ab / (1 - ab))


def _nearest_index(lam: Tensor, target: float) -> int:
    return int(torch.argmin((lam - target).abs()))


def _move(ts: list[int], i: int, direction: int, delta: float, lam: Tensor) -> int | None:
    """Timestep i moved by ``direction`` * delta in lambda (>= one index), strictly between
    its neighbours; None if there is no room. lambda decreases in t, so +lambda = smaller t."""
    hi = ts[i - 1] - 1  # largest allowed index
    lo = ts[i + 1] + 1 if i + 1 < len(ts) else 0
    if lo > hi:
        return None
    t = ts[i]
    cand = _nearest_index(lam, float(lam[t]) + direction * delta)
    if cand == t:
        cand = t - direction  # at least one index
    cand = min(max(cand, lo), hi)
    return None if cand == t else cand


def _descend(
    objective: Callable[[Sequence[int]], float],
    ts: list[int],
    lam: Tensor,
    delta: float,
    min_delta: float,
    stop_at: int,
    seen: Mapping[tuple[int, ...], float],
    movable: int,
) -> tuple[list[int], float]:
    """Coordinate descent in lambda from ``ts`` (module docstring) until delta < min_delta or
    ``len(seen)`` (the evaluations made so far) reaches ``stop_at``; timesteps 1..movable-1
    move; returns (grid, J)."""
    best = objective(ts)
    while delta >= min_delta and len(seen) < stop_at and len(ts) > 1:
        improved = False
        for i in range(1, movable):
            for direction in (+1, -1):
                if len(seen) >= stop_at:
                    break
                cand = _move(ts, i, direction, delta, lam)
                if cand is None:
                    continue
                trial = [*ts[:i], cand, *ts[i + 1 :]]
                value = objective(trial)
                if value < best:
                    ts, best, improved = trial, value, True
                    break
        if not improved:
            delta /= 2
    return ts, best


def optimise_timesteps(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x_T: Tensor,
    sampler: str,
    steps: int,
    *,
    reference_steps: int = 100,
    max_evals: int = 60,
    starts: int = 3,
    min_delta: float = 0.02,
    metric: str = "mse",
    end_at_zero: bool = True,
    sampler_kwargs: Mapping[str, Any] | None = None,
    start: Sequence[int] | None = None,
    log: Callable[[str], None] | None = None,
) -> StepSchedule:
    """The grid of ``steps`` timesteps minimising J (module docstring) for ``sampler``.

    ``model`` is any callable with the samplers' interface; ``x_T`` the batch of initial noise
    (the result is a deterministic function of it); ``sampler_kwargs`` go to every sampler
    call, the reference's included (``y``, ``guidance_scale``, ``prediction``, ``clip_x0``).
    ``start`` replaces the fixed spacings as the starting grid (its first entry must be
    T-1). ``max_evals`` bounds the evaluations of J, the fixed spacings' included; what is
    left after them is split evenly between ``starts`` descents, from the best ``starts``
    fixed spacings. ``metric`` is J's form (:func:`discrepancy`). ``end_at_zero`` (default)
    keeps the last timestep at 0 (only grids ending there are tried); False optimises it too.
    J alone may prefer to stop early and return the x_0 estimate of a noisier timestep, a
    conditional mean closer in MSE to the reference but blurred: on a trained Fashion-MNIST
    U-Net the free end found a worse J and a worse FD than the end at 0 (docs/samplers.md); on
    the exact predictors of the frontier the free end scored better.
    """
    if sampler not in ODE_SAMPLERS:
        raise SettingsError(
            "sampler",
            f"{sampler!r} adds noise, so its output is not a function of x_T; "
            f"optimise one of {list(ODE_SAMPLERS)}",
        )
    T = schedule.num_steps
    if not 1 <= steps < T:
        raise SettingsError("steps", f"must be in [1, {T - 1}] for this model, got {steps}")
    if not steps < reference_steps <= T:
        raise SettingsError(
            "reference_steps", f"must be in [{steps + 1}, {T}], got {reference_steps}"
        )
    if max_evals < 1:
        raise SettingsError("max_evals", f"must be >= 1, got {max_evals}")
    kw = dict(sampler_kwargs or {})
    if "eta" in kw and kw["eta"]:
        raise SettingsError("eta", "must be 0: the optimised grid is for the ODE solver")
    end_at_zero = end_at_zero and steps > 1  # one step: the grid is [T-1]
    calls_per_run = 2 * steps - 1 if sampler == "heun" else steps
    memo = _Memo(model, capacity=4 * calls_per_run + 4)
    ref = SAMPLERS[REFERENCE_SAMPLER](
        model, schedule, x_T, num_steps=reference_steps, spacing="logsnr", **kw
    )
    run = SAMPLERS[sampler]
    seen: dict[tuple[int, ...], float] = {}

    def objective(ts: Sequence[int]) -> float:
        key = tuple(ts)
        if key not in seen:
            seen[key] = discrepancy(run(memo, schedule, x_T, timesteps=list(ts), **kw), ref, metric)
        return seen[key]

    spacings: dict[str, float] = {}
    cands: dict[str, list[int]] = {}
    order: list[str] = []
    if start is not None:
        ts = sampling_timesteps(schedule, None, "trailing", start)
        if len(ts) != steps or ts[0] != T - 1 or (end_at_zero and ts[-1] != 0):
            end = " and ending at 0" if end_at_zero else ""
            raise SettingsError("start", f"must be {steps} timesteps starting at {T - 1}{end}")
        start_name = "given"
        best = objective(ts)
    else:
        for sp in SPACINGS:
            grid = make_timesteps(schedule, steps, sp)
            if grid[0] == T - 1 and (grid[-1] == 0 or not end_at_zero):  # never 'leading'
                cands[sp] = grid
        for sp, grid in cands.items():
            spacings[sp] = objective(grid)
        order = sorted(spacings, key=lambda sp: (spacings[sp], SPACINGS.index(sp)))
        start_name = order[0]
        ts, best = list(cands[start_name]), spacings[start_name]
    baseline = best
    if log is not None:
        log(f"start: {start_name} spacing, J = {best:.4g}, timesteps {ts}")

    lam = _half_log_snr(schedule)
    delta0 = (float(lam[0]) - max(float(lam[-1]), LAMBDA_MIN)) / (2 * steps)
    first = [ts] + [list(cands[sp]) for sp in order[1:starts]]
    for k, grid in enumerate(first):
        share = (max_evals - len(seen)) // (len(first) - k)  # what is left, split evenly
        stop = len(seen) + share
        movable = steps - 1 if end_at_zero else steps
        grid, value = _descend(objective, grid, lam, delta0, min_delta, stop, seen, movable)
        if value < best:
            ts, best = grid, value
        if log is not None:
            log(f"descent {k + 1}/{len(first)}: J = {value:.4g} after {len(seen)} evaluations")
    return StepSchedule(
        timesteps=tuple(ts),
        sampler=sampler,
        steps=steps,
        objective=best,
        baseline=baseline,
        start_spacing=start_name,
        num_train_steps=T,
        spacings=spacings,
        reference={"sampler": REFERENCE_SAMPLER, "steps": reference_steps, "spacing": "logsnr"},
        batch=int(x_T.shape[0]),
        evaluations=len(seen),
    )


# ----------------------------------------------------------------------------- files


def save_schedule(path: str | Path, result: StepSchedule) -> Path:
    """Write ``result`` as JSON (atomically); ``ddpm sample --schedule-from`` reads it."""
    return atomic_write_text(path, json.dumps(result.as_dict(), indent=1) + "\n")


def load_schedule(path: str | Path, num_train_steps: int | None = None) -> StepSchedule:
    """The schedule saved in ``path``, checked; a problem is one-line ``SettingsError``
    (field ``schedule_from``) naming the file: missing, not JSON, no ``timesteps`` list of
    integers, timesteps not strictly decreasing or outside [0, T), ``steps`` not the number
    of timesteps, an unknown sampler, or a grid made for another T."""

    def bad(msg: str) -> SettingsError:
        return SettingsError("schedule_from", f"{path}: {msg}")

    class _Err(ValueError):
        pass

    try:
        data = read_json_object(path, _Err, missing="run `ddpm schedule RUN --out FILE` first")
    except _Err as e:
        raise SettingsError("schedule_from", str(e)) from None
    ts = data.get("timesteps")
    if not isinstance(ts, list) or not ts or not all(type(v) is int for v in ts):
        raise bad('no "timesteps" list of integers')
    made_for = data.get("num_train_steps", num_train_steps)
    if num_train_steps is not None and made_for != num_train_steps:
        raise bad(f"made for a model with T = {made_for}, this one has T = {num_train_steps}")
    if isinstance(made_for, int) and not all(0 <= v < made_for for v in ts):
        raise bad(f"every timestep must be in [0, {made_for}), got {ts}")
    if any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
        raise bad(f"timesteps must be strictly decreasing, got {ts}")
    steps = data.get("steps", len(ts))
    if steps != len(ts):
        raise bad(f'"steps" is {steps} but it lists {len(ts)} timesteps')
    sampler = data.get("sampler")
    if sampler not in SAMPLERS:
        raise bad(f'"sampler" {sampler!r} is not one of {list(SAMPLERS)}')

    def num(key: str) -> float:
        v = data.get(key, math.nan)
        return float(v) if isinstance(v, int | float) else math.nan

    return StepSchedule(
        timesteps=tuple(ts),
        sampler=str(sampler),
        steps=len(ts),
        objective=num("objective"),
        baseline=num("baseline"),
        start_spacing=str(data.get("start_spacing", "")),
        num_train_steps=made_for if isinstance(made_for, int) else 0,
        spacings=dict(data.get("spacings", {})),
        reference=dict(data.get("reference", {})),
        batch=int(data.get("batch", 0)),
        seed=data.get("seed"),
        evaluations=int(data.get("evaluations", 0)),
        source=str(data.get("source", "")),
    )
