"""Which numeric format and memory layout a U-Net runs in on this device, and why.

One decision, used by training (``train.precision`` / ``train.channels_last`` = "auto"), by the
sampler's loader (``ddpm sample``, ``ddpm eval``, ``ddpm plot``) and by previews, so all of them
take the same path on the same machine. The rule comes from measurements side by side
(``benchmarks/bench_unet_layout.py``; ``docs/performance.md``), keyed by what the CPU can do:

=====================================  ==========================================  =========
CPU (detected)                          measured, fashion preset U-Net, 2 threads    path
=====================================  ==========================================  =========
native bf16 (AVX-512 BF16 / AMX)        bf16 several x fp32; NHWC with the fused     bf16 NHWC
                                        GroupNorm 1.18x train / 1.22x sample NCHW
no native bf16 (AVX2/FMA, e.g. Zen 3,   bf16 autocast 0.09x train / 0.04-0.18x       fp32 NCHW
most laptops and cloud VMs)             sample (emulated); fp32 NHWC 0.81x / 0.78x
CUDA                                    bf16 where the GPU supports it               bf16 NCHW
=====================================  ==========================================  =========

Detection: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` (oneDNN's own test for native bf16
instructions), which :func:`cpu_has_native_bf16` wraps so tests can fake either kind of CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpmkit.nn.groupnorm import prefer_channels_last

__all__ = ["ComputePath", "choose_path", "cpu_capability", "cpu_has_native_bf16"]


def cpu_has_native_bf16() -> bool:
    """True if oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX), not emulated."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def cpu_capability() -> str:
    """The vector ISA torch dispatches to on this CPU ("AVX2", "AVX512", ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - very old or unusual builds
        return "unknown"


@dataclass(frozen=True)
class ComputePath:
    """The chosen path: bf16 autocast or fp32, NHWC or NCHW, and a one-line reason."""

    bf16: bool
    channels_last: bool
    reason: str

    def describe(self) -> str:
        fmt = "bf16 autocast" if self.bf16 else "fp32"
        return f"{fmt} {'channels_last' if self.channels_last else 'NCHW'} ({self.reason})"


def _auto_bf16(device: torch.device) -> tuple[bool, str]:
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"CUDA {'with' if ok else 'without'} bf16"
    cap = cpu_capability()
    if cpu_has_native_bf16():
        return True, f"CPU {cap} with native bf16, where bf16 measured several times fp32"
    return False, f"CPU {cap} without native bf16, where bf16 measured 0.09x fp32"


def choose_path(
    device: torch.device,
    *,
    precision: str = "auto",
    channels_last: str = "auto",
    images: bool = True,
    trained_bf16: bool | None = None,
) -> ComputePath:
    """The fastest measured path on ``device``, unless the caller forces one.

    ``precision``: "auto" | "fp32" | "bf16"; ``channels_last``: "auto" | "on" | "off".
    ``images``: False for the 2-D MLPs: fp32 unless bf16 is asked for (autocast does not pay
    at that size), never channels_last (no feature maps).
    ``trained_bf16`` (loaders): with "auto", a model trained in fp32 samples in fp32 on every
    machine (its samples do not depend on the machine); one trained in bf16 samples in bf16
    only where bf16 is native, else in fp32, which is the same function at full precision and
    10-25x faster on a CPU that would emulate bf16.
    """
    if not images:
        bf16 = precision == "bf16"
        return ComputePath(bf16, False, "asked for" if bf16 else "small 2-D network")
    if precision == "bf16":
        bf16, why = True, "train.precision = bf16"
        if device.type == "cpu" and not cpu_has_native_bf16():
            why += f"; emulated on this CPU ({cpu_capability()}), slower than fp32"
    elif precision == "fp32":
        bf16, why = False, "fp32 asked for"
    else:
        bf16, why = _auto_bf16(device)
        if trained_bf16 is False and bf16:
            bf16, why = False, "trained in fp32: sampled in fp32"
    if channels_last == "on":
        return ComputePath(bf16, True, why + "; channels_last asked for")
    if channels_last == "off":
        return ComputePath(bf16, False, why)
    # "auto": NHWC only where it was measured to pay: a CPU in bf16 with the fused GroupNorm.
    nhwc = prefer_channels_last(device, bf16)
    if device.type == "cpu" and not bf16:
        why += " and fp32 channels_last 0.81x"
    return ComputePath(bf16, nhwc, why)
