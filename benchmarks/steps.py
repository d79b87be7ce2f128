"""Training and sampling steps shared by the benchmarks: ddpmkit's and diffusers' own recipes.

Not a benchmark itself; imported by ``bench_vs_diffusers.py`` and ``bench_memory.py`` (run from
the repository root as ``.venv/bin/python benchmarks/NAME.py``, which puts this folder on the
import path).

* :func:`ours` is the step of ``ddpmkit.training.loop.train`` without the logging/checkpoint
  bookkeeping: draw the batch from a uint8 dataset with the run's generator (indices, t, noise,
  flips, label drops), ``[-1, 1]`` scaling, bf16 autocast, ``diffusion_loss_per_sample``
  (eps, MSE, min-SNR-5 as in the fashion preset), backward, grad-norm clip (1.0) and the
  finite check, loss-by-quarter statistics, AdamW (betas 0.9/0.99), EMA update.
* :func:`theirs` is the step of diffusers' ``examples/unconditional_image_generation/
  train_unconditional.py`` with its defaults: ``DDPMScheduler(1000, "linear").add_noise``,
  ``UNet2DModel(...).sample``, ``F.mse_loss(out.float(), noise.float())``, fp32
  (``mixed_precision="no"``), grad-norm clip 1.0, ``AdamW(lr=1e-4, betas=(0.95, 0.999),
  weight_decay=1e-6, eps=1e-8)``, a cosine LR schedule with warm-up (``get_scheduler``), no EMA
  (``--use_ema`` is off by default), the batch drawn from the same kind of uint8 tensor.

Sampling: one denoiser evaluation per image (``inference_mode``, eval mode), the unit cost of
every sampler step.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpmkit.data.images import to_model_range
from ddpmkit.diffusion import diffusion_loss_per_sample
from ddpmkit.nn.groupnorm import prefer_channels_last
from ddpmkit.nn.unet import UNet, UNetConfig, num_parameters
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.training.ema import EMA

__all__ = ["Step", "diffusers_unet", "ours", "theirs"]

DATASET_SIZE = 512  # uint8 images in the synthetic in-memory dataset


@dataclass
class Step:
    """One competitor: callables for one training step and one sampling call."""

    name: str
    train: Callable[[], object]
    sample: Callable[[], None]
    params: int
    batch: int
    sample_batch: int
    model: nn.Module


def _dataset(c: int, h: int, w: int, gen: torch.Generator) -> Tensor:
    return torch.randint(0, 256, (DATASET_SIZE, c, h, w), generator=gen, dtype=torch.uint8)


def _autocast(bf16: bool) -> AbstractContextManager[object]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def ours(
    name: str,
    cfg: UNetConfig,
    *,
    batch: int = 128,
    sample_batch: int = 256,
    bf16: bool = True,
    channels_last: bool | None = None,
    optimizer: str = "default",
    compile_model: bool = False,
    checkpointing: bool = False,
    ema: bool = True,
    seed: int = 0,
) -> Step:
    """ddpmkit's training step (as in ``training/loop.py``) on ``UNet(cfg)``.

    ``optimizer``: "default" (``torch.optim.AdamW`` as loop.py builds it: torch's default
    implementation choice), "foreach" or "fused".
    """
    if channels_last is None:  # as `ddpm train` decides (train.channels_last = "auto")
        channels_last = prefer_channels_last(torch.device("cpu"), bf16)
    torch.manual_seed(seed)
    model = UNet(cfg, checkpointing=checkpointing)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)  # type: ignore[call-overload]
    n_params = num_parameters(model)
    sched = NoiseSchedule.from_name("cosine", 1000)
    kw: dict[str, bool] = {}
    if optimizer == "fused":
        kw["fused"] = True
    elif optimizer == "foreach":
        kw["foreach"] = True
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0, betas=(0.9, 0.99), **kw)
    averaged = EMA(model, 0.998, 500) if ema else None
    net: Callable[..., Tensor] = torch.compile(model) if compile_model else model  # type: ignore[assignment]
    gen = torch.Generator().manual_seed(seed)
    c, (h, w) = cfg.in_channels, cfg.hw
    data = _dataset(c, h, w, gen)
    cond = cfg.num_classes > 0
    labels = torch.randint(0, max(cfg.num_classes, 1), (DATASET_SIZE,), generator=gen)
    q_sum, q_cnt = torch.zeros(4), torch.zeros(4)
    params = list(model.parameters())

    def train() -> None:
        model.train()
        for group in opt.param_groups:
            group["lr"] = 2e-3
        idx = torch.randint(0, DATASET_SIZE, (batch,), generator=gen)
        t = torch.randint(0, sched.num_steps, (batch,), generator=gen)
        noise = torch.randn((batch, c, h, w), generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.5
        drop = torch.rand(batch, generator=gen) < 0.1
        x = to_model_range(data[idx])
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = None
        if cond:
            y = labels[idx].clone()
            y[drop] = -1
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            noise = noise.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        with _autocast(bf16):
            per, _ = diffusion_loss_per_sample(
                net, sched, x, y=y, t=t, noise=noise, prediction="eps", min_snr_gamma=5.0
            )
            loss = per.mean()
        loss.backward()
        gnorm = nn.utils.clip_grad_norm_(params, 1.0)
        if not (torch.isfinite(gnorm) and torch.isfinite(loss)):
            raise RuntimeError("non-finite loss in the benchmark")
        with torch.no_grad():
            q = (t * 4 // sched.num_steps).clamp(max=3)
            q_sum.index_add_(0, q, per.detach().float())
            q_cnt.index_add_(0, q, torch.ones_like(per))
        opt.step()
        if averaged is not None:
            averaged.update(model)

    xs = torch.randn(sample_batch, c, h, w, generator=gen).contiguous(memory_format=fmt)
    ts = torch.randint(0, 1000, (sample_batch,), generator=gen)
    ys = torch.randint(-1, cfg.num_classes, (sample_batch,), generator=gen) if cond else None

    def sample() -> None:
        model.eval()
        with torch.inference_mode(), _autocast(bf16):
            net(xs, ts, ys)

    return Step(name, train, sample, n_params, batch, sample_batch, model)


def diffusers_unet(
    in_channels: int,
    size: int,
    block_out_channels: tuple[int, ...],
    attention: tuple[bool, ...],
    layers_per_block: int,
    *,
    norm_num_groups: int = 8,
    scale_shift: bool = False,
) -> nn.Module:
    """diffusers' ``UNet2DModel``: one level per entry of ``block_out_channels``, an
    ``AttnDownBlock2D``/``AttnUpBlock2D`` pair at the levels where ``attention`` is true."""
    from diffusers import UNet2DModel

    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DModel(  # type: ignore[no-any-return]
        sample_size=size,
        in_channels=in_channels,
        out_channels=in_channels,
        layers_per_block=layers_per_block,
        block_out_channels=block_out_channels,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=norm_num_groups,
        resnet_time_scale_shift="scale_shift" if scale_shift else "default",
    )


def theirs(
    name: str,
    model: nn.Module,
    in_channels: int,
    size: int,
    *,
    batch: int = 128,
    sample_batch: int = 256,
    bf16: bool = False,
    seed: int = 0,
    data: Tensor | None = None,
    total_steps: int = 10**6,
) -> Step:
    """diffusers' unconditional training example's step on ``model`` (see module docstring).

    ``data``: uint8 (N, C, H, W) training images (default: the synthetic benchmark set);
    ``total_steps``: the horizon of the cosine LR schedule (the example's epochs x batches).
    ``train()`` returns the step's loss (a detached tensor, not read).
    """
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    torch.manual_seed(seed)
    n_params = num_parameters(model)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8
    )
    lr_scheduler = get_scheduler(
        "cosine", optimizer=opt, num_warmup_steps=500, num_training_steps=total_steps
    )
    gen = torch.Generator().manual_seed(seed)
    c, h, w = in_channels, size, size
    images = _dataset(c, h, w, gen) if data is None else data

    def train() -> Tensor:
        model.train()
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.5
        clean = to_model_range(images[idx])
        clean = torch.where(flip[:, None, None, None], clean.flip(-1), clean)
        noise = torch.randn(clean.shape, generator=gen)
        timesteps = torch.randint(0, 1000, (batch,), generator=gen).long()
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        with _autocast(bf16):
            out = model(noisy, timesteps).sample
        loss = F.mse_loss(out.float(), noise.float())
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_scheduler.step()
        opt.zero_grad()
        return loss.detach()

    xs = torch.randn(sample_batch, c, h, w, generator=gen)
    ts = torch.randint(0, 1000, (sample_batch,), generator=gen)

    def sample() -> None:
        model.eval()
        with torch.inference_mode(), _autocast(bf16):
            model(xs, ts)

    return Step(name, train, sample, n_params, batch, sample_batch, model)


def flops_per_image(step: Step) -> tuple[float, float]:
    """(training FLOPs per image: forward + backward, sampling FLOPs per image: forward),
    counted with ``torch.utils.flop_counter.FlopCounterMode`` on one call of each."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step.train()
    train_flops = fc.get_total_flops() / step.batch
    with FlopCounterMode(display=False) as fc:
        step.sample()
    return train_flops, fc.get_total_flops() / step.sample_batch
