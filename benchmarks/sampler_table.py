"""Sampler quality versus steps on an exact predictor (no training): the docs' sampler tables.

    .venv/bin/python benchmarks/sampler_table.py                # print the tables
    .venv/bin/python benchmarks/sampler_table.py --write-docs   # + rewrite docs/samplers.md

Data: 8 Gaussians of std 0.05 on a ring of radius 2 (sharp modes, data in about [-2, 2]); the
exact E[eps | x_t] of that mixture (``MixtureOracle``), so the only error is the sampler's.
Main table: linear schedule, T = 1000, every sampler of ``ddpmkit.sampling.SAMPLERS`` and
SDE-DPM-Solver++(2M) (``dpmpp-sde``: ``dpm_solver_pp_sample`` with eta = 1) with every spacing of
``SPACINGS`` at 5, 10, 20 and 50 steps, plus all 1000 steps (where every spacing is the
same). Second table (``--no-changes`` leaves it out): two changes adopted in
``ddpmkit.sampling`` after this measurement, each next to the behaviour before it, which is
implemented here only (rows marked "(before)"); each "(before)" row reverts that one change:

* cosine schedule: log-SNR and Karras spacings used to be distorted by the schedule's last step
  (beta clipped at 0.999, so abar_{T-1} = 2e-9, lambda = -9.9); ``make_timesteps`` now clips
  lambda at ``LAMBDA_MIN`` = -5.1. ``unclipped_make_timesteps`` is the spacing before, swapped
  in for ``ddpmkit.sampling.make_timesteps`` while those rows run;
* DPM-Solver++(2M) now takes a first-order step into the last timestep below 15 steps;
  ``dpmpp_second_order_final`` is the sampler before (second order on every step after the
  first).

Columns: sliced W2 (256 directions) of 4,000 samples to 16,000 fresh mixture samples (exactly
2,000 per mode, so the reference adds no mode-weight noise of its own); the share
of samples within the 99.9% radius of a mode; the within-mode spread relative to the truth;
the total variation between the samples' mode shares and the true weights. All seeds fixed:
the initial noise x_T is the same for every row (seed 0), so rows differ only by the sampler.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

import ddpmkit.sampling as sampling
import ddpmkit.sampling_core as sampling_core
from ddpmkit.evaluation.metrics import sliced_wasserstein
from ddpmkit.evaluation.oracle import MixtureOracle, mixture_sample, mode_stats, ring_means
from ddpmkit.sampling import SAMPLERS, SPACINGS
from ddpmkit.schedule import NoiseSchedule

DOC = Path(__file__).resolve().parents[1] / "docs" / "samplers.md"
MARKERS = {
    "linear": ("<!-- sampler-table:begin -->", "<!-- sampler-table:end -->"),
    "changes": ("<!-- sampler-changes:begin -->", "<!-- sampler-changes:end -->"),
}
STEPS = (5, 10, 20, 50)
K, RADIUS, STD = 8, 2.0, 0.05
NUM_REF = 16_000  # reference: exactly NUM_REF / K draws per mode (no weight noise)

Row = dict[str, object]
BEFORE_SAMPLER = "dpmpp, second order final (before)"


def unclipped_make_timesteps(
    schedule: NoiseSchedule, num_steps: int | None = None, spacing: str = "trailing"
) -> list[int]:
    """The former ``make_timesteps`` (before the lambda clip): ``logsnr``/``karras`` targets
    spread over the whole range lambda(0) ... lambda(T-1) of the schedule.

    On the linear schedule (lambda(T-1) = -5.06 > LAMBDA_MIN) ``make_timesteps`` still gives the
    same steps (except at a single step, now t = T-1, formerly t = 0); on the cosine one
    (lambda(T-1) = -9.9) the steps piled up on t = 991...999. Other spacings are the library's.
    """
    T = schedule.num_steps
    n = T if num_steps is None else int(num_steps)
    if spacing not in ("logsnr", "karras") or n == T:
        return _LIBRARY_MAKE_TIMESTEPS(schedule, num_steps, spacing)
    abar = schedule.alphas_bar.double()
    log_sigma = 0.5 * torch.log((1 - abar) / abar)  # = -lambda, increasing in t
    lo, hi = float(log_sigma[0]), float(log_sigma[-1])
    if spacing == "logsnr":
        targets = torch.linspace(lo, hi, n, dtype=torch.float64)
    else:
        rho = 7.0
        smin, smax = math.exp(lo), math.exp(hi)
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        targets = (
            (smin ** (1 / rho) + ramp * (smax ** (1 / rho) - smin ** (1 / rho))) ** rho
        ).log()
    ts = [int(torch.argmin((log_sigma - v).abs())) for v in targets]
    return sampling._distinct_descending(ts, T)


_LIBRARY_MAKE_TIMESTEPS = sampling.make_timesteps


@torch.no_grad()
def dpmpp_second_order_final(
    model: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    *,
    num_steps: int | None = 20,
    spacing: str = "logsnr",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The former DPM-Solver++(2M): second order on every step after the first,
    including the step into the last timestep whatever the number of steps. Otherwise the same
    update as ``ddpmkit.sampling.dpm_solver_pp_sample``, which is now first order on that step
    below 15 steps."""
    del generator
    ts = sampling.make_timesteps(schedule, num_steps, spacing)
    x = x_T.float()

    def lam(t: int) -> float:
        ab = sampling._abar(schedule, t)
        return 0.5 * math.log(ab / (1 - ab))

    x0_prev: torch.Tensor | None = None
    h_prev = 0.0
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        _, x0 = sampling._guided_eps_x0(model, schedule, x, t, None, 1.0, "eps")
        if s < 0:
            x = x0
            break
        ab_t, ab_s = sampling._abar(schedule, t), sampling._abar(schedule, s)
        h = lam(s) - lam(t)
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = math.sqrt(1 - ab_s) / math.sqrt(1 - ab_t) * x - math.sqrt(ab_s) * math.expm1(-h) * d
        h_prev, x0_prev = h, x0
    return x


