"""``ddpm ema``: the power-function EMA of any relative length, rebuilt after training from the
run's snapshots (EDM2's post-hoc EMA; :mod:`ddpmkit.training.posthoc_ema`).

    ddpm train --set 'train.ema_sigma_rels=[0.05, 0.10]' --set train.ema_snapshot_every=250
    ddpm ema RUN --sigma-rel 0.08 [--step T] [--out RUN/model_ema/posthoc_sigma_rel_0.080]
    ddpm sample RUN/model_ema/posthoc_sigma_rel_0.080 ...

Every snapshot written at or before step T (default: the last snapshot) takes part, of every
stored length; the target is the profile of length sigma_rel read at T. The coefficients, the
snapshots used and the profile's fit error are printed and stored in the folder's
``config.json`` (``posthoc_ema``). Snapshots of an average that restarted on a resume are not
power-function profiles from step 0; they are left out, and the command says so. A bad input
(no snapshots, a length out of range, a step before the first snapshot or after the last) is
one line, and nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ddpmkit.errors import CheckpointError, SettingsError
from ddpmkit.training import checkpoint as ckpt
from ddpmkit.training.posthoc_ema import combine, solve_coefficients
from ddpmkit.training.power_ema import (
    SNAPSHOT_DIR,
    Snapshot,
    gamma_from_sigma_rel,
    list_snapshots,
    read_snapshot,
    sigma_rel_of_gamma,
)

__all__ = ["register"]

# Keys of a checkpoint's state.json that belong to the checkpoint, not to the model.
_CHECKPOINT_ONLY = ("format_version", "sha256", "optimizer", "step", "ema_updates", "world_size")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ema`` subcommand to ``sub``."""
    p = sub.add_parser(
        "ema",
        help="build the EMA of any length after training from the run's EMA snapshots",
        description="Combine the snapshots of train.ema_sigma_rels (train.ema_snapshot_every) "
        "into the power-function EMA of --sigma-rel, by EDM2's least-squares fit of its "
        "averaging profile, and write it as a model folder.",
    )
    p.add_argument("run", help="run folder trained with train.ema_snapshot_every > 0")
    p.add_argument(
        "--sigma-rel",
        type=float,
        required=True,
        help="relative length of the average, in (0, 0.2887) (e.g. 0.08)",
    )
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="the step the average is read at (default: the last snapshot's)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="model folder to write (default: RUN/model_ema/posthoc_sigma_rel_X, with _step_T "
        "when --step is given)",
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    run = Path(args.run)
    top = sigma_rel_of_gamma(0.0)
    if not 0.0 < args.sigma_rel < top:
        raise SettingsError("sigma_rel", f"must be in (0, {top:.4f}), got {args.sigma_rel}")
    if not run.is_dir():
        raise CheckpointError(f"{run}: not a run folder")
    found = list_snapshots(run)
    if not found:
        raise CheckpointError(
            f"{run}: no EMA snapshots in {run / SNAPSHOT_DIR}; train with "
            "train.ema_snapshot_every = N and two train.ema_sigma_rels, e.g. [0.05, 0.10]"
        )
    restarted = [s for s in found if s.updates != s.step]
    snaps = [s for s in found if s.updates == s.step]
    if restarted:
        log(
            f"leaving out {len(restarted)} snapshots of averages that restarted on a resume "
            f"(steps {restarted[0].step}..{restarted[-1].step})"
        )
    if not snaps:
        raise CheckpointError(f"{run}: every EMA snapshot is of an average that restarted")
    first, last = snaps[0].step, snaps[-1].step
    step = last if args.step is None else args.step
    if not first <= step <= last:
        raise SettingsError(
            "step", f"must be within the snapshots' steps [{first}, {last}], got {step}"
        )
    used = [s for s in snaps if s.step <= step]
    gamma_r = gamma_from_sigma_rel(args.sigma_rel)
    x, err = solve_coefficients([s.step for s in used], [s.gamma for s in used], step, gamma_r)
    coefs = [float(c) for c in x]

    meta, _ = ckpt.resolve_model_path(run)  # the run's config and data: as its model folder has
    if "config" not in meta or "data" not in meta:
        raise CheckpointError(f"{run}: metadata has no config/data section; not a ddpmkit run")
    meta = {k: v for k, v in meta.items() if k not in _CHECKPOINT_ONLY}
    meta["step"] = step
    meta["ema"] = f"post-hoc power, sigma_rel {args.sigma_rel:g}"
    meta["posthoc_ema"] = {
        "sigma_rel": args.sigma_rel,
        "gamma": gamma_r,
        "step": step,
        "fit_error": err,
        "snapshots": [s.path.relative_to(run).as_posix() for s in used],
        "coefficients": coefs,
    }
    for line in _describe(used, coefs):
        log(line)
    weights = combine((read_snapshot(s) for s in used), coefs)  # one file at a time
    if args.out is not None:
        out = Path(args.out)
    else:
        name = f"posthoc_sigma_rel_{args.sigma_rel:.3f}"
        out = run / "model_ema" / (name if args.step is None else f"{name}_step_{step:08d}")
    ckpt.save_model_export(out, weights, meta)
    log(
        f"sigma_rel {args.sigma_rel:g} at step {step} from {len(used)} snapshots: fit error "
        f"{100 * err:.2f}% (relative L2 distance of the averaging profile to the target's)"
    )
    if err > 0.1:
        stored = ", ".join(f"{sr:g}" for sr in sorted({s.sigma_rel for s in used}))
        log(
            f"note: a poor fit; the stored lengths are {stored}, and lengths far from them or "
            "few snapshots before the step fit worse (a smaller train.ema_snapshot_every helps)"
        )
    log(f"wrote {out}; use it with: ddpm sample {out}")
    return 0


def _describe(used: list[Snapshot], coefs: Sequence[float]) -> list[str]:
    """One line per stored length (how many snapshots, which steps), then the largest weights."""
    lines = []
    for sr in sorted({s.sigma_rel for s in used}):
        steps = [s.step for s in used if s.sigma_rel == sr]
        lines.append(f"snapshots of sigma_rel {sr:g}: {len(steps)}, steps {steps[0]}..{steps[-1]}")
    pairs = sorted(zip(used, coefs, strict=True), key=lambda p: -abs(p[1]))
    top = ", ".join(f"{s.sigma_rel:g}@{s.step}: {c:+.3f}" for s, c in pairs[:4])
    lines.append(f"largest coefficients (sigma_rel@step): {top}")
    return lines
