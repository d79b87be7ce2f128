"""Network contracts: shapes over a grid of configs, layouts and bf16, embeddings, null class,
attention against its formula, gradients to every parameter, config errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ddpmkit.nn.blocks import (
    PLAIN_ATTENTION_MAX_LEN,
    CrossAttention,
    SelfAttention,
    attention,
    plain_attention,
)
from ddpmkit.nn.embeddings import LabelEmbedding, LabelTokens, TimeEmbedding, sinusoidal_embedding
from ddpmkit.nn.mlp import SinusoidalMLP, StepEmbedMLP
from ddpmkit.nn.unet import UNet, UNetConfig, num_parameters

CONDITIONINGS = ["none", "add", "cross", "add+cross"]
MULTS = {8: (1, 2), 28: (1, 2, 2), 32: (1, 2, 2), 64: (1, 2, 2, 2)}


def tiny(**kw: object) -> UNetConfig:
    base: dict[str, object] = dict(
        base_channels=16, groups=4, num_heads=2, num_res_blocks=1, attention_resolutions=()
    )
    base.update(kw)
    return UNetConfig(**base)  # type: ignore[arg-type]


def conditional(conditioning: str, **kw: object) -> UNetConfig:
    """tiny() config for conditioning 'none' (unconditional) or one of the modes (3 classes)."""
    if conditioning == "none":
        return tiny(num_classes=0, **kw)
    return tiny(num_classes=3, conditioning=conditioning, **kw)


def perturbed(net: UNet, seed: int = 0, scale: float = 0.05) -> UNet:
    """Add noise to every parameter: zero-initialised layers would hide every path at init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net


def small_net(conditioning: str, seed: int = 0, **kw: object) -> UNet:
    torch.manual_seed(seed)
    cfg = conditional(conditioning, image_size=8, channel_mults=(1, 2), **kw)
    return perturbed(UNet(cfg), seed)


# --------------------------------------------------------------------------- shapes


