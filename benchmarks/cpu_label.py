"""The CPU label every benchmark JSON carries: what its timings depend on.

from cpu_label import cpu_label   # a script in benchmarks/ sees this module beside it
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def cpu_label() -> dict[str, Any]:
    """What the timings depend on: the CPU's model name, torch's capability, native bf16,
    logical cores, torch version (as bench_vs_diffusers.py records them, plus the model)."""
    from ddpmkit.nn.compute_path import cpu_has_native_bf16

    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = info.get("model name", "")
    if model and "cpu family" in info:  # "AMD EPYC family 25 model 17", as the results say
        model += f" family {info['cpu family']} model {info.get('model', '?')}"
    flags = set(info.get("flags", "").split())
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "cpu_flags": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}),
        "machine": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
