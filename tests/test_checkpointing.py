"""Activation checkpointing of the U-Net: the same loss and gradients, fewer saved activations,
only while training; the config switch reaches the model."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ddpmkit.nn.unet import UNet, UNetConfig
from ddpmkit.training.build import build_model
from ddpmkit.training.config import ConfigError, load_config


def config(conditioning: str = "add+cross", dropout: float = 0.0) -> UNetConfig:
    return UNetConfig(
        in_channels=3,
        image_size=16,
        base_channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        num_heads=2,
        groups=4,
        num_classes=3,
        conditioning=conditioning,
        dropout=dropout,
    )


def pair(cfg: UNetConfig) -> tuple[UNet, UNet]:
    """(plain, checkpointed) with the same weights, perturbed away from the zero init."""
    torch.manual_seed(0)
    plain = UNet(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    ckpt = UNet(cfg, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    return plain, ckpt


def batch(n: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 3, 16, 16, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.tensor([0, 1, 2, -1])[:n]
    return x, t, y


def loss_and_grads(net: UNet, bf16: bool = False) -> tuple[Tensor, list[Tensor]]:
    x, t, y = batch()
    net.train()
    net.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the same dropout masks for both models
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with ctx:
        out = net(x, t, y)
    loss = (out.float() - x).square().mean()
    loss.backward()
    grads = [p.grad.detach().clone() for p in net.parameters()]  # type: ignore[union-attr]
    return loss.detach(), grads


@pytest.mark.parametrize("conditioning", ["add", "add+cross"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_same_loss_and_gradients_fp32(conditioning: str, dropout: float) -> None:
    plain, ckpt = pair(config(conditioning, dropout))
    loss_a, grads_a = loss_and_grads(plain)
    loss_b, grads_b = loss_and_grads(ckpt)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-7)
    assert len(grads_a) == len(grads_b)
    for (name, _), ga, gb in zip(plain.named_parameters(), grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-7, msg=name)


def test_same_loss_and_gradients_bf16_autocast() -> None:
    # The recomputation replays the autocast state: the same bf16 program, so results agree to
    # (at most) bf16 rounding differences of a different kernel order.
    plain, ckpt = pair(config())
    loss_a, grads_a = loss_and_grads(plain, bf16=True)
    loss_b, grads_b = loss_and_grads(ckpt, bf16=True)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-3, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=2e-2, atol=1e-4)


def saved_bytes(net: UNet) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x, t, y = batch()
    net.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, t, y).sum().backward()
    return total


def test_checkpointing_keeps_fewer_activations() -> None:
    plain, ckpt = pair(config())
    kept_plain, kept_ckpt = saved_bytes(plain), saved_bytes(ckpt)
    # Measured: about a sixth here (what remains: block inputs and outputs, which are the skips,
    # conv_in, resampling, the output head); at least halved is the contract.
    assert kept_ckpt < 0.5 * kept_plain, (kept_ckpt, kept_plain)


def test_only_while_training_with_grad() -> None:
    plain, ckpt = pair(config())
    x, t, y = batch()
    for mode in ("eval", "no_grad"):
        with torch.no_grad() if mode == "no_grad" else torch.enable_grad():
            if mode == "eval":
                plain.eval(), ckpt.eval()
            else:
                plain.train(), ckpt.train()
            torch.testing.assert_close(ckpt(x, t, y), plain(x, t, y), rtol=0, atol=0)
    ckpt.eval()
    assert saved_bytes_eval(ckpt) == saved_bytes_eval(plain.eval())


def saved_bytes_eval(net: UNet) -> int:
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x, t, y = batch()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, t, y)
    return total


def test_state_dict_is_the_same() -> None:
    plain, ckpt = pair(config())
    assert list(plain.state_dict()) == list(ckpt.state_dict())


def test_config_switch_reaches_the_unet() -> None:
    cfg = load_config("fashion_mnist", ["model.unet.checkpointing=true"])
    assert cfg.model.unet.checkpointing is True
    model = build_model(cfg.model, (1, 28, 28), 10, cfg.diffusion.num_steps)
    assert isinstance(model, UNet) and model.checkpointing
    assert not load_config("fashion_mnist").model.unet.checkpointing
    with pytest.raises(ConfigError, match="model.unet.checkpointing: expected true or false"):
        load_config("fashion_mnist", ['model.unet.checkpointing="yes"'])
    with pytest.raises(ConfigError, match="model.unet.checkpointing: only the U-Net"):
        load_config("moons", ["model.unet.checkpointing=true"])
