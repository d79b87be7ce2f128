"""The text layout map (model.unet.text_layout, ddpmkit.nn.layout): a per-position readout of
the prompt's tokens added to every U-Net level."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ddpmkit.nn.blocks import position_grid
from ddpmkit.nn.layout import LayoutInjection, TextLayout
from ddpmkit.nn.unet import UNet, UNetConfig, num_parameters
from test_text_binding import _perturbed


def _reference_layout(lay: TextLayout, tokens: torch.Tensor, mask: torch.Tensor,
                      h: int, w: int) -> torch.Tensor:  # fmt: skip
    """The module docstring's formula, one position, head and row at a time in float64."""
    dim, heads = lay.dim, lay.heads
    d = dim // heads
    lay = lay.double()
    grid = position_grid(dim, h, w)[0].double()  # (dim, h, w)
    wk, wv = lay.kv.weight[:dim], lay.kv.weight[dim:]
    bk, bv = lay.kv.bias[:dim], lay.kv.bias[dim:]
    out = torch.zeros(tokens.shape[0], lay.out_dim, h, w, dtype=torch.float64)
    for b in range(tokens.shape[0]):
        real = [i for i in range(tokens.shape[1]) if mask[b, i]]
        tok = tokens[b].double()
        for r in range(h):
            for c in range(w):
                q = lay.query(grid[:, r, c])
                heads_out = []
                for n in range(heads):
                    sl = slice(n * d, (n + 1) * d)
                    scores = [float(q[sl] @ (wk[sl] @ tok[i] + bk[sl])) / math.sqrt(d)
                              for i in real]  # fmt: skip
                    top = max(scores)
                    e = [math.exp(s - top) for s in scores]
                    heads_out.append(sum(
                        (ei / sum(e)) * (wv[sl] @ tok[i] + bv[sl]) for ei, i in zip(e, real)
                    ))  # fmt: skip
                out[b, :, r, c] = lay.out(torch.cat(heads_out))
    return out


def test_layout_map_is_the_per_position_attention_readout_of_its_docstring() -> None:
    torch.manual_seed(0)
    lay = TextLayout(8, 2).eval()
    tokens = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        got = lay(tokens, mask, (3, 5))
        want = _reference_layout(lay, tokens, mask, 3, 5)
    assert got.shape == (2, 8, 3, 5)
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_a_narrower_map_is_the_same_readout_with_a_narrower_output_projection() -> None:
    torch.manual_seed(2)
    lay = TextLayout(8, 2, out_dim=3).eval()
    tokens = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        got = lay(tokens, mask, (2, 4))
        want = _reference_layout(lay, tokens, mask, 2, 4)
    assert got.shape == (2, 3, 2, 4)
    assert torch.allclose(got.double(), want, atol=1e-5)
    with pytest.raises(ValueError, match="width must be >= 0"):
        TextLayout(8, 2, out_dim=-1)