SDE_SAMPLER = "dpmpp-sde"  # SDE-DPM-Solver++(2M): dpm_solver_pp_sample with eta = 1
RUNNERS: dict[str, Callable[..., torch.Tensor]] = {
    **SAMPLERS,
    SDE_SAMPLER: functools.partial(sampling.dpm_solver_pp_sample, eta=1.0),
    BEFORE_SAMPLER: dpmpp_second_order_final,
}


@contextlib.contextmanager
def patched_timesteps(enabled: bool) -> Iterator[None]:
    """Within the block the samplers use ``unclipped_make_timesteps`` (if enabled)."""
    if not enabled:
        yield
        return
    # sampling_timesteps lives in sampling_core (re-exported by sampling): patch it there.
    sampling_core.make_timesteps = unclipped_make_timesteps
    try:
        yield
    finally:
        sampling_core.make_timesteps = _LIBRARY_MAKE_TIMESTEPS


def evaluate(x: torch.Tensor, ref: torch.Tensor, means: torch.Tensor) -> dict[str, float]:
    stats = mode_stats(x, means, STD)
    swd = sliced_wasserstein(x, ref, 256, torch.Generator().manual_seed(3))
    return {"swd": swd, **stats}


# (schedule, sampler key of RUNNERS, spacing or "(all)", unclipped spacing (before)?, steps)
Config = tuple[str, str, str, bool, int]


def reference_rows(n: int, schedule_name: str) -> list[Row]:
    """Fresh mixture samples (the metrics' floor) and pure N(0, I) noise."""
    means = ring_means(K, RADIUS)
    ref = reference_set()
    fresh = mixture_sample(n, means, STD, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(4))
    blank = {"schedule": schedule_name, "spacing": "", "steps": ""}
    return [
        {"sampler": "fresh mixture samples (floor)", **blank, **evaluate(fresh, ref, means)},
        {"sampler": "N(0, I) noise", **blank, **evaluate(noise, ref, means)},
    ]