def check_values(net: UNet, x: torch.Tensor, conditional_net: bool) -> None:
    """Values, not only shapes, of a perturbed U-Net on a batch of 3 copies of x (1, C, H, W).

    Items 0 and 1 differ only in t, items 0 and 2 only in y (ignored by an unconditional net);
    replacing item 2 leaves items 0 and 1 unchanged (no mixing across the batch); channels_last
    computes the same function as NCHW.
    """
    x = torch.cat([x[:1]] * 3)
    t, y = torch.tensor([10, 900, 10]), torch.tensor([0, 0, 1])
    with torch.no_grad():
        out = net(x, t, y)
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert float(out.abs().max()) > 1e-3  # not the zero output of the initialisation
        assert float((out[0] - out[1]).abs().max()) > 1e-4  # t is used
        if conditional_net:
            assert float((out[0] - out[2]).abs().max()) > 1e-4  # y is used
        else:
            torch.testing.assert_close(out[0], out[2], rtol=1e-5, atol=1e-6)
        x2, t2, y2 = x.clone(), t.clone(), y.clone()
        x2[2], t2[2], y2[2] = torch.randn(x.shape[1:]), 500, -1
        out2 = net(x2, t2, y2)
        torch.testing.assert_close(out2[:2], out[:2], rtol=1e-5, atol=1e-6)
        assert float((out2[2] - out[2]).abs().max()) > 1e-4
        net.to(memory_format=torch.channels_last)
        out_cl = net(x.contiguous(memory_format=torch.channels_last), t, y)
        torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "channels, size, attention_on, conditioning",
    list(itertools.product([1, 3], [8, 28, 32, 64], [True, False], CONDITIONINGS)),
)
def test_output_shape_equals_input_shape(
    channels: int, size: int, attention_on: bool, conditioning: str
) -> None:
    cfg = conditional(
        conditioning,
        in_channels=channels,
        image_size=size,
        channel_mults=MULTS[size],
        attention_resolutions=(size // 2,) if attention_on else (),
    )
    torch.manual_seed(0)
    net = perturbed(UNet(cfg))
    x = torch.randn(1, channels, size, size)
    y = None if conditioning == "none" else torch.tensor([2])
    with torch.no_grad():
        out = net(x, torch.tensor([999]), y)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert float(out.abs().max()) > 1e-3  # every path reaches the output (not the init's 0)


@pytest.mark.parametrize(
    "channels, size, attention_on, conditioning",
    [
        (1 + 2 * (size == 8), size, a, c)
        for size in (8, 28)
        for a in (True, False)
        for c in CONDITIONINGS
    ],
)
def test_output_values_depend_on_t_y_and_only_their_own_item(
    channels: int, size: int, attention_on: bool, conditioning: str
) -> None:
    cfg = conditional(
        conditioning,
        in_channels=channels,
        image_size=size,
        channel_mults=MULTS[size],
        attention_resolutions=(size // 2,) if attention_on else (),
    )
    torch.manual_seed(0)
    net = perturbed(UNet(cfg))
    check_values(net, torch.randn(1, channels, size, size), conditioning != "none")


@pytest.mark.parametrize(
    "hw, mults, attn",
    [((28, 20), (1, 2), (10,)), ((16, 24), (1, 2, 2), (8, 4)), ((12, 32), (1, 2), (12,))],
)
def test_non_square(hw: tuple[int, int], mults: tuple[int, ...], attn: tuple[int, ...]) -> None:
    # attention_resolutions refers to min(H, W) of a level: 28x20 -> levels 20, 10.
    torch.manual_seed(0)
    net = UNet(tiny(in_channels=3, image_size=hw, channel_mults=mults, attention_resolutions=attn))
    check_values(perturbed(net), torch.randn(1, 3, *hw), conditional_net=False)


def test_fresh_network_outputs_zero() -> None:
    # Zero-initialised output conv (and residual branches): the untrained net predicts 0.
    net = UNet(conditional("add+cross", image_size=8, channel_mults=(1, 2)))
    out = net(torch.randn(2, 1, 8, 8), torch.tensor([3, 4]), torch.tensor([0, -1]))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("conditioning", ["none", "add+cross"])
def test_channels_last_and_bf16_autocast(conditioning: str) -> None:
    cfg = conditional(
        conditioning,
        in_channels=3,
        image_size=(16, 24),
        channel_mults=(1, 2),
        attention_resolutions=(16, 8),
    )
    torch.manual_seed(0)
    ref = perturbed(UNet(cfg))
    x = torch.randn(3, 3, 16, 24)
    t = torch.tensor([1, 500, 999])
    y = None if conditioning == "none" else torch.tensor([0, 2, -1])
    with torch.no_grad():
        expected = ref(x, t, y)
    cl = perturbed(UNet(cfg)).to(memory_format=torch.channels_last)
    cl.load_state_dict(ref.state_dict())
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = cl(x_cl, t, y)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)  # same function, any layout
    for model, inp in ((ref, x), (cl, x_cl)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(inp, t, y)
        assert out.shape == x.shape and torch.isfinite(out).all()
        rel = (out.detach().float() - expected).norm() / expected.norm()
        assert float(rel) < 0.05, float(rel)  # bf16 keeps ~3 significant digits per op
        out.float().square().mean().backward()  # the bf16 training path (math attention kernel)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_output_of_a_sample_does_not_depend_on_its_batch() -> None:
    # GroupNorm normalises per sample: seeds-per-sample sampling relies on this.
    net = small_net("add+cross", attention_resolutions=(4,))
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999]), torch.tensor([0, 1, 2, -1])
    with torch.no_grad():
        full = net(x, t, y)
        for i in range(4):
            torch.testing.assert_close(
                net(x[i : i + 1], t[i : i + 1], y[i : i + 1]), full[i : i + 1]
            )


# --------------------------------------------------------------------------- attention


