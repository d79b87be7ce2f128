"""The exact-predictor frontier's best configurations, scored again on 10x the samples.

    .venv/bin/python benchmarks/frontier_confirm.py          # ~5 min on one thread

``solver_frontier.py`` scores every configuration on 2,000 samples from one x_T (seed 0). At
that N a mode's spread is measured to about +-1.5% (2,000 exact draws of the ring 0.8
mixture score 0.977-0.997 over six seeds, 20,000 draws 0.991-0.998), the same size as the
issue's 2% tolerance. So here the leading configurations of both frontier JSONs
(``solver_frontier.json``: the x_0 estimate as the last step; ``solver_frontier_ode_end.json``:
the trapezoidal ODE step, ``sampling_core.final_x0``) are run again on N = 20,000 initial
noises from a seed neither the scoring nor the grid optimisation saw (seed 7; the grids were
optimised on seed 1 and scored on seed 0), beside N = 20,000 exact draws (seed 8) and the
ODE itself (unipc on all 1,000 steps) from the same x_T. "Leading" = the TOP best by the
frontier's score at each budget, per library (diffusers' rows have one last step; they are
the same in both JSONs). Same score as the frontier: the worst over the five problem rows of
max((exact share - share) / 0.01, |spread - 1| / 0.02); <= 1 meets the 10-evaluation targets.
Deterministic (fixed seeds, exact predictors): only the wall time depends on the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Any

import torch
from solver_frontier import (
    BUDGETS,
    OUT,
    OUT_ODE,
    PROBLEMS,
    RUNNERS,
    Oracle,
    Row,
    diffusers_configs,
    exact_rows,
    metrics,
    run_diffusers,
    score,
    score_vs_ode,
)

from ddpmkit.sampling import SAMPLERS
from ddpmkit.schedule import NoiseSchedule

RESULT = Path(__file__).resolve().parent / "results" / "frontier_confirm_20k.json"
SEED_X_T = 7
TOP = 4


def x_T(problem: str, n: int) -> torch.Tensor:
    dim = 16 if problem == "gauss16" else 2
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(SEED_X_T))


def leading(rows: list[Row], budget: int, diffusers: bool) -> list[tuple[str, str, float]]:
    """The TOP (sampler, spacing, score at N = 2,000) of one library at a budget."""
    exact = {(r["problem"], r["schedule"]): r for r in rows if r["sampler"] == "exact"}
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if r.get("budget") != budget or "error" in r or r["sampler"] in ("exact", "ode"):
            continue
        if r["sampler"].startswith("diffusers") != diffusers:
            continue
        groups.setdefault((r["sampler"], r["spacing"]), []).append(r)
    scored = [
        (score(g, exact), key)
        for key, g in groups.items()
        if len(g) == len(PROBLEMS) and all(r["nfe"] <= budget for r in g)
    ]
    return [(s, sp, sc) for sc, (s, sp) in sorted(scored)[:TOP]]


@functools.cache
def _diffusers_configs() -> dict[str, tuple[Any, dict[str, Any], int]]:
    """diffusers' configurations by "diffusers NAME/SPACING", built once."""
    return {f"diffusers {name}": (cls, kw, per) for name, cls, kw, per in diffusers_configs()}


def run_config(
    rows: list[Row], sampler: str, spacing: str, budget: int, final_step: str, n: int
) -> list[Row]:
    """One configuration of a frontier JSON on every problem row, from the seed-7 x_T."""
    out = []
    for problem, sched_name in PROBLEMS:
        sched = NoiseSchedule.from_name(sched_name, 1000)
        oracle = Oracle(problem, sched)
        x0 = x_T(problem, n)
        if sampler.startswith("diffusers"):
            cls, kw, per = _diffusers_configs()[f"{sampler}/{spacing}"]
            steps = (budget + 1) // 2 if per == 2 else budget
            x = run_diffusers(cls, kw, sched, oracle, x0, steps).float()
        else:
            key, kw = RUNNERS[sampler]
            if spacing == "optimised":
                (src,) = [r for r in rows if (r["problem"], r["schedule"]) == (problem, sched_name)
                          and r["sampler"] == sampler and r["spacing"] == "optimised"
                          and r["budget"] == budget]  # fmt: skip
                grid: dict[str, Any] = {"timesteps": src["timesteps"]}
            else:
                steps = (budget + 1) // 2 if key == "heun" else budget
                grid = {"num_steps": steps, "spacing": spacing}
            x = SAMPLERS[key](
                oracle,
                sched,
                x0,
                generator=torch.Generator().manual_seed(5),
                final_step=final_step,
                **grid,
                **kw,
            )
        out.append(
            {
                "problem": problem,
                "schedule": sched_name,
                "sampler": sampler,
                "spacing": spacing,
                "budget": budget,
                "final_step": "denoise" if sampler.startswith("diffusers") else final_step,
                "nfe": oracle.calls,
                **metrics(problem, x),
            }
        )
    return out


