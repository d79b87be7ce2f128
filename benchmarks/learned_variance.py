"""Learned against fixed variances (Nichol & Dhariwal 2021) on the same training budget.

Two runs of one tiny U-Net on scikit-learn's 8x8 digits, identical but for
``diffusion.learn_sigma`` (same seed, steps, batch, data order): "fixed" is L_simple with the
fixed reverse variance, "learned" the hybrid loss L_simple + 0.001 L_vlb with the interpolated
variance. For each (EMA weights):

* bits/dim: the variational bound on the first ``--bpd-images`` digits, ``--bpd-strata``
  stratified timesteps (unbiased), the same t draws and noise for both (the fixed model with
  beta~, as ``ddpm eval`` reports it; the learned model with its own variance);
* FD (features of the shipped digits classifier, against all 1,797 digits) of ``--num``
  samples drawn by DDPM ancestral sampling at 1,000 steps (the reference) and at 50 respaced
  steps (trailing spacing), the same seeds for every set; the fixed model at 50 steps with both
  fixed variances, beta (Ho et al.'s, the library default) and beta~.

Everything runs on one thread (``torch.set_num_threads(1)``) and with fixed step counts, so
the numbers do not depend on the machine's load, only the wall times do. The digits have one
split: the bound is measured on training images.

    .venv/bin/python benchmarks/learned_variance.py all   # 3 seeds x 2 arms, one after another
    # or the two arms in two processes, then the report:
    .venv/bin/python benchmarks/learned_variance.py all fixed & \
    .venv/bin/python benchmarks/learned_variance.py all learned; wait
    .venv/bin/python benchmarks/learned_variance.py report

``--seeds`` names the training seeds (``train.seed``: initialisation and data order; the
sampling seeds are the same for every model). ``report`` merges the per-arm, per-seed results
into the JSON (benchmarks/results/learned_variance.json): each seed's paired bound difference,
and across seeds, per respaced count, learned minus fixed of the distance to the 1,000-step
reference with its standard error over the seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from cpu_label import cpu_label

torch.set_num_threads(1)

WORK = Path("/tmp/ddpmkit_learned_variance")
ARMS = ("fixed", "learned")

TINY_UNET = [
    'data.name="digits"',
    "data.conditional=false",
    "model.base_channels=16",
    "model.channel_mults=[1, 2]",
    "model.attention_resolutions=[]",
    "model.num_res_blocks=1",
    "model.groups=8",
    'diffusion.schedule="cosine"',
    "diffusion.num_steps=1000",
    "train.num_threads=1",
    'train.precision="fp32"',
    'train.channels_last="off"',
    "train.log_every=100",
    "train.sample_every=0",
]


def run_dir(work: Path, seed: int, arm: str) -> Path:
    return work / f"seed{seed}" / arm


def train_arm(arm: str, seed: int, steps: int, batch: int, work: Path) -> dict[str, Any]:
    from ddpmkit.training.config import load_config
    from ddpmkit.training.loop import train

    out = run_dir(work, seed, arm)
    overrides = [
        *TINY_UNET,
        f'out_dir="{out.as_posix()}"',
        f"train.seed={seed}",
        f"train.steps={steps}",
        f"train.batch_size={batch}",
        f"train.checkpoint_every={steps}",
        f"diffusion.learn_sigma={'true' if arm == 'learned' else 'false'}",
    ]
    cfg = load_config(None, overrides)
    t0 = time.time()
    train(cfg, progress=False, log=lambda s: None)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"train_seconds": round(time.time() - t0, 1), "final_loss": recs[-1]["loss"]}


def to_u8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def sample(
    net: Any, sched: Any, num: int, steps: int, variance: str | None, batch: int = 250
) -> torch.Tensor:
    from ddpmkit.sampling import ddpm_sample, initial_noise

    chunks = []
    for lo in range(0, num, batch):
        seeds = list(range(lo, min(num, lo + batch)))
        x_T = initial_noise((len(seeds), 1, 8, 8), seeds=seeds)
        kw = {} if variance is None else {"variance": variance}
        x = ddpm_sample(net, sched, x_T, num_steps=steps, seeds=seeds, clip_x0=1.0, **kw)
        chunks.append(to_u8(x))
    return torch.cat(chunks)


def fd(feats: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor]) -> float:
    from ddpmkit.evaluation.metrics import feature_statistics, frechet_distance

    mu, cov = feature_statistics(feats)
    return frechet_distance(mu, cov, *ref)


def eval_arm(
    arm: str, seed: int, num: int, counts: list[int], bpd_images: int, bpd_strata: int, work: Path
) -> dict[str, Any]:
    """Bits/dim and FD of one trained arm.

    Sample sets: DDPM at every step (the 1,000-step reference) and at each respaced count in
    ``counts``, with the model's variance (learned; for the fixed model beta, the library
    default, and beta~ too). Each set gets ``fd`` (against all 1,797 digits), ``gap`` (its FD
    minus the reference's) and ``fd_to_ref`` (the FD between it and the model's own 1,000-step
    samples: how far the short chain's distribution is from the long chain's)."""
    from ddpmkit.data.images import to_model_range
    from ddpmkit.data.registry import load_dataset
    from ddpmkit.evaluation.classifier import extract
    from ddpmkit.evaluation.likelihood import vlb_terms
    from ddpmkit.evaluation.metrics import feature_statistics
    from ddpmkit.trained import load

    m = load(run_dir(work, seed, arm))
    net, sched = m.network, m.schedule
    data = load_dataset("digits")
    ref = feature_statistics(extract(data.images, "digits").features)
    res: dict[str, Any] = {"learn_sigma": m.config.diffusion.learn_sigma}
    t0 = time.time()
    x0 = to_model_range(data.images[:bpd_images])
    terms = vlb_terms(
        net, sched, x0, num_timesteps_eval=bpd_strata, generator=torch.Generator().manual_seed(0)
    )
    total = terms["total_bpd"]
    res["bpd"] = float(total.mean())
    res["bpd_stderr"] = float(total.std()) / math.sqrt(len(total))
    res["bpd_parts"] = {k: float(terms[k].mean()) for k in ("prior_bpd", "vb_bpd", "decoder_bpd")}
    res["bpd_variance"] = "learned" if res["learn_sigma"] else "posterior (beta~)"
    res["bpd_seconds"] = round(time.time() - t0, 1)
    variances: list[str | None] = [None] if res["learn_sigma"] else [None, "posterior"]
    t0 = time.time()
    ref_feats = extract(sample(net, sched, num, 1000, None), "digits").features
    res["ddpm1000"] = {"fd": fd(ref_feats, ref), "seconds": round(time.time() - t0, 1)}
    ref1000 = feature_statistics(ref_feats)
    for steps in counts:
        for variance in variances:
            name = f"ddpm{steps}" + ("" if variance is None else f"_{variance}")
            t0 = time.time()
            feats = extract(sample(net, sched, num, steps, variance), "digits").features
            val = fd(feats, ref)
            res[name] = {
                "fd": val,
                "gap": val - res["ddpm1000"]["fd"],
                "fd_to_ref": fd(feats, ref1000),
                "seconds": round(time.time() - t0, 1),
            }
    res["sampler_variance"] = "learned" if res["learn_sigma"] else "beta (library default)"
    return res


def paired_bpd(seed: int, bpd_images: int, bpd_strata: int, work: Path) -> dict[str, Any]:
    """Per-image bound of both models of one seed on the same images, t draws and noise: the
    mean and standard error of the paired difference learned - fixed (bits/dim)."""
    from ddpmkit.data.images import to_model_range
    from ddpmkit.data.registry import load_dataset
    from ddpmkit.evaluation.likelihood import vlb_terms
    from ddpmkit.trained import load

    x0 = to_model_range(load_dataset("digits").images[:bpd_images])
    totals = {}
    for arm in ARMS:
        m = load(run_dir(work, seed, arm))
        gen = torch.Generator().manual_seed(0)
        terms = vlb_terms(m.network, m.schedule, x0, num_timesteps_eval=bpd_strata, generator=gen)
        totals[arm] = terms["total_bpd"]
    diff = totals["learned"] - totals["fixed"]
    return {
        "mean_learned_minus_fixed": float(diff.mean()),
        "stderr": float(diff.std()) / math.sqrt(len(diff)),
        "share_of_images_lower_with_learned": float((diff < 0).double().mean()),
    }


def mean_stderr(vals: list[float]) -> dict[str, Any]:
    v = torch.tensor(vals, dtype=torch.float64)
    se: float | None = float(v.std()) / math.sqrt(len(v)) if len(v) > 1 else None  # JSON has no NaN
    return {"mean": float(v.mean()), "stderr": se, "per_seed": vals}


def summarise(results: dict[int, dict[str, Any]], counts: list[int]) -> dict[str, Any]:
    """Across training seeds, per respaced count: learned minus fixed (beta and beta~) of the
    distance to the 1,000-step reference, both as |gap| and as fd_to_ref. Negative = the learned
    variance's short chain is closer to its long chain. The spread is the training seeds'."""
    out: dict[str, Any] = {}
    for steps in counts:
        row: dict[str, Any] = {}
        for fixed_name, label in ((f"ddpm{steps}", "beta"), (f"ddpm{steps}_posterior", "beta~")):
            d_gap, d_ref = [], []
            for r in results.values():
                lrn, fix = r["learned"]["eval"][f"ddpm{steps}"], r["fixed"]["eval"][fixed_name]
                d_gap.append(abs(lrn["gap"]) - abs(fix["gap"]))
                d_ref.append(lrn["fd_to_ref"] - fix["fd_to_ref"])
            row[f"vs_fixed_{label}"] = {
                "abs_gap_learned_minus_fixed": mean_stderr(d_gap),
                "fd_to_ref_learned_minus_fixed": mean_stderr(d_ref),
            }
        for arm, name in (
            ("learned", f"ddpm{steps}"),
            ("fixed", f"ddpm{steps}"),
            ("fixed_beta~", f"ddpm{steps}_posterior"),
        ):
            key = "fixed" if arm.startswith("fixed") else arm
            row[f"fd_{arm}"] = mean_stderr([r[key]["eval"][name]["fd"] for r in results.values()])
            row[f"fd_to_ref_{arm}"] = mean_stderr(
                [r[key]["eval"][name]["fd_to_ref"] for r in results.values()]
            )
        out[f"ddpm{steps}"] = row
    out["ddpm1000_fd"] = {
        arm: mean_stderr([r[arm]["eval"]["ddpm1000"]["fd"] for r in results.values()])
        for arm in ARMS
    }
    out["bpd"] = {
        arm: mean_stderr([r[arm]["eval"]["bpd"] for r in results.values()]) for arm in ARMS
    }
    return out


def fd_floor(num: int, repeats: int = 10) -> dict[str, Any]:
    """FD of ``num`` real digits (seeded subsets, at most all 1,797) against all of them: the
    estimator's floor and spread at this sample size."""
    from ddpmkit.data.registry import load_dataset
    from ddpmkit.evaluation.classifier import extract
    from ddpmkit.evaluation.metrics import feature_statistics

    feats = extract(load_dataset("digits").images, "digits").features
    ref = feature_statistics(feats)
    num = min(num, len(feats) // 2)
    vals = []
    for s in range(repeats):
        idx = torch.randperm(len(feats), generator=torch.Generator().manual_seed(s))[:num]
        vals.append(fd(feats[idx], ref))
    v = torch.tensor(vals, dtype=torch.float64)
    return {"num": num, "mean": float(v.mean()), "std": float(v.std()), "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["all", "train", "eval", "report"])
    p.add_argument("arm", nargs="?", choices=ARMS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--num", type=int, default=2000, help="samples per FD")
    p.add_argument(
        "--counts", type=int, nargs="+", default=[50, 20, 10], help="respaced DDPM step counts"
    )
    p.add_argument("--bpd-images", type=int, default=300)
    p.add_argument("--bpd-strata", type=int, default=100)
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/learned_variance.json"))
    a = p.parse_args(argv)
    arms = [a.arm] if a.arm else list(ARMS)
    if a.what != "report":
        for seed in a.seeds:
            for arm in arms:
                part = a.work / f"seed{seed}" / f"{arm}.json"
                part.parent.mkdir(parents=True, exist_ok=True)
                res = json.loads(part.read_text()) if part.is_file() else {}
                if a.what in ("all", "train"):
                    res["train"] = train_arm(arm, seed, a.steps, a.batch, a.work)
                    part.write_text(json.dumps(res, indent=1))
                if a.what in ("all", "eval"):
                    res["eval"] = eval_arm(
                        arm, seed, a.num, a.counts, a.bpd_images, a.bpd_strata, a.work
                    )
                    part.write_text(json.dumps(res, indent=1))
                print(seed, arm, json.dumps(res), file=sys.stderr, flush=True)
    if a.what in ("all", "report"):
        results = {
            seed: {
                arm: json.loads((a.work / f"seed{seed}" / f"{arm}.json").read_text())
                for arm in ARMS
            }
            for seed in a.seeds
        }
        doc = {
            "what": "learned vs fixed variances at the same training budget, several training "
            "seeds (benchmarks/learned_variance.py)",
            "cpu": cpu_label(),
            "dataset": "scikit-learn digits 8x8 (1,797 images), unconditional",
            "network": "U-Net base 16, mults [1, 2], 1 res block, no attention",
            "diffusion": "cosine schedule, T = 1000, eps prediction",
            "train": {
                "steps": a.steps,
                "batch": a.batch,
                "lr": "2e-3 (default)",
                "ema": 0.999,
                "seeds": a.seeds,
            },
            "threads": 1,
            "fd": f"digits classifier features, {a.num} samples (seeds 0..N-1, the same for "
            "every set) vs all 1,797 digits; DDPM respaced with trailing spacing, 1000 = every "
            "step; fd_to_ref = FD between a set and the same model's 1,000-step samples",
            "bpd": f"first {a.bpd_images} digits, {a.bpd_strata} stratified timesteps",
            "summary": summarise(results, a.counts),
            "bpd_paired": {
                seed: paired_bpd(seed, a.bpd_images, a.bpd_strata, a.work) for seed in a.seeds
            },
            "fd_floor_real_vs_real": fd_floor(a.num),
            "seeds": results,
        }
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(json.dumps(doc["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