def test_self_attention_matches_the_formula() -> None:
    torch.manual_seed(0)
    c, heads = 8, 2
    attn = SelfAttention(c, heads, groups=4)
    perturbed(attn, scale=0.5)  # type: ignore[arg-type]
    x = torch.randn(2, c, 3, 5)
    with torch.no_grad():
        h = attn.norm(x).flatten(2).transpose(1, 2)  # (B, L, C)
        qkv = h @ attn.qkv.weight[:, :, 0, 0].T + attn.qkv.bias  # (B, L, 3C)
        q, k, v = (u.reshape(2, 15, heads, c // heads).transpose(1, 2) for u in qkv.chunk(3, -1))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
        o = (w @ v).transpose(1, 2).reshape(2, 15, c)  # (B, L, C)
        o = o @ attn.proj.weight[:, :, 0, 0].T + attn.proj.bias
        expected = x + o.transpose(1, 2).reshape(2, c, 3, 5)
        torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        out_cl = attn(x_cl)
        assert out_cl.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out_cl, expected, rtol=1e-5, atol=1e-5)


def test_cross_attention_matches_the_formula() -> None:
    torch.manual_seed(0)
    c, heads, dim, length = 8, 2, 6, 3
    attn = CrossAttention(c, dim, heads, groups=4)
    perturbed(attn, scale=0.5)  # type: ignore[arg-type]
    x, tokens = torch.randn(2, c, 4, 4), torch.randn(2, length, dim)
    with torch.no_grad():
        q = attn.norm(x).flatten(2).transpose(1, 2) @ attn.q.weight[:, :, 0, 0].T + attn.q.bias
        k, v = (tokens @ attn.kv.weight.T + attn.kv.bias).chunk(2, -1)  # (B, L, C) each

        def split(u: torch.Tensor) -> torch.Tensor:
            return u.reshape(2, -1, heads, c // heads).transpose(1, 2)

        w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(c // heads), -1)
        o = (w @ split(v)).transpose(1, 2).reshape(2, 16, c)
        o = o @ attn.proj.weight[:, :, 0, 0].T + attn.proj.bias
        expected = x + o.transpose(1, 2).reshape(2, c, 4, 4)
        torch.testing.assert_close(attn(x, tokens), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [49, 256, 300])
def test_attention_in_bf16_matches_a_float64_reference(length: int) -> None:
    # attention() runs bf16 on a CPU as two matmuls + softmax up to 256 positions and through
    # SDPA beyond; both must be softmax(q k^T / sqrt(d)) v, values and gradients, here computed
    # independently in float64 from the definition (Vaswani et al. 2017, eq. 1).
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, length, 16, generator=g) for _ in range(3))
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    w = torch.exp(ref_in[0] @ ref_in[1].transpose(-1, -2) / 4.0)
    ref = (w / w.sum(-1, keepdim=True)) @ ref_in[2]
    ref.sum().backward()
    low = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    out = attention(*low)
    out.float().sum().backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=3e-2, atol=3e-2)
    for got, want in zip(low, ref_in):
        assert got.grad is not None and want.grad is not None
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=5e-2, atol=5e-2)
    # Which path ran is a speed choice only: the plain one up to PLAIN_ATTENTION_MAX_LEN.
    same = plain_attention(*(t.detach() for t in low))
    if length <= PLAIN_ATTENTION_MAX_LEN:
        assert torch.equal(out.detach(), same)


# --------------------------------------------------------------------------- embeddings