def ode(final_step: str, n: int) -> list[Row]:
    rows = []
    for problem, sched_name in PROBLEMS:
        sched = NoiseSchedule.from_name(sched_name, 1000)
        x = SAMPLERS["unipc"](
            Oracle(problem, sched), sched, x_T(problem, n), num_steps=1000, final_step=final_step
        )
        rows.append({"problem": problem, "schedule": sched_name, "sampler": "ode",
                     "final_step": final_step, "nfe": 1000, **metrics(problem, x)})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--budgets", default="5,6,8,10", help="comma-separated (default 5,6,8,10)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    budgets = [int(b) for b in args.budgets.split(",")]
    assert all(b in BUDGETS for b in budgets)
    exact = exact_rows(args.n)  # seed 2, as the frontier, at the larger N
    ex = {(r["problem"], r["schedule"]): r for r in exact}
    results: list[dict[str, Any]] = []
    odes = {fin: ode(fin, args.n) for fin in ("denoise", "ode")}
    for fin, path in (("denoise", OUT), ("ode", OUT_ODE)):
        rows = json.loads(path.read_text())["rows"]
        for budget in budgets:
            for lib in (False, True):
                if lib and fin == "ode":
                    continue  # diffusers' rows are the same in both JSONs
                for sampler, spacing, sc2000 in leading(rows, budget, lib):
                    g = run_config(rows, sampler, spacing, budget, fin, args.n)
                    ode_ref = {(r["problem"], r["schedule"]): r for r in odes[fin]}
                    results.append(
                        {
                            "final_step": fin,
                            "budget": budget,
                            "sampler": sampler,
                            "spacing": spacing,
                            "score_n2000": sc2000,
                            "score": score(g, ex),
                            "score_vs_ode": score_vs_ode(g, ode_ref),
                            "rows": g,
                        }
                    )
                    print(f"{fin:8s} {budget:3d} {sampler:24s} {spacing:18s} "
                          f"{sc2000:6.1f} -> {results[-1]['score']:6.1f}", flush=True)  # fmt: skip
    meta = {"n": args.n, "seed_x_T": SEED_X_T, "top": TOP, "torch": torch.__version__}
    RESULT.write_text(
        json.dumps({"meta": meta, "exact": exact, "ode": odes, "results": results}, indent=0) + "\n"
    )
    print(table(exact, odes, results))
    print(f"\n{time.perf_counter() - start:.0f} s; wrote {RESULT}")


def table(exact: list[Row], odes: dict[str, list[Row]], results: list[dict[str, Any]]) -> str:
    def cells(g: list[Row]) -> str:
        by = {(r["problem"], r["schedule"]): r for r in g}
        out = []
        for p in PROBLEMS:
            r = by[p]
            out += (
                [f"{r['in_mode']:.3f}", f"{r['spread']:.3f}"]
                if "in_mode" in r
                else [f"{r['spread']:.3f}"]
            )
        return " | ".join(out)

    ex = {(r["problem"], r["schedule"]): r for r in exact}
    lines = [
        "| last step | budget | configuration (evaluations) | score N=2,000 | score N=20,000 "
        "| vs ODE | ring2 lin. in mode | spread | ring0.8 lin. in mode | spread "
        "| ring0.8 cos. in mode | spread | 16-d lin. | 16-d cos. |",
        "| --- | ---: | --- | ---: | ---: | ---: |" + " ---: |" * 8,
        f"| | | exact sampling | | | | {cells(exact)} |",
    ]
    for fin, g in odes.items():
        lines.append(f"| {fin} | | the ODE itself (unipc, 1,000) | | {score(g, ex):.1f} | "
                     f"| {cells(g)} |")  # fmt: skip
    for r in sorted(results, key=lambda r: (r["budget"], r["final_step"], r["score"])):
        nfe = max(x["nfe"] for x in r["rows"])
        lines.append(
            f"| {r['rows'][0]['final_step']} | {r['budget']} | {r['sampler']}, {r['spacing']} "
            f"({nfe}) | {r['score_n2000']:.1f} | {r['score']:.1f} | {r['score_vs_ode']:.1f} "
            f"| {cells(r['rows'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
