"""The training data stream: every step's global batch from one shared generator, and the RNG
state that exact resume restores.

One ``torch.Generator`` seeded from ``train.seed`` draws, for every step, the *global* batch
(indices, timesteps, noise, flips, label drops) of size batch_size x world_size; each rank takes
its slice. So N ranks at batch B see exactly the samples one process sees at batch N*B, and a
resumed run continues the same stream (the generator state is checkpointed with every rank's
global torch RNG, which drives dropout).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddpmkit.data.images import to_model_range
from ddpmkit.diffusion import lognormal_timestep_probs
from ddpmkit.sampling import NULL_LABEL
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.training.build import TrainData
from ddpmkit.training.config import RunConfig
from ddpmkit.training.distributed import DistInfo

__all__ = ["Batcher", "restore_rng", "rng_state"]


def rng_state(gen: torch.Generator, dist: DistInfo) -> dict[str, Tensor]:
    """The shared data generator and every rank's global torch RNG (collective under DDP)."""
    states = [torch.get_rng_state()]
    if dist.world_size > 1:
        import torch.distributed as torch_dist

        gathered: list[Tensor | None] = [None] * dist.world_size
        torch_dist.all_gather_object(gathered, states[0])
        states = [s for s in gathered if s is not None]
    out = {"data": gen.get_state()}
    out.update({f"torch_rank{r}": st for r, st in enumerate(states)})
    return out


def restore_rng(gen: torch.Generator, rng: dict[str, Tensor], dist: DistInfo) -> None:
    gen.set_state(rng["data"])
    key = f"torch_rank{dist.rank}"
    if key in rng:
        torch.set_rng_state(rng[key])


class Batcher:
    """Draws the global batch from the shared generator and returns this rank's slice."""

    def __init__(self, data: TrainData, cfg: RunConfig, sched: NoiseSchedule, dist: DistInfo):
        self.data, self.cfg, self.sched, self.dist = data, cfg, sched, dist
        self.b = cfg.train.batch_size
        self.g = self.b * dist.world_size
        # EDM's log-normal noise levels as a categorical over t (None: uniform t)
        self.t_probs: Tensor | None = None
        if cfg.diffusion.t_sampling == "lognormal":
            p_mean, p_std = cfg.diffusion.t_lognormal
            self.t_probs = lognormal_timestep_probs(sched, p_mean, p_std).float()

    def draw(
        self, gen: torch.Generator, device: torch.device
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        data, cfg = self.data, self.cfg
        idx = torch.randint(0, data.x.shape[0], (self.g,), generator=gen)
        if self.t_probs is None:
            t = torch.randint(0, self.sched.num_steps, (self.g,), generator=gen)
        else:
            t = torch.multinomial(self.t_probs, self.g, replacement=True, generator=gen)
        if cfg.diffusion.antithetic:
            half = self.g // 2
            t[self.g - half :] = self.sched.num_steps - 1 - t[:half]
        noise = torch.randn((self.g, *data.sample_shape), generator=gen)
        flip = torch.rand(self.g, generator=gen) < 0.5
        drop = torch.rand(self.g, generator=gen) < cfg.train.cfg_dropout
        lo, hi = self.dist.rank * self.b, (self.dist.rank + 1) * self.b
        idx, t, noise, flip, drop = idx[lo:hi], t[lo:hi], noise[lo:hi], flip[lo:hi], drop[lo:hi]
        x = data.x[idx]
        if data.kind == "image":
            x = to_model_range(x)  # uint8 -> [-1, 1], the one place pixels are scaled
            if cfg.data.hflip:
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = None
        if data.labels is not None:
            y = data.labels[idx].clone()
            y[drop] = NULL_LABEL
        return x.to(device), (None if y is None else y.to(device)), t.to(device), noise.to(device)
