"""Classifier-free guidance in a limited noise interval (Kynkaanniemi et al. 2024)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from ddpmkit.sampling import SAMPLERS
from ddpmkit.sampling_core import NULL_LABEL, Guidance
from ddpmkit.schedule import NoiseSchedule


def _model(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
    """A conditional eps-predictor whose two branches differ (null label -> no offset)."""
    off = torch.zeros(x.shape[0]) if y is None else torch.where(y == NULL_LABEL, 0.0, 0.3 + 0.1 * y)
    return 0.2 * x + off.view(-1, 1) * (t.view(-1, 1).float() / 1000.0)


def test_scale_is_w_exactly_where_sigma_is_in_the_interval() -> None:
    sched = NoiseSchedule.from_name("linear", 1000)
    g = Guidance(3.0, 0.5, 2.0)
    for t in range(0, 1000, 37):
        ab = float(sched.alphas_bar[t])
        sigma = math.sqrt((1 - ab) / ab)  # EDM noise level, computed here from abar directly
        assert g.at(sched, t) == (3.0 if 0.5 < sigma <= 2.0 else 1.0), t


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp", "unipc"])
def test_interval_edges_give_plain_guidance_and_no_guidance(sampler: str) -> None:
    sched = NoiseSchedule.from_name("linear", 1000)
    x_T = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % 3
    run = SAMPLERS[sampler]

    def draw(w: float | Guidance) -> Tensor:
        return run(_model, sched, x_T, num_steps=8, y=y, guidance_scale=w)

    everywhere, nowhere = Guidance(2.5), Guidance(2.5, 1e6, 1e7)
    assert torch.equal(draw(everywhere), draw(2.5))
    assert torch.equal(draw(nowhere), draw(1.0))
    partial = draw(Guidance(2.5, 0.3, 3.0))
    assert not torch.equal(partial, draw(2.5)) and not torch.equal(partial, draw(1.0))


def test_bad_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="sigma_lo < sigma_hi"):
        Guidance(2.0, 3.0, 1.0)
