"""The fused NHWC GroupNorm(+scale/shift)(+SiLU) kernel against a float64 reference written from
the definition (Wu & He 2018, eq. 1-2; SiLU(y) = y * sigmoid(y)), values and all gradients;
and the U-Net computing the same function in NCHW (torch's ops) and NHWC (the kernel)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import Tensor, nn

from ddpmkit.nn import groupnorm
from ddpmkit.nn.groupnorm import group_norm_act
from ddpmkit.nn.unet import UNet, UNetConfig

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="no C++ compiler: the fused kernel cannot be built here",
)


def _reference(
    x: Tensor,
    groups: int,
    w: Tensor,
    b: Tensor,
    scale: Tensor | None,
    shift: Tensor | None,
    act: bool,
    eps: float = 1e-5,
) -> Tensor:
    """float64, from the definition: per (sample, group) mean and biased variance."""
    n, c, h, wd = x.shape
    xg = x.reshape(n, groups, c // groups * h * wd)
    mean = xg.sum(-1, keepdim=True) / xg.shape[-1]
    var = ((xg - mean) ** 2).sum(-1, keepdim=True) / xg.shape[-1]
    z = ((xg - mean) / torch.sqrt(var + eps)).reshape(n, c, h, wd)
    y = z * w[None, :, None, None] + b[None, :, None, None]
    if scale is not None:
        y = y * (1 + scale)
    if shift is not None:
        y = y + shift
    return y * torch.sigmoid(y) if act else y


def _kernel_or_fail() -> None:
    assert groupnorm.fused_kernel_available(), "the fused kernel did not build (see the warning)"


CASES = [  # (N, C, H, W, groups)
    (3, 32, 7, 5, 8),
    (2, 48, 9, 9, 6),
    (1, 16, 4, 11, 16),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale_shift", [False, True])
@pytest.mark.parametrize("act", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_fused_matches_float64_definition(
    dtype: torch.dtype, scale_shift: bool, act: bool, case: tuple[int, ...]
) -> None:
    _kernel_or_fail()
    n, c, h, w, groups = case
    gen = torch.Generator().manual_seed(sum(case))
    x64 = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64) * 3 + 1.5
    w64 = torch.randn(c, generator=gen, dtype=torch.float64)
    b64 = torch.randn(c, generator=gen, dtype=torch.float64)
    s64 = 0.5 * torch.randn(n, c, 1, 1, generator=gen, dtype=torch.float64) if scale_shift else None
    t64 = torch.randn(n, c, 1, 1, generator=gen, dtype=torch.float64) if scale_shift else None
    dout = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    x_in = x64.to(dtype)  # the reference sees the same rounded input as the kernel
    leaves64 = [x_in.double().requires_grad_(), w64.requires_grad_(), b64.requires_grad_()]
    if scale_shift:
        assert s64 is not None and t64 is not None
        leaves64 += [s64.requires_grad_(), t64.requires_grad_()]
    ref = _reference(leaves64[0], groups, *leaves64[1:3], *(leaves64[3:] or [None, None]), act)
    grads64 = torch.autograd.grad(ref, leaves64, dout)

    norm = nn.GroupNorm(groups, c)
    with torch.no_grad():
        norm.weight.copy_(w64)
        norm.bias.copy_(b64)
    x = x_in.contiguous(memory_format=torch.channels_last).requires_grad_()
    scale = s64.detach().float().requires_grad_() if s64 is not None else None
    shift = t64.detach().float().requires_grad_() if t64 is not None else None
    out = group_norm_act(norm, x, scale, shift, act)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    leaves = [x, norm.weight, norm.bias] + ([scale, shift] if scale_shift else [])
    grads = torch.autograd.grad(out, leaves, dout.to(dtype))  # type: ignore[arg-type]

    # fp32: float arithmetic with float64 sums; bf16: one rounding of the output (2^-8 relative)
    # and of dout, with float accumulation inside
    tol = 1e-5 if dtype == torch.float32 else 1.6e-2
    scale_ref = ref.abs().max().item()
    assert (out.double() - ref).abs().max().item() <= tol * max(scale_ref, 1.0)
    for got, want in zip(grads, grads64):
        err = (got.double() - want).abs().max().item()
        assert err <= tol * max(want.abs().max().item(), 1.0), (err, want.abs().max().item())


def test_variance_of_a_large_offset_is_accurate() -> None:
    """mean 1000, std 0.01 in float32: E[x^2] - E[x]^2 would lose every digit; the kernel's
    shifted sums must give the normalised values to float32 accuracy of the deviations."""
    _kernel_or_fail()
    gen = torch.Generator().manual_seed(0)
    x64 = 1000 + 0.01 * torch.randn(2, 8, 16, 16, generator=gen, dtype=torch.float64)
    x = x64.float()
    norm = nn.GroupNorm(2, 8)
    out = group_norm_act(norm, x.contiguous(memory_format=torch.channels_last), act=False)
    ref = _reference(x.double(), 2, norm.weight.double(), norm.bias.double(), None, None, False)
    assert (out.double() - ref).abs().max().item() < 2e-2  # values are O(1); 1000 * 2^-24 / 0.01


def test_nan_input_gives_nan_output_in_its_group() -> None:
    """A NaN must not become a finite number (the trainer's finite check relies on it)."""
    _kernel_or_fail()
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    x[0, 3, 1, 2] = float("nan")
    norm = nn.GroupNorm(2, 8)
    for act in (False, True):
        out = group_norm_act(
            norm, x.bfloat16().contiguous(memory_format=torch.channels_last), act=act
        )
        assert torch.isnan(out[0, :4]).all()  # the NaN's group (channels 0-3 of sample 0)
        assert torch.isfinite(out[0, 4:]).all() and torch.isfinite(out[1]).all()


def _unet() -> UNet:
    cfg = UNetConfig(
        in_channels=3,
        image_size=8,
        base_channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        num_heads=2,
        groups=4,
        num_classes=3,
        conditioning="cross",
        scale_shift=True,
    )
    torch.manual_seed(0)
    model = UNet(cfg)
    with torch.no_grad():  # zero-initialised last layers would make every output 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_unet_nhwc_equals_nchw_forward_and_backward() -> None:
    """Same weights, fp32: NCHW runs torch's GroupNorm, NHWC the fused kernel."""
    _kernel_or_fail()
    model = _unet()
    nhwc = _unet().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=gen)
    t = torch.randint(0, 1000, (4,), generator=gen)
    y = torch.tensor([0, 2, -1, 1])
    outs, grads = [], []
    for m, xin in ((model, x), (nhwc, x.contiguous(memory_format=torch.channels_last))):
        out = m(xin, t, y)
        out.square().mean().backward()
        outs.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))  # type: ignore[union-attr]
    assert outs[1].is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(outs[0], outs[1], atol=1e-5, rtol=1e-4)
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-3)


def test_kernel_can_be_switched_off() -> None:
    """DDPMKIT_NO_FUSED_KERNEL=1: no kernel, so no channels_last by default, torch's ops."""
    code = (
        "import torch; from ddpmkit.nn import groupnorm as g; "
        "print(g.fused_kernel_available(), g.prefer_channels_last(torch.device('cpu'), True))"
    )
    env = {**os.environ, "DDPMKIT_NO_FUSED_KERNEL": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.split() == ["False", "False"]


def test_channels_last_is_preferred_only_on_a_bf16_cpu_with_the_kernel() -> None:
    _kernel_or_fail()
    assert groupnorm.prefer_channels_last(torch.device("cpu"), bf16=True)
    assert not groupnorm.prefer_channels_last(torch.device("cpu"), bf16=False)
    assert not groupnorm.prefer_channels_last(torch.device("cuda"), bf16=True)
