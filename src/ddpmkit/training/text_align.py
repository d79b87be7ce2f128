"""Text-image alignment: pre-train the U-Net's text side contrastively before diffusion.

A frozen sentence encoder's tokens carry *which garment is where* only weakly (issue 15: a
layout probe reads it from them, the diffusion loss does not in 30 minutes). This stage gives
the text side a direct signal from the images first, with CLIP's symmetric InfoNCE loss
(Radford et al. 2021) between

* the caption side: the U-Net's own ``text_context`` (LN -> Linear, then the refiner) pooled by
  its ``text_pool`` (:class:`~ddpmkit.nn.blocks.TokenPool`) and a linear head, and
* an image tower: a small CNN whose flattened map keeps absolute position (no global pool),

both L2-normalised, logits ``s <z_text, z_image>`` with a learned scale s (CLIP: init 1/0.07,
at most 100). Text-to-image logits also score every image's **horizontal mirror** as a negative:
a mirror swaps left and right, so a caption can beat its own image's mirror only by saying
where things are. Where a caption says nothing that a mirror changes ("a bag"), the best it
can do is a tie, a constant log 2 in the loss and no gradient pushing anything: the mirrors
cost such captions nothing. Rows with the same caption id are all positives (soft targets).
Nothing here reads the layout labels; it uses only (image, caption) pairs, so it applies to any
captioned folder where left and right matter.

After ``steps`` the tower and heads are dropped; the text side keeps its weights (and, with
``freeze``, is no longer trained, so diffusion cannot wash the layout out of it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpmkit.data.images import to_model_range

__all__ = [
    "Aligner",
    "ImageTower",
    "align_text_side",
    "contrastive_loss",
    "mirror_wins",
    "text_side_parameters",
]


class ImageTower(nn.Module):
    """(B, C, H, W) in [-1, 1] -> (B, dim): two stride-2 3x3 convs (SiLU), the (width, H/4,
    W/4) map flattened (position kept) and projected to ``dim``. Both convs strided: a first
    full-resolution conv measured 7.5x the time per batch (28x56, one thread) for a tower
    that only has to tell garments and halves apart."""

    def __init__(self, channels: int, hw: tuple[int, int], dim: int, width: int = 64):
        super().__init__()
        h, w = (hw[0] + 3) // 4, (hw[1] + 3) // 4
        self.convs = nn.Sequential(
            nn.Conv2d(channels, width // 2, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1),
            nn.SiLU(),
        )
        self.proj = nn.Linear(width * h * w, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.convs(x).flatten(1))  # type: ignore[no-any-return]


def contrastive_loss(
    z_text: Tensor, z_image: Tensor, z_mirror: Tensor, ids: Tensor, scale: Tensor
) -> Tensor:
    """Symmetric InfoNCE with mirrored negatives (module doc); rows of equal ``ids`` are all
    positives. ``z_*``: (B, E) L2-normalised; ``ids``: (B,) caption ids; ``scale``: scalar.

    text -> image: cross-entropy over the 2B columns [images; mirrors], target uniform over the
    images with the row's caption id (mirrors are never targets); image -> text: over the B
    captions, uniform over the same-id captions. Returns the mean of the two."""
    same = (ids[:, None] == ids[None, :]).to(z_text.dtype)  # (B, B)
    target = same / same.sum(dim=1, keepdim=True)
    logits_t = scale * z_text @ torch.cat([z_image, z_mirror]).T  # (B, 2B)
    target_t = torch.cat([target, torch.zeros_like(target)], dim=1)
    loss_t = -(target_t * logits_t.log_softmax(dim=1)).sum(dim=1).mean()
    logits_i = scale * z_image @ z_text.T  # (B, B)
    loss_i = -(target * logits_i.log_softmax(dim=1)).sum(dim=1).mean()
    return (loss_t + loss_i) / 2


def text_side_parameters(unet: nn.Module) -> list[nn.Parameter]:
    """The parameters that turn the encoder's tokens into the U-Net's context and pooled
    vector: ``text_tokens``, ``text_refiner`` (if any) and ``text_pool``."""
    out: list[nn.Parameter] = []
    for name in ("text_tokens", "text_refiner", "text_pool"):
        mod = getattr(unet, name, None)
        if mod is not None:
            out.extend(mod.parameters())
    return out


def mirror_wins(z_text: Tensor, z_image: Tensor, z_mirror: Tensor) -> float:
    """Share of rows whose caption scores its image above the image's horizontal mirror."""
    own, mirror = (z_text * z_image).sum(-1), (z_text * z_mirror).sum(-1)
    return float((own > mirror).float().mean())


