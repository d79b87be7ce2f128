"""CoordConv input channels of the U-Net (model.unet.coord_channels)."""

from __future__ import annotations

from pathlib import Path

import torch

import ddpmkit
from ddpmkit.cli import main
from ddpmkit.nn.unet import UNet, UNetConfig, _coords


def test_coordinates_are_each_pixels_row_and_column_in_minus_one_one() -> None:
    c = _coords(torch.zeros(3, 5, 4, 7))
    assert c.shape == (3, 2, 4, 7)
    for i in range(4):
        for j in range(7):
            assert torch.allclose(c[:, 0, i, j], torch.tensor(2 * i / 3 - 1), atol=1e-6)
            assert torch.allclose(c[:, 1, i, j], torch.tensor(2 * j / 6 - 1), atol=1e-6)


def _net(coords: bool) -> UNet:
    torch.manual_seed(0)
    cfg = UNetConfig(
        in_channels=1, image_size=(8, 16), base_channels=8, channel_mults=(1, 2),
        num_res_blocks=1, attention_resolutions=(4,), groups=4, patch_size=2,
        coord_channels=coords,
    )  # fmt: skip
    return UNet(cfg).eval()


def test_only_with_coordinates_does_a_constant_image_give_a_position_dependent_response() -> None:
    # Away from the zero-padded border, a 3x3 conv maps a constant input to a constant output;
    # the coordinate channels are the one input that varies across the image, so the first
    # conv's interior output varies with position exactly when they are on.
    x = torch.full((1, 1, 8, 16), 0.3)
    for coords in (False, True):
        net, seen = _net(coords), []
        net.conv_in.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.detach()))
        with torch.no_grad():
            assert net(x, torch.tensor([10])).shape == x.shape
        interior = seen[0][0, :, 1:-1, 1:-1]
        spread = (interior - interior[:, :1, :1]).abs().max().item()
        assert (spread > 1e-4) == coords, (coords, spread)


def test_a_run_with_coordinates_trains_saves_and_loads(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["train", "fashion_mnist", "--out", str(out), "--steps", "3", "--no-progress"]
    sets = [
        'data.name="digits"', "model.unet.base_channels=16", "model.unet.patch_size=1",
        "model.unet.channel_mults=[1, 2]", "model.unet.attention_resolutions=[4]",
        "model.unet.groups=4", "model.unet.coord_channels=true", "diffusion.num_steps=50",
        "train.batch_size=8", "train.preview_every_min=0", "sample.steps=3",
    ]  # fmt: skip
    assert main([*argv, *[a for s in sets for a in ("--set", s)]]) == 0
    model = ddpmkit.load(out)
    assert model.network.conv_in.in_channels == 1 + 2  # type: ignore[union-attr]
    assert model.sample(2, seed=0).shape == (2, 8, 8, 1)
