"""Where a prompt's words go: query positions in cross-attention and the text token refiner
(model.unet.cross_attention_positions, model.unet.text_refiner_layers)."""

from __future__ import annotations

import pytest
import torch

from ddpmkit.nn.blocks import CrossAttention, TokenRefiner, position_grid
from ddpmkit.nn.embeddings import sinusoidal_embedding
from ddpmkit.nn.unet import UNet, UNetConfig


def test_position_grid_codes_rows_in_its_first_half_and_columns_in_its_second() -> None:
    g = position_grid(8, 3, 5)[0]  # (8, 3, 5)
    rows, cols = sinusoidal_embedding(torch.arange(3), 4), sinusoidal_embedding(torch.arange(5), 4)
    for i in range(3):
        for j in range(5):
            assert torch.allclose(g[:4, i, j], rows[i]) and torch.allclose(g[4:, i, j], cols[j])
    # every pixel has its own code
    flat = g.reshape(8, -1).T
    assert torch.cdist(flat, flat).add(torch.eye(15) * 10).min() > 0.1


def _perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised layers made non-zero, so the test sees the whole function."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return module


def test_only_with_positions_does_cross_attention_answer_a_constant_map_by_position() -> None:
    # A constant feature map gives every pixel the same query, so without positions every
    # pixel gets the same attention output; with them the output depends on (row, column).
    x = torch.full((2, 8, 4, 6), 0.5) + torch.randn(2, 8, 1, 1)
    tokens = torch.randn(2, 5, 16)
    for positions in (False, True):
        torch.manual_seed(0)
        att = _perturbed(CrossAttention(8, 16, 2, 4, positions=positions))
        out = att(x, tokens)
        spread = (out - out[:, :, :1, :1]).abs().amax().item()
        assert (spread > 1e-3) == positions, (positions, spread)


def test_the_refiner_starts_as_the_identity_plus_token_positions() -> None:
    ref = TokenRefiner(16, 4, layers=2)
    t, mask = torch.randn(3, 6, 16), torch.ones(3, 6, dtype=torch.bool)
    assert torch.allclose(
        ref(t, mask), t + sinusoidal_embedding(torch.arange(6), 16)[None], atol=1e-6
    )


def test_refiner_padding_changes_no_real_token_and_a_null_row_stays_finite() -> None:
    torch.manual_seed(1)
    ref = _perturbed(TokenRefiner(16, 4, layers=2))
    t = torch.randn(2, 4, 16)
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    out = ref(t, mask)
    padded = ref(
        torch.cat([t, torch.randn(2, 3, 16)], 1),
        torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], 1),
    )
    assert torch.allclose(out[0, :3], padded[0, :3], atol=1e-5)
    assert torch.isfinite(out).all() and torch.isfinite(padded).all()
    # the refiner does mix tokens: changing a real token changes the others
    t2 = t.clone()
    t2[0, 2] += torch.randn(16)  # not a constant shift: LayerNorm would remove that
    assert (ref(t2, mask)[0, :2] - out[0, :2]).abs().max() > 1e-3


def test_word_order_reaches_the_refined_tokens() -> None:
    # the same token set in another order is another input once positions are added
    torch.manual_seed(2)
    ref = _perturbed(TokenRefiner(16, 4, layers=1))
    t, mask = torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.bool)
    swapped = t[:, [2, 1, 0]]
    out, out_s = ref(t, mask), ref(swapped, mask)
    assert (out[0, 0] - out_s[0, 2]).abs().max() > 1e-2  # the same word, another place


def _text_unet(**kw: object) -> UNet:
    torch.manual_seed(0)
    cfg = UNetConfig(
        image_size=(8, 16), base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(4,), groups=4, num_heads=2, text_dim=12, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return UNet(cfg).eval()


def test_unet_with_refiner_and_positions_ignores_padding_and_handles_the_null_prompt() -> None:
    net = _perturbed(_text_unet(cross_attention_positions=True, text_refiner_layers=2))
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
    assert torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a[1], null[1], atol=1e-5)  # an all-masked row is the null prompt


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"text_refiner_layers": -1}, "text_refiner_layers must be >= 0"),
        ({"text_refiner_layers": 1, "text_conditioning": "add"}, "needs 'cross'"),
        ({"cross_attention_positions": True, "base_channels": 6, "groups": 2, "num_heads": 1},
         "divisible by 4"),
    ],
)  # fmt: skip
def test_bad_binding_settings_are_one_line_errors(kw: dict, needle: str) -> None:
    cfg = dict(image_size=(8, 16), base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
               attention_resolutions=(4,), groups=4, num_heads=2, text_dim=12)  # fmt: skip
    cfg.update(kw)
    with pytest.raises(ValueError, match=needle) as e:
        UNetConfig(**cfg).validate()  # type: ignore[arg-type]
    assert "\n" not in str(e.value)