def test_sinusoidal_embedding() -> None:
    t = torch.arange(1000)
    e = sinusoidal_embedding(t, 64)
    assert e.shape == (1000, 64) and e.dtype == torch.float32
    d = torch.cdist(e, e) + torch.eye(1000) * 1e9
    assert float(d.min()) > 1e-3  # every timestep distinct
    # Position 0 -> [cos 0 ... | sin 0 ...]; the first frequency is 1.
    assert torch.equal(e[0], torch.cat([torch.ones(32), torch.zeros(32)]))
    assert float(e[5, 0]) == pytest.approx(math.cos(5.0), abs=1e-6)
    assert float(e[5, 32]) == pytest.approx(math.sin(5.0), abs=1e-6)
    assert float(e[5, 1]) == pytest.approx(math.cos(5.0 * 10000 ** (-1 / 32)), abs=1e-6)
    odd = sinusoidal_embedding(t[:3], 7)
    assert odd.shape == (3, 7) and torch.equal(odd[:, 6], torch.zeros(3))
    torch.testing.assert_close(sinusoidal_embedding(t.float(), 64), e)  # long == float t
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        sinusoidal_embedding(t[None], 64)


def test_time_embedding_distinct_for_distinct_t() -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        te = TimeEmbedding(32, 64)(torch.arange(1000))
    assert te.shape == (1000, 64)
    d = torch.cdist(te, te) + torch.eye(1000) * 1e9
    assert float(d.min()) > 1e-4


def test_null_class_embeddings() -> None:
    emb = LabelEmbedding(10, 16)
    null = emb.table.weight[10]
    out = emb(torch.tensor([-1, -7, 3]))
    assert torch.equal(out[0], null) and torch.equal(out[1], null)
    assert torch.equal(out[2], emb.table.weight[3])
    tok = LabelTokens(10, 16, num_tokens=4)
    out = tok(torch.tensor([-1, 3, -2]))
    assert out.shape == (3, 4, 16)
    expected_null = tok.table.weight[10].view(4, 16) + tok.pos
    assert torch.equal(out[0], expected_null) and torch.equal(out[2], expected_null)
    assert torch.equal(out[1], tok.table.weight[3].view(4, 16) + tok.pos)


@pytest.mark.parametrize("conditioning", ["add", "cross", "add+cross"])
def test_null_label_in_the_network(conditioning: str) -> None:
    net = small_net(conditioning, attention_resolutions=(4,))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 600])
    with torch.no_grad():
        none = net(x, t, None)
        assert torch.equal(none, net(x, t, torch.tensor([-1, -1])))
        assert torch.equal(none, net(x, t, torch.tensor([-3, -1])))  # any negative label
        a, b = net(x, t, torch.tensor([0, 0])), net(x, t, torch.tensor([1, 1]))
    assert not torch.allclose(a, b) and not torch.allclose(a, none)  # the label is used


