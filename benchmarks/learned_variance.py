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

    .venv/bin/python benchmarks/learned_variance.py all   # ~80 min on one thread (busy 2-core CPU)

``train ARM`` / ``eval ARM`` run one part (e.g. the two arms in two processes), ``report``
merges the per-arm results into the JSON (results: benchmarks/results/learned_variance.json),
with the paired difference of the bound and the FD of real digits against themselves.
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
    "train.seed=0",
]


def run_dir(work: Path, arm: str) -> Path:
    return work / arm


def train_arm(arm: str, steps: int, batch: int, work: Path) -> dict[str, Any]:
    from ddpmkit.training.config import load_config
    from ddpmkit.training.loop import train

    out = run_dir(work, arm)
    overrides = [
        *TINY_UNET,
        f'out_dir="{out.as_posix()}"',
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


def eval_arm(arm: str, num: int, bpd_images: int, bpd_strata: int, work: Path) -> dict[str, Any]:
    from ddpmkit.data.images import to_model_range
    from ddpmkit.data.registry import load_dataset
    from ddpmkit.evaluation.classifier import extract
    from ddpmkit.evaluation.likelihood import vlb_terms
    from ddpmkit.evaluation.metrics import feature_statistics
    from ddpmkit.trained import load

    m = load(run_dir(work, arm))
    net, sched = m.network, m.schedule
    data = load_dataset("digits")
    real = extract(data.images, "digits").features
    ref = feature_statistics(real)
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
    runs: list[tuple[str, int, str | None]] = [("ddpm1000", 1000, None), ("ddpm50", 50, None)]
    if not res["learn_sigma"]:
        runs.append(("ddpm50_posterior", 50, "posterior"))
    feats: dict[str, torch.Tensor] = {}
    for name, steps, variance in runs:
        t0 = time.time()
        u8 = sample(net, sched, num, steps, variance)
        feats[name] = extract(u8, "digits").features
        res[f"fd_{name}"] = fd(feats[name], ref)
        res[f"{name}_seconds"] = round(time.time() - t0, 1)
    ref1000 = feature_statistics(feats["ddpm1000"])
    for name in feats:
        if name != "ddpm1000":
            res[f"gap_{name}"] = res[f"fd_{name}"] - res["fd_ddpm1000"]
            res[f"fd_{name}_to_ddpm1000_samples"] = fd(feats[name], ref1000)
    res["sampler_variance"] = "learned" if res["learn_sigma"] else "beta (library default)"
    return res


def paired_bpd(bpd_images: int, bpd_strata: int, work: Path) -> dict[str, Any]:
    """Per-image bound of both models on the same images, t draws and noise: the mean and
    standard error of the paired difference learned - fixed (bits/dim)."""
    from ddpmkit.data.images import to_model_range
    from ddpmkit.data.registry import load_dataset
    from ddpmkit.evaluation.likelihood import vlb_terms
    from ddpmkit.trained import load

    x0 = to_model_range(load_dataset("digits").images[:bpd_images])
    totals = {}
    for arm in ARMS:
        m = load(run_dir(work, arm))
        gen = torch.Generator().manual_seed(0)
        terms = vlb_terms(m.network, m.schedule, x0, num_timesteps_eval=bpd_strata, generator=gen)
        totals[arm] = terms["total_bpd"]
    diff = totals["learned"] - totals["fixed"]
    return {
        "mean_learned_minus_fixed": float(diff.mean()),
        "stderr": float(diff.std()) / math.sqrt(len(diff)),
        "share_of_images_lower_with_learned": float((diff < 0).double().mean()),
    }


def fd_floor(num: int, repeats: int = 10) -> dict[str, float]:
    """FD of ``num`` real digits (seeded subsets) against all of them: the estimator's floor and
    spread at this sample size, the scale against which the arms' FDs differ."""
    from ddpmkit.data.registry import load_dataset
    from ddpmkit.evaluation.classifier import extract
    from ddpmkit.evaluation.metrics import feature_statistics

    feats = extract(load_dataset("digits").images, "digits").features
    ref = feature_statistics(feats)
    vals = []
    for s in range(repeats):
        idx = torch.randperm(len(feats), generator=torch.Generator().manual_seed(s))[:num]
        vals.append(fd(feats[idx], ref))
    v = torch.tensor(vals, dtype=torch.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["all", "train", "eval", "report"])
    p.add_argument("arm", nargs="?", choices=ARMS)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--num", type=int, default=500, help="samples per FD")
    p.add_argument("--bpd-images", type=int, default=300)
    p.add_argument("--bpd-strata", type=int, default=100)
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/learned_variance.json"))
    a = p.parse_args(argv)
    arms = [a.arm] if a.arm else list(ARMS)
    a.work.mkdir(parents=True, exist_ok=True)
    for arm in arms:
        part = a.work / f"{arm}.json"
        res = json.loads(part.read_text()) if part.is_file() else {}
        if a.what in ("all", "train"):
            res["train"] = train_arm(arm, a.steps, a.batch, a.work)
        if a.what in ("all", "eval"):
            res["eval"] = eval_arm(arm, a.num, a.bpd_images, a.bpd_strata, a.work)
        if res:
            part.write_text(json.dumps(res, indent=1))
            print(arm, json.dumps(res), file=sys.stderr)
    if a.what in ("all", "report"):
        results = {arm: json.loads((a.work / f"{arm}.json").read_text()) for arm in ARMS}
        paired = paired_bpd(a.bpd_images, a.bpd_strata, a.work)
        floor = fd_floor(a.num)
        doc = {
            "what": "learned vs fixed variances at the same training budget "
            "(benchmarks/learned_variance.py)",
            "dataset": "scikit-learn digits 8x8 (1,797 images), unconditional",
            "network": "U-Net base 16, mults [1, 2], 1 res block, no attention",
            "diffusion": "cosine schedule, T = 1000, eps prediction",
            "train": {"steps": a.steps, "batch": a.batch, "lr": "2e-3 (default)", "ema": 0.999},
            "threads": 1,
            "fd": f"digits classifier features, {a.num} samples vs all 1,797 digits; "
            "DDPM 50 steps trailing spacing, 1000 = every step; seeds 0..N-1",
            "bpd": f"first {a.bpd_images} digits, {a.bpd_strata} stratified timesteps",
            "arms": results,
            "bpd_paired": paired,
            "fd_floor_real_vs_real": floor,
        }
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