def test_cell_means_are_the_maps_average_over_each_cell_row_major() -> None:
    torch.manual_seed(3)
    lay = TextLayout(8, 2, out_dim=6).eval()
    tokens = torch.randn(3, 4, 8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        got = lay.cell_means(tokens, mask, (4, 6), (2, 3))
        want_map = _reference_layout(lay, tokens, mask, 4, 6)  # (B, 6, 4, 6); lay -> float64
    assert got.shape == (3, 6, 6)
    for r in range(2):  # cell (r, c) covers rows 2r..2r+1 and columns 2c..2c+1
        for c in range(3):
            cell = want_map[:, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].mean(dim=(2, 3))
            assert torch.allclose(got[:, r * 3 + c].double(), cell, atol=1e-5)
    with pytest.raises(ValueError, match="does not split into a 3x2 grid"):
        lay.cell_means(tokens.double(), mask, (4, 6), (3, 2))


def test_layout_map_ignores_padding_and_differs_by_position() -> None:
    torch.manual_seed(1)
    lay = TextLayout(8, 2).eval()
    tokens, mask = torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        a = lay(tokens, mask, (2, 6))
        padded = torch.cat([tokens, 100 * torch.randn(1, 4, 8)], dim=1)
        b = lay(padded, torch.cat([mask, torch.zeros(1, 4, dtype=torch.bool)], 1), (2, 6))
    assert torch.allclose(a, b, atol=1e-6)
    # the queries come from the position alone: the left and right columns read differently
    assert (a[..., 0] - a[..., -1]).abs().max() > 1e-3


def test_injection_starts_as_the_identity_and_pools_the_map_to_the_level() -> None:
    inj = LayoutInjection(4, 6)
    x, m = torch.randn(2, 6, 3, 5), torch.randn(2, 4, 6, 10)
    assert torch.equal(inj(x, m), x)  # zero-initialised projection
    with torch.no_grad():
        inj.proj.weight.copy_(torch.randn(6, 4, 1, 1))
    pooled = m.reshape(2, 4, 3, 2, 5, 2).mean(dim=(3, 5))  # 2x2 means, written out
    want = x + torch.einsum("oc,bchw->bohw", inj.proj.weight[:, :, 0, 0], pooled)
    assert torch.allclose(inj(x, m), want, atol=1e-5)


def _layout_unet() -> UNet:
    cfg = UNetConfig(
        image_size=(8, 16), base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(4,), groups=4, num_heads=2, text_dim=12, text_layout=True,
    )  # fmt: skip
    return UNet(cfg).eval()


def test_unet_layout_width_sets_the_map_and_every_injection() -> None:
    base = UNetConfig(
        image_size=(8, 16), base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(4,), groups=4, num_heads=2, text_dim=12, text_layout=True,
    )  # fmt: skip
    wide, narrow = UNet(base), UNet(dataclasses.replace(base, text_layout_dim=4))
    assert wide.text_layout is not None and wide.text_layout.out_dim == 32  # 4 x base
    assert narrow.text_layout is not None and narrow.text_layout.out_dim == 4
    injections = [m for m in narrow.modules() if isinstance(m, LayoutInjection)]
    assert injections and all(m.proj.in_channels == 4 for m in injections)
    assert num_parameters(narrow) < num_parameters(wide)
    x, t = torch.randn(2, 1, 8, 16), torch.tensor([3, 400])
    tok, mask = torch.randn(2, 3, 12), torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        assert narrow(x, t, text=(tok, mask, torch.randn(2, 12))).shape == x.shape
    with pytest.raises(ValueError, match="text_layout_dim must be >= 0"):
        UNet(dataclasses.replace(base, text_layout_dim=-2))


def test_unet_with_layout_ignores_padding_and_the_null_prompt_and_uses_every_parameter() -> None:
    net = _perturbed(_layout_unet())
    x, t = torch.randn(2, 1, 8, 16), torch.tensor([5, 700])
    tok, pooled = torch.randn(2, 4, 12), torch.randn(2, 12)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        a = net(x, t, text=(tok, mask, pooled))
        b = net(
            x, t,
            text=(torch.cat([tok, torch.randn(2, 5, 12)], 1),
                  torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], 1), pooled),
        )  # fmt: skip
        null = net(x, t, text=None)
        other = net(x, t, text=(torch.randn(2, 4, 12), mask, pooled))
    assert torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a[1], null[1], atol=1e-5)  # an all-masked row is the null prompt
    assert (a[0] - other[0]).abs().max() > 1e-3  # the tokens do reach the output
    net.train()
    net(x, t, text=(tok, mask, pooled)).square().mean().backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert not unused  # DDP needs every parameter in every step
    layout_names = [n for n, _ in net.named_parameters() if "layout" in n]
    assert any(n.startswith("text_layout.") for n in layout_names)
    assert any(n.startswith("mid_layout.") for n in layout_names)