def test_unconditional_network_ignores_labels() -> None:
    net = small_net("none")
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 6])
    with torch.no_grad():
        assert torch.equal(net(x, t), net(x, t, torch.tensor([0, 1])))


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_every_parameter_gets_a_gradient(conditioning: str) -> None:
    # DDP with find_unused_parameters=False needs every parameter in the graph of every step,
    # also at initialisation, where the zero-initialised layers make most gradients exactly 0.
    cfg = conditional(conditioning, image_size=8, channel_mults=(1, 2), attention_resolutions=(4,))
    labels = None if conditioning == "none" else torch.tensor([0, -1])
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    fresh = UNet(cfg)
    fresh(x, t, labels).square().mean().backward()
    assert [n for n, p in fresh.named_parameters() if p.grad is None] == []
    # Away from the initialisation every parameter actually influences the output.
    net = small_net(conditioning, attention_resolutions=(4,))
    net(x, t, labels).square().mean().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()] == []


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "kw, needles",
    [
        (dict(image_size=30, channel_mults=(1, 2, 2)), ["image_size 30x30", "2^(levels-1) = 4"]),
        (dict(image_size=(28, 18), channel_mults=(1, 2, 2)), ["image_size 28x18"]),
        (dict(image_size=(28, 28, 1)), ["image_size must be an int or a pair"]),
        (dict(base_channels=6), ["groups=4 must divide", "[6] are not divisible"]),
        (dict(base_channels=16, groups=3), ["groups=3 must divide"]),
        (dict(num_heads=3), ["num_heads=3 must divide"]),
        (dict(attention_resolutions=(5,)), ["attention_resolutions", "size 5", "[28, 14, 7]"]),
        (dict(conditioning="concat"), ["conditioning 'concat' is not one of", "add+cross"]),
        (dict(in_channels=0), ["in_channels must be >= 1"]),
        (dict(channel_mults=()), ["channel_mults must be non-empty"]),
        (dict(num_res_blocks=0), ["num_res_blocks must be >= 1"]),
        (dict(num_classes=-1), ["num_classes must be >= 0"]),
        (dict(num_cond_tokens=0), ["num_cond_tokens must be >= 1"]),
        (dict(dropout=1.0), ["dropout must be in [0, 1)"]),
    ],
)
def test_invalid_configs(kw: dict[str, object], needles: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        UNet(tiny(**kw))
    msg = str(e.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg


def test_config_lists_become_tuples() -> None:
    a = UNetConfig(channel_mults=[1, 2], attention_resolutions=[14], image_size=[28, 20])  # type: ignore[arg-type]
    b = UNetConfig(channel_mults=(1, 2), attention_resolutions=(14,), image_size=(28, 20))
    assert a == b and hash(a) == hash(b) and a.hw == (28, 20) and a.level_sizes() == [20, 10]


def test_num_parameters() -> None:
    net = UNet(tiny(image_size=8, channel_mults=(1, 2), attention_resolutions=()))
    n = num_parameters(net)
    assert n == sum(p.numel() for p in net.parameters()) > 0
    net.conv_in.weight.requires_grad_(False)
    assert num_parameters(net, trainable_only=True) == n - net.conv_in.weight.numel()


def test_mlps() -> None:
    x, t = torch.randn(5, 2), torch.tensor([0, 1, 2, 3, 99])
    assert StepEmbedMLP(100)(x, t).shape == (5, 2)
    assert SinusoidalMLP()(x, t).shape == (5, 2)


def _space_to_depth(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C p^2, H/p, W/p), channel c * p^2 + i * p + j holding pixel
    (p h + i, p w + j): written out with reshape/permute, independently of pixel_unshuffle."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * p * p, h // p, w // p)


def _depth_to_space(x: torch.Tensor, p: int) -> torch.Tensor:
    b, cpp, h, w = x.shape
    c = cpp // (p * p)
    x = x.reshape(b, c, p, p, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c, h * p, w * p)


def test_patch_size_is_a_unet_on_the_space_to_depth_image() -> None:
    """UNet(patch_size=2) on (1, 28, 28) = a plain U-Net on (4, 14, 14) of the same weights,
    between an explicit space-to-depth and its inverse."""
    kw = dict(base_channels=16, channel_mults=(1, 2), attention_resolutions=(7,), groups=4)
    torch.manual_seed(0)
    p2 = UNet(UNetConfig(in_channels=1, image_size=28, patch_size=2, num_classes=3, **kw))
    inner = UNet(UNetConfig(in_channels=4, image_size=14, num_classes=3, **kw))
    assert p2.cfg.level_sizes() == [14, 7]
    sd = p2.state_dict()
    for k, v in sd.items():  # nonzero output layer, else both outputs are 0
        sd[k] = v + 0.01 * torch.randn_like(v)
    p2.load_state_dict(sd)
    inner.load_state_dict(sd)
    x = torch.randn(3, 1, 28, 28)
    t = torch.tensor([0, 500, 999])
    y = torch.tensor([0, 2, -1])
    with torch.no_grad():
        got = p2(x, t, y)
        want = _depth_to_space(inner(_space_to_depth(x, 2), t, y), 2)
    assert got.shape == x.shape
    assert got.abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_patch_size_must_divide_the_image() -> None:
    cfg = UNetConfig(image_size=28, patch_size=2, channel_mults=(1, 2, 2))  # 28 / (2 * 4)
    with pytest.raises(ValueError, match="patch_size"):
        cfg.validate()
    with pytest.raises(ValueError, match="patch_size must be >= 1"):
        UNetConfig(patch_size=0).validate()
