"""ddpmkit's U-Net and training step against diffusers' UNet2DModel + DDPMScheduler, one run.

    .venv/bin/python benchmarks/bench_vs_diffusers.py                       # 28x28 and 64x64
    .venv/bin/python benchmarks/bench_vs_diffusers.py --scenario 28 --json out.json
    .venv/bin/python benchmarks/bench_vs_diffusers.py --scenario 28 --extra nchw,fused

Needs the optional dependency ``pip install -e .[bench]`` (diffusers).

Scenarios (each row = one model + one recipe; recipes in ``benchmarks/steps.py``):

* ``28`` (28x28x1, training batch 128, sampling batch 256): diffusers' ``UNet2DModel`` with
  block_out_channels (32, 64, 128), layers_per_block 1 (the smallest), attention blocks at the
  7x7 level (2.73M parameters) trained as diffusers' unconditional example does (fp32), and
  the same layout narrowed to widths (32, 64, 72) (1.27M, the preset's parameter count). Ours,
  with ddpmkit's training step (bf16 autocast where the CPU has native bf16, as
  ``train.precision = "auto"`` chooses): the fashion preset's space-to-depth U-Net (1.27M,
  0.58 GFLOP per training image) and the same at base 96 (2.84M, 4% more parameters than
  diffusers'); the earlier fashion preset's U-Net (1.74M); the same layout as
  diffusers' (widths 32/64/128, one ResBlock per level, attention at 7x7, time embedding added
  as a bias: 2.74M parameters, 0.05% more, and the same FLOPs); the preset's layout widened to
  base_channels 40 (2.72M parameters, but 1.5x the FLOPs: its parameters sit at higher
  resolution).
* ``64`` (64x64x3, training batch 32, sampling batch 64): the ``folder64`` preset's U-Net
  (base 32, mults 1,2,2,2, attention at 16x16 + middle; 2.41M) against ``UNet2DModel`` with
  block_out_channels (32, 64, 64, 64), layers_per_block 2, attention at the 16x16 level and
  scale-shift time conditioning like ours (2.40M).

For honesty every scenario also has our U-Net in fp32 and diffusers' under the same bf16
autocast. Our bf16 rows run channels_last with the fused NHWC GroupNorm where ``ddpm train``
would (``train.channels_last = "auto"``: a CPU with native bf16 and the kernel built), fp32 rows
NCHW. ``--extra`` adds variants of our bf16 row: ``nchw`` (the same in NCHW), ``fused`` /
``foreach`` (AdamW implementation), ``compile`` (``torch.compile`` of the model; compile time
reported separately), ``checkpointing``.

Method: every variant is warmed up (oneDNN primitive creation), then ``--rounds`` rounds visit
every variant in a rotated order, ``--iters`` calls each. Reported per variant: the median and
the best round (img/s), the spread (max - min) / median, and the ratio to diffusers fp32 as
the median over rounds of the *paired* ratio (this variant's rate / diffusers fp32's rate in the
same round, measured within seconds of each other) and as the ratio of the best rounds. On a
shared machine the paired ratio is the result; the best round is the least disturbed one.
FLOPs per image are counted with ``torch.utils.flop_counter.FlopCounterMode`` (training:
forward + backward; sampling: forward) and achieved GFLOP/s are compared with this CPU's
measured peaks (``bench_peak.py``, re-measured at the end of the run).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from bench_peak import measure_peaks, summary
from steps import Step, diffusers_unet, flops_per_image, ours, theirs

from ddpmkit.nn.unet import UNetConfig

FASHION = UNetConfig(  # the fashion_mnist preset's U-Net (class-conditional, 10 classes)
    in_channels=1,
    image_size=28,
    base_channels=32,
    channel_mults=(1, 2, 2),
    num_res_blocks=2,
    attention_resolutions=(7,),
    num_heads=4,
    groups=8,
    num_classes=10,
)
FOLDER64 = UNetConfig(  # the folder64 preset's U-Net (unconditional: no class subfolders)
    in_channels=3,
    image_size=64,
    base_channels=32,
    channel_mults=(1, 2, 2, 2),
    num_res_blocks=2,
    attention_resolutions=(16,),
    num_heads=4,
    groups=8,
    num_classes=0,
)
# The fashion preset's U-Net from issue 13 on (space-to-depth 2: the U-Net works on 4x14x14,
# 64 channels at 14x14 and 7x7, one ResBlock per level); FASHION above is the earlier preset's
FASHION_P2 = replace(
    FASHION, patch_size=2, base_channels=64, channel_mults=(1, 1), num_res_blocks=1
)
EXTRAS = ("nchw", "fused", "foreach", "compile", "checkpointing")


# diffusers' layout narrowed to the first "ours" row's parameter count; every row also gets
# its paired ratio to it (``*_ratio_vs_equal_params``)
EQUAL_PARAMS = "diffusers at the preset's parameter count fp32"


def scenario_steps(
    scenario: str,
    extras: list[str],
    batch: int | None,
    sample_batch: int | None,
    bf16_rows: bool = True,
) -> tuple[dict[str, Step], dict[str, float]]:
    """The competitors of one scenario, and compile times (s) of compiled variants.

    ``bf16_rows``: False on a CPU without native bf16, where bf16 is emulated (10x slower than
    fp32, measured) and neither library would run it: fp32 rows only, ``--extra`` in fp32."""
    if scenario == "28":
        b, sb = batch or 128, sample_batch or 256
        mine = {
            "ours fashion preset (space-to-depth)": FASHION_P2,
            "ours space-to-depth at base 96": replace(FASHION_P2, base_channels=96),
            "ours old fashion preset (base 32)": FASHION,
            "ours diffusers' layout": replace(
                FASHION, channel_mults=(1, 2, 4), num_res_blocks=1, scale_shift=False
            ),
            "ours preset at base 40": replace(FASHION, base_channels=40),
        }
        dm = lambda: diffusers_unet(1, 28, (32, 64, 128), (False, False, True), 1)  # noqa: E731
        # the same layout narrowed to the preset's parameter count (1,266,345 vs 1,268,036)
        small = lambda: diffusers_unet(1, 28, (32, 64, 72), (False, False, True), 1)  # noqa: E731
        c, size = 1, 28
    elif scenario == "64":
        b, sb = batch or 32, sample_batch or 64
        mine = {"ours folder64 preset": FOLDER64}
        dm = lambda: diffusers_unet(  # noqa: E731
            3, 64, (32, 64, 64, 64), (False, False, True, False), 2, scale_shift=True
        )
        small = None
        c, size = 3, 64
    else:
        raise SystemExit(f"unknown scenario {scenario!r}; expected 28 or 64")
    steps: dict[str, Step] = {}
    compile_s: dict[str, float] = {}
    for name, cfg in mine.items():
        if bf16_rows:
            steps[f"{name} bf16"] = ours(f"{name} bf16", cfg, batch=b, sample_batch=sb)
        steps[f"{name} fp32"] = ours(f"{name} fp32", cfg, batch=b, sample_batch=sb, bf16=False)
    first, cfg0 = next(iter(mine.items()))
    for extra in extras:
        if extra not in EXTRAS:
            raise SystemExit(f"unknown --extra {extra!r}; expected some of {list(EXTRAS)}")
        kw: dict[str, object] = {}
        if extra == "nchw":
            kw["channels_last"] = False
        elif extra in ("fused", "foreach"):
            kw["optimizer"] = extra
        elif extra == "compile":
            kw["compile_model"] = True
        else:
            kw["checkpointing"] = True
        if not bf16_rows:
            kw["bf16"] = False
        name = f"{first} {'bf16' if bf16_rows else 'fp32'} {extra}"
        steps[name] = ours(name, cfg0, batch=b, sample_batch=sb, **kw)  # type: ignore[arg-type]
        if extra == "compile":
            t0 = time.perf_counter()
            steps[name].train()
            steps[name].sample()
            compile_s[name] = time.perf_counter() - t0
    steps["diffusers fp32"] = theirs("diffusers fp32", dm(), c, size, batch=b, sample_batch=sb)
    if small is not None:
        steps[EQUAL_PARAMS] = theirs(EQUAL_PARAMS, small(), c, size, batch=b, sample_batch=sb)
    if bf16_rows:
        steps["diffusers bf16"] = theirs(
            "diffusers bf16", dm(), c, size, batch=b, sample_batch=sb, bf16=True
        )
    return steps, compile_s


def rate(fn: Callable[[], None], images: int, iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return images * iters / (time.perf_counter() - t0)


def spread(v: list[float]) -> float:
    return (max(v) - min(v)) / statistics.median(v)


def run_scenario(scenario: str, args: argparse.Namespace, extras: list[str]) -> dict[str, object]:
    steps, compile_s = scenario_steps(
        scenario, extras, args.batch, args.sample_batch, bf16_rows=args.bf16_rows
    )
    flops: dict[str, tuple[float, float]] = {}
    for name, st in steps.items():
        if "compile" in name:  # count on the eager model (same operations)
            continue
        flops[name] = flops_per_image(st)  # also a warm-up call of both steps
    for name in steps:
        if name not in flops:
            flops[name] = flops[next(iter(steps))]
    for st in steps.values():
        st.train()
        st.sample()
    names = list(steps)
    rates: dict[str, dict[str, list[float]]] = {n: {"train": [], "sample": []} for n in names}
    t_start = time.perf_counter()
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            st = steps[name]
            rates[name]["train"].append(rate(st.train, st.batch, args.iters))
            rates[name]["sample"].append(rate(st.sample, st.sample_batch, args.iters))
        took = time.perf_counter() - t_start
        print(f"  {scenario}: round {r + 1}/{args.rounds} done ({took:.0f} s)", flush=True)
    elapsed = time.perf_counter() - t_start
    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in rates.items()}
    base = rates["diffusers fp32"]
    rows = []
    for name in names:
        st, m, rr = steps[name], med[name], rates[name]
        paired = {
            k: statistics.median(a / b for a, b in zip(rr[k], base[k])) for k in ("train", "sample")
        }
        best = {k: max(rr[k]) for k in ("train", "sample")}
        eq = rates.get(EQUAL_PARAMS)
        vs_equal = {
            f"{k}_ratio_vs_equal_params": statistics.median(a / b for a, b in zip(rr[k], eq[k]))
            for k in ("train", "sample")
            if eq is not None
        }
        rows.append(
            {
                "variant": name,
                "params": st.params,
                "batch": st.batch,
                "sample_batch": st.sample_batch,
                "train_images_per_s": m["train"],
                "train_best_images_per_s": best["train"],
                "train_ratio_vs_diffusers_fp32": paired["train"],
                "train_best_ratio_vs_diffusers_fp32": best["train"] / max(base["train"]),
                "train_spread": spread(rates[name]["train"]),
                "train_flops_per_image": flops[name][0],
                "train_gflops_per_s": m["train"] * flops[name][0] / 1e9,
                "train_best_gflops_per_s": best["train"] * flops[name][0] / 1e9,
                "sample_images_per_s": m["sample"],
                "sample_best_images_per_s": best["sample"],
                "sample_ratio_vs_diffusers_fp32": paired["sample"],
                "sample_best_ratio_vs_diffusers_fp32": best["sample"] / max(base["sample"]),
                "sample_spread": spread(rates[name]["sample"]),
                "sample_flops_per_image": flops[name][1],
                "sample_gflops_per_s": m["sample"] * flops[name][1] / 1e9,
                "sample_best_gflops_per_s": best["sample"] * flops[name][1] / 1e9,
                "train_rounds": rates[name]["train"],
                "sample_rounds": rates[name]["sample"],
                "compile_s": compile_s.get(name),
                **vs_equal,
            }
        )
    return {"scenario": scenario, "elapsed_s": elapsed, "rows": rows}


def print_table(res: dict[str, object], peaks: dict[str, float]) -> None:
    rows = res["rows"]
    assert isinstance(rows, list)
    print(f"\nscenario {res['scenario']} ({res['elapsed_s']:.0f} s of interleaved rounds)")
    print("img/s: median and best round; x diff: paired ratio to diffusers fp32 (median) and")
    pk_name = "conv3x3_bf16" if "conv3x3_bf16" in peaks else "conv3x3_fp32"
    print(f"ratio of best rounds; GFLOP/s and % of the {pk_name} peak at the best round")
    head = (
        f"{'variant':40s} {'params':>6s} {'MFLOP':>5s} | {'train img/s':>11s} {'x diff':>9s} "
        f"{'sprd':>5s} {'GFLOP/s':>7s} {'%pk':>4s} | {'sample img/s':>12s} {'x diff':>9s} "
        f"{'sprd':>5s} {'GFLOP/s':>7s}"
    )
    print(head)
    print("-" * len(head))
    pk = peaks[pk_name] / 1e9
    for r in rows:
        cells = [f"{r['variant']:40s} {r['params'] / 1e6:5.2f}M"]
        cells.append(f"{r['train_flops_per_image'] / 1e6:5.0f} |")
        for k in ("train", "sample"):
            g = r[f"{k}_best_gflops_per_s"]
            cells += [
                f"{r[f'{k}_images_per_s']:6.1f} {r[f'{k}_best_images_per_s']:5.1f}",
                f"{r[f'{k}_ratio_vs_diffusers_fp32']:4.2f}",
                f"{r[f'{k}_best_ratio_vs_diffusers_fp32']:4.2f}",
                f"{r[f'{k}_spread']:5.0%} {g:7.1f}",
            ]
            cells.append(f"{g / pk:4.0%} |" if k == "train" else "")
        print(" ".join(cells))
    eq_rows = [r for r in rows if "train_ratio_vs_equal_params" in r]
    if eq_rows:
        print(f"paired ratio to {EQUAL_PARAMS!r} (train / sample):")
        for r in eq_rows:
            print(
                f"  {r['variant']:40s} {r['train_ratio_vs_equal_params']:4.2f} / "
                f"{r['sample_ratio_vs_equal_params']:4.2f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scenario", default="28,64", help="comma-separated: 28, 64")
    ap.add_argument("--extra", default="", help=f"comma-separated, of {', '.join(EXTRAS)}")
    ap.add_argument("--batch", type=int, default=None, help="training batch (28: 128, 64: 32)")
    ap.add_argument("--sample-batch", type=int, default=None, help="(28: 256, 64: 64)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=1, help="calls per variant per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, metavar="OUT")
    ap.add_argument(
        "--bf16",
        default="auto",
        choices=["auto", "on", "off"],
        help="bf16 rows: auto = only on a CPU with native bf16 (emulated elsewhere)",
    )
    args = ap.parse_args()
    from ddpmkit.nn.compute_path import cpu_has_native_bf16

    args.bf16_rows = args.bf16 == "on" or (args.bf16 == "auto" and cpu_has_native_bf16())
    torch.set_num_threads(args.threads)
    extras = [e for e in args.extra.split(",") if e]
    results = [run_scenario(s, args, extras) for s in args.scenario.split(",") if s]
    best = measure_peaks(rounds=3, bf16=args.bf16_rows)
    peaks = summary(best)
    print(
        f"\ntorch {torch.__version__}, {args.threads} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; measured peaks (GFLOP/s): "
        + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items())
    )
    for res in results:
        print_table(res, peaks)
    if args.json:
        out = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": " ".join(sys.argv),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_native_bf16": cpu_has_native_bf16(),
            "threads": args.threads,
            "rounds": args.rounds,
            "iters": args.iters,
            "peaks_flops_per_s": peaks,
            "kernels_flops_per_s": best,
            "scenarios": results,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