def reference_set() -> torch.Tensor:
    """NUM_REF mixture draws with exactly NUM_REF / K per mode."""
    g = torch.Generator().manual_seed(1)
    means = ring_means(K, RADIUS)
    noise = torch.randn(NUM_REF, 2, generator=g, dtype=torch.float64)
    return (means.repeat_interleave(NUM_REF // K, dim=0) + STD * noise).float()


def run(n: int, configs: list[Config]) -> list[Row]:
    """One row per config; every run starts from the same x_T (seed 0)."""
    means = ring_means(K, RADIUS)
    ref = reference_set()
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    rows: list[Row] = []
    for schedule_name, sampler, spacing, unclipped, k in configs:
        sched = NoiseSchedule.from_name(schedule_name, 1000)
        oracle = MixtureOracle(sched, means, STD)
        g = torch.Generator().manual_seed(5)  # the noise of the stochastic samplers
        with patched_timesteps(unclipped):
            x = RUNNERS[sampler](
                oracle,
                sched,
                x_T,
                num_steps=k,
                spacing="trailing" if spacing == "(all)" else spacing,
                generator=g,
            )
        rows.append(
            {
                "schedule": schedule_name,
                "sampler": sampler,
                "spacing": f"{spacing}, unclipped (before)" if unclipped else spacing,
                "steps": k,
                **evaluate(x, ref, means),
            }
        )
    return rows


def to_markdown(rows: list[Row], with_schedule: bool = False) -> str:
    head = "| sampler | spacing | steps | sliced W2 | in a mode | spread / true | weight TV |"
    rule = "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
    if with_schedule:
        head, rule = "| schedule " + head, "| --- " + rule
    out = [head, rule]
    for r in rows:
        swd, share = float(r["swd"]), float(r["share_in_mode"])  # type: ignore[arg-type]
        spread, tv = float(r["within_mode_std"]), float(r["weight_tv"])  # type: ignore[arg-type]
        spread_s = "-" if math.isnan(spread) else f"{spread:.2f}"
        line = (
            f"| {r['sampler']} | {r['spacing']} | {r['steps']} | {swd:.3f} | {share:.3f} | "
            f"{spread_s} | {tv:.3f} |"
        )
        out.append(f"| {r['schedule']} " + line if with_schedule else line)
    return "\n".join(out)


def replace_block(text: str, begin: str, end: str, table: str) -> str:
    if begin not in text or end not in text:
        raise SystemExit(f"{DOC} lacks the markers {begin} ... {end}")
    block = f"{begin}\n{table}\n{end}"
    return re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)


def main_configs() -> list[Config]:
    rows: list[Config] = [
        ("linear", sampler, spacing, False, k)
        for sampler in [*SAMPLERS, SDE_SAMPLER]
        for spacing in SPACINGS
        for k in STEPS
    ]
    rows += [("linear", sampler, "(all)", False, 1000) for sampler in [*SAMPLERS, SDE_SAMPLER]]
    return rows


def change_configs() -> list[Config]:
    """Each change next to the behaviour before it; a "(before)" row reverts only that change."""
    few = (5, 10, 20)
    rows: list[Config] = []
    for sampler in ("ddim", "dpmpp"):  # 1. lambda clip (cosine schedule)
        for spacing, unclipped in [
            ("trailing", False),
            ("logsnr", True),
            ("logsnr", False),
            ("karras", True),
            ("karras", False),
        ]:
            rows += [("cosine", sampler, spacing, unclipped, k) for k in few]
    for spacing in SPACINGS:  # 2. lower order final (linear schedule: the clip changes nothing)
        for sampler in (BEFORE_SAMPLER, "dpmpp"):
            rows += [("linear", sampler, spacing, False, k) for k in few]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="samples per row (default 4000)")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the tables in the doc")
    ap.add_argument(
        "--no-changes", action="store_true", help="skip the table of the changes (before vs now)"
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: fastest for these small tensors)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tables = {"linear": to_markdown(reference_rows(args.n, "linear") + run(args.n, main_configs()))}
    if not args.no_changes:
        refs = reference_rows(args.n, "both")
        tables["changes"] = to_markdown(refs + run(args.n, change_configs()), True)
    for name, table in tables.items():
        print(f"\n{name}\n{table}")
    print(f"\n{time.perf_counter() - start:.0f} s")
    if args.write_docs:
        text = DOC.read_text()
        for name, table in tables.items():
            text = replace_block(text, *MARKERS[name], table)
        DOC.write_text(text)
        print(f"updated {DOC}")


if __name__ == "__main__":
    main()
