"""Exponential moving average of a model's weights (Polyak averaging).

Floating-point *parameters and buffers of the network* are averaged (so running statistics,
e.g. BatchNorm's, match the averaged weights, and a skipped update leaves them alone too);
integer buffers (counters such as ``num_batches_tracked``) are copied, not averaged.
Noise-schedule constants are never part of a network in ddpmkit (they live in the immutable
NoiseSchedule), so an EMA can never corrupt them.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    """Update n (n = 0, 1, ...: the number of earlier updates) does ema <- d_n ema + (1 - d_n) w
    with d_n = decay * min(1, n / warmup).

    So the first update (d_0 = 0) copies the weights, and the decay ramps linearly from 0 to
    ``decay`` over ``warmup`` updates: the average follows the fast early changes instead of
    remembering the random initialisation for ~1/(1 - decay) steps. ``warmup = 0`` uses
    ``decay`` from the first update.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: int = 100):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        if self.warmup <= 0:
            return self.decay
        return self.decay * min(1.0, self.num_updates / self.warmup)

    @torch.no_grad()
    def update(self, model: nn.Module, weight: Tensor | None = None) -> None:
        """Move the average one step towards ``model``'s current weights.

        ``weight``: an optional 0-d tensor (1 = update, 0 = stay) multiplying the step, so a
        caller can skip an update on the device without reading a value on the host.
        """
        d = self.current_decay()
        ema_params: list[Tensor] = list(self.model.parameters())
        params: list[Tensor] = [p.detach() for p in model.parameters()]
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            if b_ema.is_floating_point():
                ema_params.append(b_ema)
                params.append(b.detach())
            else:
                b_ema.copy_(b)
        if weight is None:
            torch._foreach_lerp_(ema_params, params, 1.0 - d)
        else:
            # a 0-d tensor weight: supported by torch, not by its type stubs
            torch._foreach_lerp_(ema_params, params, weight * (1.0 - d))  # type: ignore[call-overload]
        self.num_updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor], num_updates: int) -> None:
        self.model.load_state_dict(state)
        self.num_updates = num_updates
