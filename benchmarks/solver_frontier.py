"""Sampler quality against model evaluations on exact predictors: issue 16's frontier.

    .venv/bin/python benchmarks/solver_frontier.py                # JSON + print the tables
    .venv/bin/python benchmarks/solver_frontier.py --write-docs   # + rewrite docs/samplers.md
    .venv/bin/python benchmarks/solver_frontier.py --reuse --write-docs  # new rows only

Problems (exact E[eps | x_t], so the only error is the sampler's; T = 1000):

* ``ring2``: 8 Gaussians of std 0.05 on a ring of radius 2 (the table of docs/samplers.md),
  linear schedule;
* ``ring0.8``: 8 Gaussians of std 0.05 on a ring of radius 0.8, linear and cosine schedules;
* ``gauss16``: a 16-d Gaussian N(0.5, 0.1^2 I), linear and cosine schedules.

Quality: share of samples within the 99.9% radius of a mode and the within-mode spread / true
std (``mode_stats``) for the rings; for the 16-d Gaussian the spread ratio
sqrt(mean (x - mu)^2) / 0.1. Exact sampling (fresh draws of the data) is the reference row.
Every configuration starts from the same x_T (seed 0; 2,000 samples per row); the stochastic
samplers draw their noise from seed 5.

Samplers: every entry of ``ddpmkit.sampling.SAMPLERS`` but ddpm (ancestral; hopeless below 50
steps, see docs/samplers.md), plus ``dpmpp-sde`` (eta = 1), ``dpmpp3m-sde`` (eta = 1),
``dpmpp3m-refd2`` (the reference code's d2 term), ``unipc1``/``unipc3`` (orders 1 and 3;
``unipc`` is order 2), each with every spacing of ``SPACINGS``; evaluation budgets 3, 4, 5, 6,
8, 10, 15, 20 (Heun: n = (budget + 1) // 2 time points, 2 n - 1 evaluations, recorded).
diffusers (if installed): DPMSolverMultistep (dpmsolver++, order 2 and 3), UniPCMultistep
(orders 2 and 3), EulerDiscrete, HeunDiscrete and DDIM, configured with the same betas, with
``timestep_spacing`` linspace/leading/trailing and, where offered, Karras sigmas (and, for
DPMSolverMultistep, ``use_lu_lambdas``: steps uniform in lambda); a configuration diffusers
fails on (Karras sigmas on the cosine schedule: repeated timesteps, IndexError) is recorded
with its error and scores inf; the same
exact predictor (closed form at any continuous timestep: diffusers' Karras/Euler timesteps are
interpolated indices, mapped back to sigma by the same interpolation of log sigma) and the same
x_T (times ``init_noise_sigma`` for the sigma-space schedulers).

Optimised grids (``optimised_rows``): ``dpmpp``, ``dpmpp3m`` and ``unipc`` on timesteps from
``ddpmkit.step_schedule.optimise_timesteps`` (J = MSE to unipc on 100 log-SNR steps), optimised
per problem row, solver and budget on OPT_BATCH = 512 other x_T (seed 1; at most 300 evaluations
of J, 3 descents, the last timestep optimised too: ``end_at_zero=False``) and scored on the
seed-0 x_T of every other row (spacing "optimised"; the grid, its J and the best fixed
spacing's J are in the row). ``ode_rows``: unipc on all 1,000 steps from the seed-0 x_T, the
answer every ODE solver converges to; "vs ODE" scores against it.
``--reuse`` keeps the fixed-spacing and diffusers rows of the JSON (deterministic) and recomputes
the exact, ODE and optimised rows only.

Best configuration per budget: the one with the lowest worst-case score over the five problem
rows, score = max over rows of max((exact share - share) / 0.01, |spread - 1| / 0.02) (both
spreads of the rings and the 16-d spread), so a score <= 1 meets the issue's 10-evaluation
targets everywhere; <= 5 meets the 5-evaluation spread target (10%) (the >= 90% share target is
checked on its own).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ddpmkit.evaluation.oracle import mixture_sample, mode_stats, ring_means
from ddpmkit.sampling import SAMPLERS, SPACINGS, make_timesteps
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.step_schedule import optimise_timesteps

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "samplers.md"
OUT = ROOT / "benchmarks" / "results" / "solver_frontier.json"
BEGIN, END = "<!-- solver-frontier:begin -->", "<!-- solver-frontier:end -->"
# --final-step ode: every ddpmkit row ends with the trapezoidal ODE step to sigma = 0
# (sampling_core.final_x0) instead of the x_0 estimate; its own JSON and table
OUT_ODE = ROOT / "benchmarks" / "results" / "solver_frontier_ode_end.json"
BEGIN_ODE, END_ODE = (
    "<!-- solver-frontier-ode-end:begin -->",
    "<!-- solver-frontier-ode-end:end -->",
)
BUDGETS = (3, 4, 5, 6, 8, 10, 15, 20)
RING_STD = 0.05
G_MU, G_STD, G_DIM = 0.5, 0.1, 16
PROBLEMS = [
    ("ring2", "linear"),
    ("ring0.8", "linear"),
    ("ring0.8", "cosine"),
    ("gauss16", "linear"),
    ("gauss16", "cosine"),
]

Row = dict[str, Any]


# ----------------------------------------------------------------------------- exact predictors


def _means(problem: str) -> torch.Tensor:
    return ring_means(8, 2.0 if problem == "ring2" else 0.8)


def eps_at_abar(problem: str, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """E[eps | x_t] in closed form at any abar (B, 1), float64 inside, float32 out."""
    xd = x.double()
    a, b2 = abar.sqrt(), 1 - abar
    if problem == "gauss16":
        return (b2.sqrt() * (xd - a * G_MU) / (abar * G_STD**2 + b2)).float()
    m = _means(problem).double()
    v = abar * RING_STD**2 + b2  # (B, 1)
    centred = xd[:, None, :] - a[:, :, None] * m[None]  # (B, K, D)
    r = torch.softmax(-0.5 * centred.pow(2).sum(-1) / v, dim=1)
    eps_k = b2.sqrt()[:, :, None] * centred / v[:, :, None]
    return (r[:, :, None] * eps_k).sum(1).float()


class Oracle:
    """model(x_t, t): t integer (ddpmkit) or a float index (diffusers' interpolated timesteps,
    mapped to sigma by linear interpolation of log sigma between indices, as diffusers does)."""

    def __init__(self, problem: str, schedule: NoiseSchedule):
        self.problem = problem
        ab = schedule.alphas_bar.double()
        self.abar = ab
        self.log_sigma = 0.5 * torch.log((1 - ab) / ab)
        self.calls = 0

    def abar_at(self, t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return self.abar[t.long()][:, None]
        tf = t.double().clamp(0, len(self.abar) - 1)
        lo = tf.floor().long()
        hi = (lo + 1).clamp(max=len(self.abar) - 1)
        w = tf - lo.double()
        ls = (1 - w) * self.log_sigma[lo] + w * self.log_sigma[hi]
        return (1 / (1 + torch.exp(2 * ls)))[:, None]

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.calls += 1
        return eps_at_abar(self.problem, x, self.abar_at(t.reshape(-1).expand(x.shape[0])))


# ----------------------------------------------------------------------------- metrics


def metrics(problem: str, x: torch.Tensor) -> dict[str, float]:
    if problem == "gauss16":
        spread = float((x.double() - G_MU).pow(2).mean().sqrt()) / G_STD
        return {"spread": spread, "mean_err": float((x.double().mean(0) - G_MU).abs().max())}
    s = mode_stats(x, _means(problem), RING_STD)
    return {"in_mode": s["share_in_mode"], "spread": s["within_mode_std"], "tv": s["weight_tv"]}


def exact_rows(n: int) -> list[Row]:
    rows = []
    for problem, sched_name in PROBLEMS:
        g = torch.Generator().manual_seed(2)
        if problem == "gauss16":
            x = G_MU + G_STD * torch.randn(n, G_DIM, generator=g)
        else:
            x = mixture_sample(n, _means(problem), RING_STD, generator=g)
        rows.append(
            {
                "problem": problem,
                "schedule": sched_name,
                "sampler": "exact",
                "spacing": "",
                "budget": 0,
                "nfe": 0,
                **metrics(problem, x),
            }
        )
    return rows


# ----------------------------------------------------------------------------- ddpmkit runs

RUNNERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("ddim", {}),
    "dpmpp": ("dpmpp", {}),
    "dpmpp-sde": ("dpmpp", {"eta": 1.0}),
    "dpmpp3m": ("dpmpp3m", {}),
    "dpmpp3m-sde": ("dpmpp3m", {"eta": 1.0}),
    "dpmpp3m-refd2": ("dpmpp3m", {"reference_d2": True}),
    "unipc1": ("unipc", {"order": 1}),
    "unipc": ("unipc", {"order": 2}),
    "unipc3": ("unipc", {"order": 3}),
    "heun": ("heun", {}),
}


def x_T(problem: str, n: int) -> torch.Tensor:
    return torch.randn(
        n, G_DIM if problem == "gauss16" else 2, generator=torch.Generator().manual_seed(0)
    )


def ddpmkit_rows(n: int, only: list[str] | None = None, final_step: str = "denoise") -> list[Row]:
    """Every runner x spacing x budget; with final_step "ode" the spacings whose grid does not
    end at t = 0 (trailing) are skipped (the samplers refuse them)."""
    rows = []
    for problem, sched_name in PROBLEMS:
        sched = NoiseSchedule.from_name(sched_name, 1000)
        x0 = x_T(problem, n)
        for name, (key, kw) in RUNNERS.items():
            if only and name not in only:
                continue
            for spacing in SPACINGS:
                for budget in BUDGETS:
                    steps = (budget + 1) // 2 if key == "heun" else budget
                    if final_step != "denoise" and make_timesteps(sched, steps, spacing)[-1] != 0:
                        continue
                    oracle = Oracle(problem, sched)
                    x = SAMPLERS[key](
                        oracle,
                        sched,
                        x0,
                        num_steps=steps,
                        spacing=spacing,
                        generator=torch.Generator().manual_seed(5),
                        final_step=final_step,
                        **kw,
                    )
                    rows.append(
                        {
                            "problem": problem,
                            "schedule": sched_name,
                            "sampler": name,
                            "spacing": spacing,
                            "budget": budget,
                            "nfe": oracle.calls,
                            **metrics(problem, x),
                        }
                    )
    return rows


# ----------------------------------------------------------------------------- optimised grids

OPT_SOLVERS = ("dpmpp", "dpmpp3m", "unipc")
OPT_BATCH, OPT_SEED, OPT_EVALS, OPT_STARTS = 512, 1, 300, 3


def ode_rows(n: int, steps: int = 1000, final_step: str = "denoise") -> list[Row]:
    """The ODE's own answer: unipc on all 1,000 steps from the scored x_T (seed 0): the limit
    of every ODE solver on these x_T, whatever its grid (the last step returns the x_0
    estimate at t = 0, where sigma = 0.010 (linear) / 0.006 (cosine))."""
    rows = []
    for problem, sched_name in PROBLEMS:
        sched = NoiseSchedule.from_name(sched_name, 1000)
        x = SAMPLERS["unipc"](
            Oracle(problem, sched), sched, x_T(problem, n), num_steps=steps, final_step=final_step
        )
        rows.append(
            {
                "problem": problem,
                "schedule": sched_name,
                "sampler": "ode",
                "spacing": f"unipc {steps}",
                "budget": 0,
                "nfe": steps,
                **metrics(problem, x),
            }
        )
    return rows


def optimised_rows(n: int, final_step: str = "denoise") -> list[Row]:
    """Each solver with its grid optimised (ddpmkit.step_schedule, J = MSE to unipc 100 steps)
    per problem row and budget on OPT_BATCH draws of x_T from seed OPT_SEED, then scored on
    the n draws from seed 0 that every other row uses: the grid never saw the scored x_T."""
    rows = []
    for problem, sched_name in PROBLEMS:
        sched = NoiseSchedule.from_name(sched_name, 1000)
        dim = G_DIM if problem == "gauss16" else 2
        x_opt = torch.randn(OPT_BATCH, dim, generator=torch.Generator().manual_seed(OPT_SEED))
        for name in OPT_SOLVERS:
            for budget in BUDGETS:
                res = optimise_timesteps(
                    Oracle(problem, sched),
                    sched,
                    x_opt,
                    name,
                    budget,
                    max_evals=OPT_EVALS,
                    starts=OPT_STARTS,
                    # the free end scored better here (docs/samplers.md); the ODE end needs t = 0
                    end_at_zero=final_step == "ode",
                    sampler_kwargs={"final_step": final_step},
                )
                oracle = Oracle(problem, sched)
                x = SAMPLERS[name](
                    oracle,
                    sched,
                    x_T(problem, n),
                    timesteps=list(res.timesteps),
                    final_step=final_step,
                )
                rows.append(
                    {
                        "problem": problem,
                        "schedule": sched_name,
                        "sampler": name,
                        "spacing": "optimised",
                        "budget": budget,
                        "nfe": oracle.calls,
                        "timesteps": list(res.timesteps),
                        "objective": res.objective,
                        "baseline": res.baseline,
                        "start_spacing": res.start_spacing,
                        **metrics(problem, x),
                    }
                )
    return rows


# ----------------------------------------------------------------------------- diffusers runs


def diffusers_configs() -> list[tuple[str, Callable[..., Any], dict[str, Any], int]]:
    """(name, scheduler class, kwargs, evaluations per step count: 1, or 2 for Heun)."""
    import diffusers as d

    out: list[tuple[str, Callable[..., Any], dict[str, Any], int]] = []
    for sp in ("linspace", "leading", "trailing"):
        out.append((f"ddim/{sp}", d.DDIMScheduler, {"timestep_spacing": sp}, 1))
        for karras in (False, True):
            ks = "+karras" if karras else ""
            common = {"timestep_spacing": sp, "use_karras_sigmas": karras}
            for order in (2, 3):
                out.append(
                    (
                        f"dpmsolver++{order}/{sp}{ks}",
                        d.DPMSolverMultistepScheduler,
                        {**common, "solver_order": order, "algorithm_type": "dpmsolver++"},
                        1,
                    )
                )
                out.append(
                    (
                        f"unipc{order}/{sp}{ks}",
                        d.UniPCMultistepScheduler,
                        {**common, "solver_order": order},
                        1,
                    )
                )
            out.append((f"euler/{sp}{ks}", d.EulerDiscreteScheduler, common, 1))
        for order in (2, 3):  # steps uniform in lambda (Lu et al.), the closest to our logsnr
            out.append(
                (
                    f"dpmsolver++{order}/{sp}+lu",
                    d.DPMSolverMultistepScheduler,
                    {
                        "timestep_spacing": sp,
                        "use_lu_lambdas": True,
                        "solver_order": order,
                        "algorithm_type": "dpmsolver++",
                    },
                    1,
                )
            )
            out.append((f"heun/{sp}{ks}", d.HeunDiscreteScheduler, common, 2))
    return out


def run_diffusers(
    cls: Callable[..., Any],
    kw: dict[str, Any],
    sched: NoiseSchedule,
    oracle: Oracle,
    x0: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    s = cls(num_train_timesteps=sched.num_steps, trained_betas=sched.betas.double().numpy(), **kw)
    s.set_timesteps(steps)
    x = x0 * float(s.init_noise_sigma)
    for t in s.timesteps:
        inp = s.scale_model_input(x, t)
        tt = t.reshape(1)
        eps = oracle(inp, tt if tt.is_floating_point() else tt.long())
        x = s.step(eps, t, x).prev_sample
    return x


def diffusers_rows(n: int) -> list[Row]:
    try:
        configs = diffusers_configs()
    except ImportError:
        return []
    rows = []
    for problem, sched_name in PROBLEMS:
        sched = NoiseSchedule.from_name(sched_name, 1000)
        x0 = x_T(problem, n)
        for name, cls, kw, per in configs:
            for budget in BUDGETS:
                steps = (budget + 1) // 2 if per == 2 else budget
                oracle = Oracle(problem, sched)
                try:
                    x = run_diffusers(cls, kw, sched, oracle, x0, steps)
                except Exception as e:  # a configuration diffusers rejects
                    rows.append(
                        {
                            "problem": problem,
                            "schedule": sched_name,
                            "sampler": "diffusers " + name.split("/")[0],
                            "spacing": name.split("/")[1],
                            "budget": budget,
                            "error": f"{type(e).__name__}: {e}"[:200],
                        }
                    )
                    continue
                rows.append(
                    {
                        "problem": problem,
                        "schedule": sched_name,
                        "sampler": "diffusers " + name.split("/")[0],
                        "spacing": name.split("/")[1],
                        "budget": budget,
                        "nfe": oracle.calls,
                        **metrics(problem, x.float()),
                    }
                )
    return rows


# ----------------------------------------------------------------------------- summary


def score(rows: list[Row], exact: dict[tuple[str, str], Row]) -> float:
    worst = 0.0
    for r in rows:
        ex = exact[(r["problem"], r["schedule"])]
        spread = r["spread"]
        if spread is None or (isinstance(spread, float) and math.isnan(spread)):
            return math.inf
        s = abs(spread - 1) / 0.02
        if "in_mode" in r:
            s = max(s, (ex["in_mode"] - r["in_mode"]) / 0.01)
        worst = max(worst, s)
    return worst


def best_per_budget(
    rows: list[Row], exact: dict[tuple[str, str], Row], diffusers: bool
) -> dict[int, tuple[str, str, float, list[Row]]]:
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for r in rows:
        if "error" in r or r["sampler"] in ("exact", "ode"):
            continue
        if r["sampler"].startswith("diffusers") != diffusers:
            continue
        groups.setdefault((r["sampler"], r["spacing"], r["budget"]), []).append(r)
    best: dict[int, tuple[str, str, float, list[Row]]] = {}
    for (sampler, spacing, budget), g in groups.items():
        if len(g) != len(PROBLEMS) or any(r["nfe"] > budget for r in g):
            continue
        sc = score(g, exact)
        if budget not in best or sc < best[budget][2]:
            best[budget] = (sampler, spacing, sc, g)
    return best


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}"


def _cells(g: list[Row]) -> str:
    by = {(r["problem"], r["schedule"]): r for r in g}
    out = []
    for p in PROBLEMS:
        r = by[p]
        if "in_mode" in r:
            out += [_fmt(r["in_mode"]), _fmt(r["spread"], 2)]
        else:
            out.append(_fmt(r["spread"], 3))
    return " | ".join(out)


def _head() -> tuple[str, str]:
    cols = []
    for problem, sched in PROBLEMS:
        if problem == "gauss16":
            cols.append(f"16-d spread ({sched})")
        else:
            cols += [f"{problem} in mode ({sched})", f"{problem} spread ({sched})"]
    return " | ".join(cols), " | ".join("---:" for _ in cols)


def tables(rows: list[Row]) -> str:
    exact = {(r["problem"], r["schedule"]): r for r in rows if r["sampler"] == "exact"}
    ode = {(r["problem"], r["schedule"]): r for r in rows if r["sampler"] == "ode"}
    head, rule = _head()
    lines = [
        f"| library | budget | best configuration (evaluations) | score | vs ODE | {head} |",
        f"| --- | ---: | --- | ---: | ---: | {rule} |",
        f"| exact sampling | | fresh draws of the data | | | {_cells(list(exact.values()))} |",
    ]
    if ode:
        sc = score(list(ode.values()), exact)
        nfe = max(r["nfe"] for r in ode.values())
        cells = _cells(list(ode.values()))
        lines.append(f"| the ODE itself | | unipc, logsnr ({nfe}) | {sc:.1f} | | {cells} |")
    for lib, flag in (("ddpmkit", False), ("diffusers", True)):
        best = best_per_budget(rows, exact, flag)
        for budget in BUDGETS:
            if budget not in best:
                continue
            sampler, spacing, sc, g = best[budget]
            nfe = max(r["nfe"] for r in g)
            vs = f"{score_vs_ode(g, ode):.1f}" if ode else ""
            config = f"{sampler}, {spacing} ({nfe})"
            lines.append(f"| {lib} | {budget} | {config} | {sc:.1f} | {vs} | {_cells(g)} |")
    # Each ddpmkit solver's best spacing per budget (worst-case score).
    lines += [
        "",
        "| solver | " + " | ".join(f"{b} evals" for b in BUDGETS) + " |",
        "| --- | " + " | ".join("---" for _ in BUDGETS) + " |",
    ]
    names = [
        *RUNNERS,
        *sorted({r["sampler"] for r in rows if r["sampler"].startswith("diffusers")}),
    ]
    optimised = {r["sampler"] for r in rows if r.get("spacing") == "optimised"}
    for name in names:
        for opt in (False, True) if name in optimised else (False,):
            cells = []
            for budget in BUDGETS:
                cand: dict[str, list[Row]] = {}
                for r in rows:
                    if r.get("sampler") != name or r.get("budget") != budget or "error" in r:
                        continue
                    if (r["spacing"] == "optimised") == opt:
                        cand.setdefault(r["spacing"], []).append(r)
                scored = [
                    (score(g, exact), sp) for sp, g in cand.items() if len(g) == len(PROBLEMS)
                ]
                if not scored:
                    cells.append("-")
                    continue
                sc, sp = min(scored)
                cells.append(f"{sc:.1f}" if opt else f"{sc:.1f} ({sp})")
            label = f"{name}, optimised grid" if opt else name
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def score_vs_ode(rows: list[Row], ode: dict[tuple[str, str], Row]) -> float:
    """``score`` against the ODE's own answer instead of the truth: the worst over rows of
    max((ODE share - share) / 0.01, |spread / ODE spread - 1| / 0.02), i.e. the solver's error
    alone, without the bias that every ODE solver shares on these x_T."""
    worst = 0.0
    for r in rows:
        ref = ode[(r["problem"], r["schedule"])]
        spread = r["spread"]
        if spread is None or (isinstance(spread, float) and math.isnan(spread)):
            return math.inf
        s = abs(spread / ref["spread"] - 1) / 0.02
        if "in_mode" in r:
            s = max(s, (ref["in_mode"] - r["in_mode"]) / 0.01)
        worst = max(worst, s)
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="samples per row (default 2000)")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the table in the doc")
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep the fixed-spacing and diffusers rows of the results JSON (deterministic) "
        "and recompute only the exact, ODE and optimised-grid rows",
    )
    ap.add_argument(
        "--final-step",
        choices=("denoise", "ode"),
        default="denoise",
        help="the ddpmkit samplers' last step (sampling_core.final_x0); ode writes its own JSON "
        "and docs table, with diffusers' rows taken from the denoise JSON (they do not change)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    fin = args.final_step
    out, begin, end = (OUT_ODE, BEGIN_ODE, END_ODE) if fin == "ode" else (OUT, BEGIN, END)
    if fin == "ode":
        diffusers_old = [r for r in json.loads(OUT.read_text())["rows"]
                         if r["sampler"].startswith("diffusers")]  # fmt: skip
        rows = exact_rows(args.n) + ode_rows(args.n, final_step=fin)
        rows += ddpmkit_rows(args.n, final_step=fin) + optimised_rows(args.n, final_step=fin)
        rows += diffusers_old
    elif args.reuse:
        old = json.loads(OUT.read_text())["rows"]
        kept = [r for r in old if r["sampler"] not in ("exact", "ode")]
        kept = [r for r in kept if r.get("spacing") != "optimised"]
        rows = exact_rows(args.n) + ode_rows(args.n) + kept + optimised_rows(args.n)
    else:
        rows = exact_rows(args.n) + ode_rows(args.n) + ddpmkit_rows(args.n)
        rows += optimised_rows(args.n)
        if not args.no_diffusers:
            rows += diffusers_rows(args.n)
    import diffusers

    meta = {
        "n": args.n,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "budgets": list(BUDGETS),
        "problems": PROBLEMS,
        "optimised": {
            "solvers": list(OPT_SOLVERS),
            "batch": OPT_BATCH,
            "seed": OPT_SEED,
            "max_evals": OPT_EVALS,
            "starts": OPT_STARTS,
            "objective": "mse to unipc 100 logsnr steps",
            "end_at_zero": fin == "ode",
        },
        "final_step": fin,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=0) + "\n")
    table = tables(rows)
    print(table)
    print(f"\n{time.perf_counter() - start:.0f} s; wrote {out}")
    if args.write_docs:
        text = DOC.read_text()
        block = f"{begin}\n{table}\n{end}"
        if begin in text:
            text = re.sub(
                re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S
            )
        else:
            text += f"\n{block}\n"
        DOC.write_text(text)
        print(f"updated {DOC}")


if __name__ == "__main__":
    main()
