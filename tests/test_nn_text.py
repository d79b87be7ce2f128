"""Text conditioning in the U-Net: padding tokens change nothing, the null condition (a fully
masked row, the empty prompt, text=None) is finite and learned, text reaches the output through
both paths, every parameter gets a gradient, config and input errors."""

from __future__ import annotations

import pytest
import torch

from ddpmkit.nn.blocks import CrossAttention
from ddpmkit.nn.unet import UNet, UNetConfig

D = 12  # text width


def text_net(mode: str = "add+cross", seed: int = 0, **kw: object) -> UNet:
    base: dict[str, object] = dict(
        image_size=(8, 16), channel_mults=(1, 2), base_channels=16, groups=4, num_heads=2,
        num_res_blocks=1, attention_resolutions=(4,), text_dim=D, text_conditioning=mode,
    )  # fmt: skip
    base.update(kw)
    torch.manual_seed(seed)
    net = UNet(UNetConfig(**base))  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed)  # zero-initialised layers would hide every path
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return net.eval()


def batch(b: int = 3, length: int = 5, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 8, 16, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    tokens = torch.randn(b, length, D, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, 3:] = False  # row 1 is shorter: padding already there
    pooled = torch.randn(b, D, generator=g)
    return x, t, tokens, mask, pooled


@pytest.mark.parametrize("mode", ["cross", "add+cross"])
@pytest.mark.parametrize("bf16", [False, True])
def test_padding_tokens_change_nothing(mode: str, bf16: bool) -> None:
    net = text_net(mode)
    x, t, tokens, mask, pooled = batch()
    g = torch.Generator().manual_seed(7)
    pad = torch.randn(3, 4, D, generator=g) * 10  # random values, mask False
    tokens2 = torch.cat([tokens, pad], 1)
    mask2 = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], 1)
    # the padding already inside row 1 gets random values too
    tokens[1, 3:] = torch.randn(2, D, generator=g) * 10
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        a = net(x, t, text=(tokens, mask, pooled)).float()
        b = net(x, t, text=(tokens2, mask2, pooled)).float()
        c = net(x, t, text=(tokens * mask[..., None], mask, pooled)).float()  # zero padding
    tol = 1e-2 if bf16 else 1e-6
    torch.testing.assert_close(a, b, rtol=0, atol=tol)
    torch.testing.assert_close(a, c, rtol=0, atol=tol)
    assert float(a.abs().max()) > 1e-3


def test_masked_tokens_are_ignored_by_the_attention_exactly() -> None:
    # fp32, one block: the attention weights of masked keys are exp(-inf) = 0
    torch.manual_seed(0)
    block = CrossAttention(8, D, 2, 4)
    torch.nn.init.normal_(block.proj.weight)
    x = torch.randn(2, 8, 4, 4)
    tok = torch.randn(2, 3, D)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    other = tok.clone()
    other[~mask] = 1e3
    with torch.no_grad():
        torch.testing.assert_close(block(x, tok, mask), block(x, other, mask), rtol=0, atol=1e-6)
        # and equal to attending to the real tokens only
        torch.testing.assert_close(block(x[1:], tok[1:, :1]), block(x[1:], tok[1:], mask[1:]))


