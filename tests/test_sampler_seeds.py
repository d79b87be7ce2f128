"""Per-sample seeds: with ``seeds=[...]`` sample i depends only on its own seed (and x_T, y),
never on the batch it is drawn in: the same in a batch of 1, in a batch of 5, at another
position. The README's "sample i uses seed + i, whatever --num is" rests on this.

Every sampler of ``ddpmkit.sampling.SAMPLERS`` and every kind of eta (0: deterministic given
x_T; 0.5; 1), plain and with classifier-free guidance (whose batched [cond; uncond] call
doubles the batch). The network is a small nonlinear function of (x, t, y) that treats every
batch item on its own, so any dependence on the batch comes from the sampler's noise.
Tolerance 1e-6: batch size may change a kernel's vectorisation (last-ulp differences); a
wrongly seeded draw changes a sample by O(0.1).
"""

from __future__ import annotations

import pytest
import torch

from ddpmkit.sampling import SAMPLERS, initial_noise
from ddpmkit.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule.from_name("linear", 100)
D, STEPS = 4, 8
SEED = 1234
SEEDS = [SEED + i for i in range(5)]  # what `ddpm sample --seed 1234 --num 5` uses
Y = torch.tensor([0, 2, -1, 1, 2])
TOL = dict(rtol=1e-6, atol=1e-6)


def net(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """eps(x, t, y): per item, nonlinear in x, depends on t and (when given) on y."""
    s = (t.double() / 100)[:, None]
    h = x.double() * (1 + s) + 0.3 * x.double().roll(1, dims=1) + torch.sin(7 * s)
    if y is not None:
        h = h + 0.4 * torch.where(y < 0, -1.0, y.double())[:, None]
    return (0.5 * x.double() + 0.3 * torch.tanh(h)).float()


CONFIGS = (
    [("ddpm", {})]
    + [(name, {"eta": eta}) for name in ("ddim", "dpmpp", "dpmpp3m") for eta in (0.0, 0.5, 1.0)]
    + [("unipc", {}), ("heun", {})]  # deterministic given x_T
)


def _draw(
    name: str, kw: dict[str, float], seeds: list[int], y: torch.Tensor | None
) -> torch.Tensor:
    x_T = initial_noise((len(seeds), D), seeds=seeds)
    cond: dict[str, object] = {} if y is None else {"y": y, "guidance_scale": 3.0}
    return SAMPLERS[name](net, SCHEDULE, x_T, num_steps=STEPS, seeds=seeds, **cond, **kw)


def test_every_sampler_is_covered() -> None:
    assert {name for name, _ in CONFIGS} == set(SAMPLERS)


@pytest.mark.parametrize("guided", [False, True], ids=["plain", "guided"])
@pytest.mark.parametrize(
    "name, kw", CONFIGS, ids=[f"{n}-eta{kw.get('eta', 1)}" for n, kw in CONFIGS]
)
def test_sample_i_depends_only_on_seed_i(name: str, kw: dict[str, float], guided: bool) -> None:
    y = Y if guided else None
    full = _draw(name, kw, SEEDS, y)
    assert full.shape == (5, D) and torch.isfinite(full).all()
    for i in range(5):  # alone, in a batch of one
        one = _draw(name, kw, SEEDS[i : i + 1], None if y is None else y[i : i + 1])
        torch.testing.assert_close(one[0], full[i], **TOL)
    perm = [3, 0, 4, 1, 2]  # at other positions, next to other samples
    moved = _draw(name, kw, [SEEDS[p] for p in perm], None if y is None else y[perm])
    torch.testing.assert_close(moved, full[perm], **TOL)
    # The seed is what makes a sample: another seed, another sample (x_T and, with noise,
    # every step's draw).
    other = _draw(name, kw, [s + 100 for s in SEEDS], y)
    assert float((other - full).abs().min()) > 1e-3


STOCHASTIC = [c for c in CONFIGS if c[0] == "ddpm" or c[1].get("eta", 0.0) > 0]


@pytest.mark.parametrize(
    "name, kw", STOCHASTIC, ids=[f"{n}-eta{kw.get('eta', 1)}" for n, kw in STOCHASTIC]
)
def test_stochastic_samplers_draw_their_step_noise_from_the_seeds(
    name: str, kw: dict[str, float]
) -> None:
    # Same x_T, other seeds: a sampler that injects noise must use the seeds for it (not a
    # global RNG, which would also break the batch invariance above) ...
    x_T = initial_noise((5, D), seeds=SEEDS)
    run = SAMPLERS[name]
    a = run(net, SCHEDULE, x_T, num_steps=STEPS, seeds=SEEDS, **kw)
    b = run(net, SCHEDULE, x_T, num_steps=STEPS, seeds=[s + 100 for s in SEEDS], **kw)
    assert float((a - b).abs().min()) > 1e-3
    # ... and the same seeds give the same samples, whatever the global RNG did meanwhile.
    torch.manual_seed(999)
    torch.randn(10)
    torch.testing.assert_close(run(net, SCHEDULE, x_T, num_steps=STEPS, seeds=SEEDS, **kw), a)


@pytest.mark.parametrize("name", ["ddim", "dpmpp", "dpmpp3m"])
def test_eta_zero_is_deterministic_given_x_T(name: str) -> None:
    x_T = initial_noise((5, D), seeds=SEEDS)
    run = SAMPLERS[name]
    a = run(net, SCHEDULE, x_T, num_steps=STEPS, seeds=SEEDS, eta=0.0)
    b = run(net, SCHEDULE, x_T, num_steps=STEPS, seeds=[s + 100 for s in SEEDS], eta=0.0)
    assert torch.equal(a, b)