def test_layout_under_checkpointing_is_the_same_function() -> None:
    net = _perturbed(_layout_unet()).train()
    x, t = torch.randn(2, 1, 8, 16), torch.tensor([5, 700])
    text = (torch.randn(2, 4, 12), torch.ones(2, 4, dtype=torch.bool), torch.randn(2, 12))
    plain = net(x, t, text=text)
    net.checkpointing = True
    assert torch.allclose(net(x, t, text=text), plain, atol=1e-6)


def test_layout_without_cross_tokens_is_a_one_line_error() -> None:
    cfg = UNetConfig(image_size=(8, 16), base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                     attention_resolutions=(4,), groups=4, num_heads=2, text_dim=12,
                     text_layout=True, text_conditioning="add")  # fmt: skip
    with pytest.raises(ValueError, match="text_layout reads the cross-attention tokens") as e:
        cfg.validate()
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- region alignment


def test_cells_are_the_grid_blocks_row_major() -> None:
    from ddpmkit.training.text_align import cells

    m = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    c = cells(m, (2, 3))
    assert c.shape == (2, 6, 3, 2, 2)
    for r in range(2):
        for k in range(3):
            assert torch.equal(c[:, r * 3 + k], m[:, :, 2 * r : 2 * r + 2, 2 * k : 2 * k + 2])
    with pytest.raises(ValueError, match="does not split"):
        cells(m, (3, 3))


def test_region_wins_needs_every_cell_to_beat_the_mirrors_same_cell() -> None:
    from ddpmkit.training.text_align import region_wins

    e = torch.eye(3)
    text = torch.stack([e[[0, 1]], e[[0, 1]]])  # (2 rows, 2 cells, 3)
    image = torch.stack([e[[0, 1]], e[[0, 2]]])  # row 1's right cell is wrong
    mirror = torch.stack([e[[1, 0]], e[[2, 0]]])
    assert region_wins(text, image, mirror) == 0.5
    assert region_wins(text, image, image) == 0.0  # a tie is not a win


def test_region_alignment_puts_the_named_side_into_the_layout_map() -> None:
    # Captions "... on the left" / "... on the right" for 8x16 images with a square on that
    # half. Each cell of the layout map must score its own cell above the mirror's same cell:
    # a map that ignored the word (the same for both captions) would lose on one of the two
    # cells in every row, so all rows right means the map reads the side from the words.
    from ddpmkit.text import build_text_encoder, encode_all, vocabulary_of
    from ddpmkit.text.conditioned import TextConditioned
    from ddpmkit.training.text_align import align_text_side, text_side_parameters

    captions = ["a bright square on the left", "a bright square on the right"]
    torch.manual_seed(0)
    net = UNet(UNetConfig(
        image_size=(8, 16), base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(4,), groups=4, num_heads=2, text_dim=16, text_layout=True,
        text_refiner_layers=1,
    ))  # fmt: skip
    enc = build_text_encoder("tiny", vocabulary=vocabulary_of(captions), dim=16, log=print)
    model = TextConditioned(net, encode_all(enc, captions))
    g = torch.Generator().manual_seed(0)
    ids = torch.arange(48) % 2
    images = torch.randint(0, 30, (48, 1, 8, 16), generator=g, dtype=torch.uint8)
    for i, k in enumerate(ids.tolist()):
        images[i, 0, 2:6, 8 * k + 2 : 8 * k + 6] = 255
    before = [p.detach().clone() for p in net.text_layout.parameters()]  # type: ignore[union-attr]
    stats, aligner = align_text_side(model, images, ids, steps=150, batch_size=16, log=None)
    assert "region_accuracy" in stats and "mirror_accuracy" not in stats  # no attention pool
    assert aligner.region_accuracy(ids, images) >= 0.95
    after = list(net.text_layout.parameters())  # type: ignore[union-attr]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # the map was trained
    assert stats["frozen"] and not any(p.requires_grad for p in text_side_parameters(net))