@pytest.mark.parametrize("mode", ["add", "cross", "add+cross"])
def test_the_null_condition_is_finite_and_learned(mode: str) -> None:
    net = text_net(mode)
    x, t, tokens, mask, pooled = batch()
    mask[2] = False  # row 2: the empty prompt, with garbage in its tokens and pooled vector
    with torch.no_grad():
        out = net(x, t, text=(tokens, mask, pooled))
        assert torch.isfinite(out).all()
        none = net(x, t)  # text=None: the null condition for every row
        empty = net(
            x,
            t,
            text=(torch.zeros(3, 1, D), torch.zeros(3, 1, dtype=torch.bool), torch.zeros(3, D)),
        )
    torch.testing.assert_close(out[2], none[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(none, empty, rtol=0, atol=1e-6)
    assert float((out[0] - none[0]).abs().max()) > 1e-4  # a real prompt differs from the null
    # the null is the network's own parameter: changing it changes the null output only
    with torch.no_grad():
        p = net.text_null_token if mode != "add" else net.text_null_pooled
        assert p is not None
        p.add_(1.0)
        out2 = net(x, t, text=(tokens, mask, pooled))
    assert float((out2[2] - out[2]).abs().max()) > 1e-4
    torch.testing.assert_close(out2[:2], out[:2], rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["add", "cross", "add+cross"])
def test_text_reaches_the_output_and_rows_stay_independent(mode: str) -> None:
    net = text_net(mode)
    x, t, tokens, mask, pooled = batch()
    with torch.no_grad():
        out = net(x, t, text=(tokens, mask, pooled))
        tok2, pool2 = tokens.clone(), pooled.clone()
        if "cross" in mode:
            tok2[0, 0] = torch.randn(D) * 3  # a different first token only
        if mode == "add":
            pool2[0] += 1.0
        out2 = net(x, t, text=(tok2, mask, pool2))
    assert float((out2[0] - out[0]).abs().max()) > 1e-4
    torch.testing.assert_close(out2[1:], out[1:], rtol=0, atol=1e-6)


def test_add_only_ignores_tokens_and_cross_only_ignores_pooled() -> None:
    x, t, tokens, mask, pooled = batch()
    with torch.no_grad():
        add = text_net("add")
        a = add(x, t, text=(tokens, mask, pooled))
        torch.testing.assert_close(a, add(x, t, text=(tokens + 1, mask, pooled)), rtol=0, atol=0)
        cross = text_net("cross")
        c = cross(x, t, text=(tokens, mask, pooled))
        torch.testing.assert_close(c, cross(x, t, text=(tokens, mask, pooled + 1)), rtol=0, atol=0)


def test_every_parameter_gets_a_gradient() -> None:
    net = text_net("add+cross").train()
    x, t, tokens, mask, pooled = batch()
    mask[2] = False  # one null row, as with prompt dropout
    net(x, t, text=(tokens, mask, pooled)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_channels_last_and_checkpointing_compute_the_same_function() -> None:
    net = text_net("add+cross")
    x, t, tokens, mask, pooled = batch()
    text = (tokens, mask, pooled)
    with torch.no_grad():
        ref = net(x, t, text=text)
        net.to(memory_format=torch.channels_last)
        cl = net(x.contiguous(memory_format=torch.channels_last), t, text=text)
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
    net = text_net("add+cross").train()
    net.checkpointing = True
    y1 = net(x, t, text=text)
    net.checkpointing = False
    y2 = net(x, t, text=text)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-6)


def test_cross_attention_resolutions_place_the_blocks() -> None:
    def crosses(net: UNet) -> int:
        return sum(isinstance(m, CrossAttention) for m in net.modules())

    # levels of size 8 and 4 (min(H, W)), one ResBlock down, two up, + the middle
    assert crosses(text_net(attention_resolutions=(4,))) == 3 + 1
    assert (
        crosses(text_net(attention_resolutions=(4,), cross_attention_resolutions=(8, 4))) == 6 + 1
    )
    assert crosses(text_net(cross_attention_resolutions=())) == 1
    assert crosses(text_net("add")) == 0
    with pytest.raises(ValueError, match="cross_attention_resolutions: no level has"):
        text_net(cross_attention_resolutions=(3,))
    with pytest.raises(ValueError, match="text_conditioning 'concat' is not one of"):
        text_net("concat")


def test_input_errors() -> None:
    x, t, tokens, mask, pooled = batch()
    plain = UNet(UNetConfig(image_size=(8, 16), channel_mults=(1, 2), base_channels=16, groups=4,
                            num_heads=2, num_res_blocks=1, attention_resolutions=()))  # fmt: skip
    with pytest.raises(ValueError, match="without text conditioning"):
        plain(x, t, text=(tokens, mask, pooled))
    net = text_net()
    with pytest.raises(ValueError, match=r"text tokens must be \(3, L, 12\)"):
        net(x, t, text=(tokens[..., :5], mask, pooled))
    with pytest.raises(ValueError, match="text mask must be"):
        net(x, t, text=(tokens, mask[:, :2], pooled))


def test_labels_and_text_together() -> None:
    net = text_net("add+cross", num_classes=3, conditioning="add+cross")
    x, t, tokens, mask, pooled = batch()
    y = torch.tensor([0, 1, -1])
    mask[2] = False
    with torch.no_grad():
        out = net(x, t, torch.tensor([0, 1, -1]), text=(tokens, mask, pooled))
        other = net(x, t, torch.tensor([2, 1, -1]), text=(tokens, mask, pooled))
    assert torch.isfinite(out).all()
    assert float((out[0] - other[0]).abs().max()) > 1e-4
    torch.testing.assert_close(out[1:], other[1:], rtol=0, atol=1e-6)
    assert y.shape == (3,)
