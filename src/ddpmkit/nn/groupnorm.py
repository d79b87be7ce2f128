"""GroupNorm, optional per-sample scale/shift, optional SiLU: one function, two implementations.

``group_norm_act(norm, x, scale, shift, act)`` computes

    y = GN(x) * (1 + scale) + shift,   out = SiLU(y) if act else y

(GroupNorm: Wu & He 2018, eq. 1-2 with the affine ``norm.weight``/``norm.bias``; scale-shift:
improved-diffusion's ``use_scale_shift_norm``; SiLU: Elfwing et al. 2018). ``scale`` and
``shift`` are (B, C, 1, 1) or None.

On a CPU, for a channels_last (NHWC) ``x`` in float32 or bfloat16, it runs a fused C++ kernel
(``csrc/groupnorm_nhwc.cpp``: one pass for the statistics and one for the output forward, two
passes backward), built on first use with the C++ compiler torch's extension loader finds and
cached in :func:`ddpmkit.io.cache_dir` (``$DDPMKIT_CACHE``, default ``~/.cache/ddpmkit``).
Everywhere else (NCHW maps, CUDA, no compiler, ``torch.compile`` tracing) it runs torch's own
ops, which compute the same function. Why: torch's native GroupNorm on NHWC maps takes 2-5x its
NCHW time on this CPU, which cancels the gain of oneDNN's NHWC convolutions; with the fused
kernel, channels_last training is faster than NCHW (``docs/performance.md``).

``fused_kernel_available()`` says whether the kernel built; the build is tried once per process
and a failure is reported once, as a warning naming the cause.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpmkit.io import cache_dir

__all__ = [
    "fused_kernel_available",
    "group_norm_act",
    "group_norm_act_reference",
    "prefer_channels_last",
]

_SOURCE = Path(__file__).with_name("csrc") / "groupnorm_nhwc.cpp"
_kernel: Any = None
_tried = False


_NAME = "ddpmkit_groupnorm_nhwc"


def _cpu_signature() -> bytes:
    """The CPU's model and flags: the build uses -march=native, so a cache shared between
    machines (a network home) must not hand one CPU's build to another."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine().encode()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
    return "\n".join(keep).encode()


def _cache_dir() -> Path:
    """The build folder: named by the source's hash, torch's version and the CPU."""
    root = cache_dir()
    digest = hashlib.sha256(_SOURCE.read_bytes() + _cpu_signature()).hexdigest()[:12]
    return root / f"groupnorm_nhwc-torch{torch.__version__}-{digest}"


def _import_built(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(_NAME, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(build: Path) -> Any:
    from torch.utils.cpp_extension import load

    if shutil.which("ninja") is None:  # torch's loader runs `ninja`; the PyPI wheel has one
        import ninja  # type: ignore[import-not-found]

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    build.mkdir(parents=True, exist_ok=True)
    return load(
        name=_NAME,
        sources=[str(_SOURCE)],
        extra_cflags=["-O3", "-march=native"],
        build_directory=str(build),
        verbose=False,
    )


def _load() -> Any:
    """Build (or load the cached build of) the C++ kernel; None if it cannot be built."""
    global _kernel, _tried
    if _tried:
        return _kernel
    _tried = True
    if os.environ.get("DDPMKIT_NO_FUSED_KERNEL"):
        return None
    try:
        build = _cache_dir()
        built = build / f"{_NAME}.so"
        # a finished build is imported directly (no compiler or ninja run in every process);
        # the folder name holds the source's hash, torch's version and the CPU
        _kernel = _import_built(built) if built.is_file() else _build(build)
    except Exception as exc:  # no compiler, no ninja, read-only cache...: fall back, say so
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(
            f"ddpmkit: the fused NHWC GroupNorm kernel could not be built ({first}); "
            "channels_last GroupNorm falls back to torch's ops (slower on CPUs)",
            RuntimeWarning,
            stacklevel=3,
        )
        _kernel = None
    return _kernel


def fused_kernel_available() -> bool:
    """True if the fused NHWC GroupNorm kernel is (or can be) built on this machine."""
    return _load() is not None


def prefer_channels_last(device: torch.device, bf16: bool) -> bool:
    """Whether a U-Net should run channels_last (NHWC) on ``device`` by default.

    Yes on a CPU in bf16 when the fused kernel is available: measured side by side on the
    2-core AVX-512-BF16 CPU (``benchmarks/bench_vs_diffusers.py --extra nchw``,
    ``docs/performance.md``), NHWC with the fused GroupNorm trains the fashion preset's U-Net
    1.18x and the folder64 one 1.26x faster than NCHW, and samples 1.22x and 1.30x faster;
    without the kernel, NHWC was slower (0.84x training). fp32 keeps NCHW (measured on a 2-core
    AVX2 CPU: fp32 NHWC with the kernel 0.81x training, 0.78x sampling), as does CUDA (not
    measured to pay). :func:`ddpmkit.nn.compute_path.choose_path` applies this rule.
    """
    return device.type == "cpu" and bf16 and fused_kernel_available()


def group_norm_act_reference(
    norm: nn.GroupNorm, x: Tensor, scale: Tensor | None, shift: Tensor | None, act: bool
) -> Tensor:
    """The same function with torch's ops: SiLU(GN(x) * (1 + scale) + shift)."""
    h = norm(x)
    if scale is not None:
        h = h * (1 + scale)
    if shift is not None:
        h = h + shift
    return F.silu(h) if act else h


class _FusedGroupNormAct(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        scale: Tensor | None,
        shift: Tensor | None,
        groups: int,
        eps: float,
        act: bool,
    ) -> Tensor:
        out, mean, rstd = _kernel.forward(x, weight, bias, scale, shift, groups, eps, act)
        ctx.save_for_backward(x, mean, rstd, weight, bias, scale, shift)
        ctx.groups, ctx.act = groups, act
        ctx.has_scale, ctx.has_shift = scale is not None, shift is not None
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, mean, rstd, weight, bias, scale, shift = ctx.saved_tensors
        dout = dout.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dx, dw, db, dscale, dshift = _kernel.backward(
            dout, x, mean, rstd, weight, bias, scale, shift, ctx.groups, ctx.act
        )
        return (
            dx,
            dw,
            db,
            dscale if ctx.has_scale else None,
            dshift if ctx.has_shift else None,
            None,
            None,
            None,
        )


def _per_sample(t: Tensor | None, b: int, c: int) -> Tensor | None:
    """(B, C, 1, 1) (or broadcastable) -> contiguous float32 (B, C), or None."""
    if t is None:
        return None
    return t.float().expand(b, c, 1, 1).reshape(b, c).contiguous()


def _can_fuse(x: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
        and not torch.compiler.is_compiling()
        and _load() is not None
    )


def group_norm_act(
    norm: nn.GroupNorm,
    x: Tensor,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    act: bool = True,
) -> Tensor:
    """SiLU(GN(x) * (1 + scale) + shift) (see the module docstring); output dtype = x's dtype
    on the fused path, as torch's GroupNorm gives under autocast."""
    if not (_can_fuse(x) and norm.affine):
        return group_norm_act_reference(norm, x, scale, shift, act)
    b, c = x.shape[:2]
    out: Tensor = _FusedGroupNormAct.apply(
        x,
        norm.weight.float(),
        norm.bias.float(),
        _per_sample(scale, b, c),
        _per_sample(shift, b, c),
        norm.num_groups,
        norm.eps,
        act,
    )
    return out