class Aligner(nn.Module):
    """The contrastive pair around a text-conditioned U-Net's text side: ``embed_text`` (its
    ``text_context`` -> ``text_pool`` -> a linear head) and ``embed_images`` (an
    :class:`ImageTower`), both L2-normalised, and the learned logit scale (CLIP: 1/0.07)."""

    def __init__(self, model: Any, channels: int, hw: tuple[int, int], seed: int = 0):
        super().__init__()
        unet: Any = model.net  # a TextConditioned U-Net
        if getattr(unet, "text_pool", None) is None:
            raise ValueError("text alignment needs model.unet.text_pooling = 'attention'")
        self._model: list[Any] = [model]  # not a submodule: the U-Net keeps its own weights
        dim = int(unet.text_pool.out.out_features)
        with torch.random.fork_rng():  # the run's global stream is left as it was
            torch.manual_seed(seed)
            self.tower = ImageTower(channels, hw, dim)
            self.head = nn.Linear(dim, dim)
        self.log_scale = nn.Parameter(torch.tensor(1 / 0.07).log())

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp().clamp(max=100.0)

    def embed_text(self, ids: Tensor) -> Tensor:
        """(B,) caption ids (rows of the model's table) -> (B, E) unit vectors."""
        model = self._model[0]
        unet = model.net
        tok, mask, _ = model.text_for(ids)
        return F.normalize(self.head(unet.text_pool(unet.text_context(tok, mask), mask)), dim=-1)

    def embed_images(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, E) unit vectors."""
        return F.normalize(self.tower(x), dim=-1)

    def mirror_accuracy(self, ids: Tensor, images_u8: Tensor) -> float:
        """Share of rows whose caption scores its image above the image's horizontal mirror."""
        with torch.no_grad():
            x = to_model_range(images_u8)
            return mirror_wins(
                self.embed_text(ids), self.embed_images(x), self.embed_images(x.flip(-1))
            )


def align_text_side(
    model: nn.Module,
    images_u8: Tensor,
    caption_ids: Tensor,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    freeze: bool = True,
    log: Callable[[str], None] | None = print,
    on_block: Callable[[int, Aligner], None] | None = None,
    block: int = 0,
) -> tuple[dict[str, Any], Aligner]:
    """Train ``model``'s text side (a :class:`~ddpmkit.text.conditioned.TextConditioned` U-Net
    with ``text_pooling = "attention"``) for ``steps`` contrastive steps on (image, caption id)
    pairs drawn with replacement from ``images_u8`` (N, C, H, W) uint8 and ``caption_ids`` (N,)
    by a generator seeded with ``seed``; with ``freeze`` the text side stops requiring grads.

    Returns (``{"steps", "seconds", "loss", "mirror_accuracy", "frozen"}``, the aligner): the
    mean loss and the share of rows whose caption scores its own image above that image's
    mirror, both over the last tenth of the steps' batches. ``on_block(step, aligner)`` is
    called after every ``block`` steps (diagnostics; it must leave the model's table as it
    found it)."""
    hw = (int(images_u8.shape[2]), int(images_u8.shape[3]))
    aligner = Aligner(model, images_u8.shape[1], hw, seed)
    params = text_side_parameters(model.net)  # type: ignore[arg-type]
    opt = torch.optim.AdamW([*params, *aligner.parameters()], lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    t0, tail = time.perf_counter(), max(1, steps // 10)
    losses: list[float] = []
    wins: list[float] = []
    for step in range(steps):
        idx = torch.randint(0, images_u8.shape[0], (batch_size,), generator=gen)
        x = to_model_range(images_u8[idx])
        ids = caption_ids[idx]
        z_t, z_i = aligner.embed_text(ids), aligner.embed_images(x)
        z_m = aligner.embed_images(x.flip(-1))
        loss = contrastive_loss(z_t, z_i, z_m, ids, aligner.scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        if step >= steps - tail:
            losses.append(value)
            wins.append(mirror_wins(z_t.detach(), z_i.detach(), z_m.detach()))
        if on_block is not None and block > 0 and (step + 1) % block == 0:
            on_block(step + 1, aligner)
        if log is not None and (step + 1) % max(1, steps // 4) == 0:
            log(f"text alignment: step {step + 1}/{steps}, loss {value:.3f}")
    if freeze:
        for p in params:
            p.requires_grad_(False)
    stats = {
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "loss": sum(losses) / len(losses) if losses else float("nan"),
        "mirror_accuracy": sum(wins) / len(wins) if wins else float("nan"),
        "frozen": freeze,
    }
    return stats, aligner
