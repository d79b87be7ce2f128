"""Network contracts: shapes over a grid of configs, embeddings, null class, gradients, errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from ddpmkit.nn.embeddings import LabelEmbedding, LabelTokens, TimeEmbedding, sinusoidal_embedding
from ddpmkit.nn.mlp import SinusoidalMLP, StepEmbedMLP
from ddpmkit.nn.unet import UNet, UNetConfig


def tiny(**kw: object) -> UNetConfig:
    base = dict(base_channels=8, groups=4, num_heads=2, num_res_blocks=1)
    base.update(kw)
    return UNetConfig(**base)  # type: ignore[arg-type]


SIZES = {8: (1, 2), 28: (1, 2, 2), 32: (1, 2, 2), 64: (1, 2, 2, 2)}


@pytest.mark.parametrize(
    "channels, size, attention, conditioning",
    list(
        itertools.product(
            [1, 3], [8, 28, 32, 64], [True, False], ["none", "add", "cross", "add+cross"]
        )
    ),
)
def test_output_shape_equals_input_shape(
    channels: int, size: int, attention: bool, conditioning: str
) -> None:
    mults = SIZES[size]
    attn = (size // 2,) if attention else ()
    cfg = tiny(
        in_channels=channels,
        image_size=size,
        channel_mults=mults,
        attention_resolutions=attn,
        num_classes=0 if conditioning == "none" else 3,
        conditioning="add" if conditioning == "none" else conditioning,
    )
    net = UNet(cfg)
    x = torch.randn(2, channels, size, size)
    t = torch.tensor([0, 999])
    y = None if conditioning == "none" else torch.tensor([0, 2])
    assert net(x, t, y).shape == x.shape


def test_non_square_channels_last_and_bf16() -> None:
    net = UNet(
        tiny(
            in_channels=3,
            image_size=(16, 24),
            channel_mults=(1, 2),
            attention_resolutions=(8,),
            num_classes=2,
        )
    )
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 24).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, torch.tensor([1, 2]), torch.tensor([0, 1]))
    assert out.shape == x.shape and torch.isfinite(out.float()).all()


def test_distinct_timesteps_give_distinct_embeddings() -> None:
    t = torch.arange(1000)
    e = sinusoidal_embedding(t, 64)
    assert e.shape == (1000, 64)
    d = torch.cdist(e, e) + torch.eye(1000) * 1e9
    assert float(d.min()) > 1e-3
    # Reference values: position 0 -> [cos 0 ..., sin 0 ...] = [1]*32 + [0]*32.
    assert torch.equal(e[0], torch.cat([torch.ones(32), torch.zeros(32)]))
    assert float(e[5, 0]) == pytest.approx(torch.cos(torch.tensor(5.0)).item(), abs=1e-6)
    te = TimeEmbedding(32, 64)(torch.tensor([3, 4]))
    assert not torch.allclose(te[0], te[1])
    assert sinusoidal_embedding(t[:3], 7).shape == (3, 7)


def test_null_class() -> None:
    emb = LabelEmbedding(10, 16)
    assert torch.equal(emb(torch.tensor([-1])), emb.table.weight[10:11])
    tok = LabelTokens(10, 16, num_tokens=4)
    assert tok(torch.tensor([-1, 3])).shape == (2, 4, 16)
    torch.manual_seed(0)
    net = UNet(
        tiny(
            image_size=8,
            channel_mults=(1, 2),
            attention_resolutions=(4,),
            num_classes=3,
            conditioning="add+cross",
        )
    )
    with torch.no_grad():  # make the label path matter (zero-init output would hide it)
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([5, 6])
    assert torch.equal(net(x, t, None), net(x, t, torch.tensor([-1, -1])))
    assert not torch.allclose(net(x, t, torch.tensor([0, 0])), net(x, t, torch.tensor([1, 1])))


@pytest.mark.parametrize("conditioning", ["add", "cross", "add+cross"])
def test_every_parameter_gets_a_gradient(conditioning: str) -> None:
    # DDP requires that no parameter is unused (find_unused_parameters stays off).
    net = UNet(
        tiny(
            image_size=8,
            channel_mults=(1, 2),
            attention_resolutions=(4,),
            num_classes=3,
            conditioning=conditioning,
        )
    )
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = net(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, -1]))
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(image_size=30, channel_mults=(1, 2, 2)), "divisible by 2^(levels-1) = 4"),
        (dict(base_channels=6), "groups=4 must divide"),
        (
            dict(attention_resolutions=(5,)),
            "attention_resolutions: no level has feature-map size 5",
        ),
        (dict(conditioning="concat"), "conditioning 'concat' is not one of"),
    ],
)
def test_invalid_configs(kw: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError) as e:
        UNet(tiny(**kw))
    assert needle in str(e.value)


def test_mlps() -> None:
    x, t = torch.randn(5, 2), torch.tensor([0, 1, 2, 3, 99])
    assert StepEmbedMLP(100)(x, t).shape == (5, 2)
    assert SinusoidalMLP()(x, t).shape == (5, 2)
