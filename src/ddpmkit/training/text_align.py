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

**Regions** (a U-Net with ``model.unet.text_layout``, :mod:`ddpmkit.nn.layout`): the layout
map is trained the same way, region by region. The image is cut into a grid of ``REGIONS``
(rows, columns) = (1, 2) cells, its left and right halves; the caption's layout map averaged
over cell r is that cell's text embedding, and the tower's feature map inside cell r, flattened
and projected by one linear layer shared by all cells (so a sandal is the same embedding on
either side), is the cell's image embedding. The same symmetric InfoNCE runs over the B x cells
items: a (caption, cell) pair's positives are the cells r of the images with that caption;
every other image's cells, and the image's own other cells, are negatives, and so are the cells
of the mirrored images. So the map learns *what is where* from (image, caption) pairs alone:
its left positions must read the garment that the left half shows.

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
    "REGIONS",
    "Aligner",
    "ImageTower",
    "align_text_side",
    "contrastive_loss",
    "mirror_wins",
    "region_wins",
    "text_side_parameters",
]

# The grid of cells (rows, columns) that region alignment matches text and image on.
REGIONS = (1, 2)


def strided_convs(channels: int, width: int) -> nn.Sequential:
    """The towers' trunk: two stride-2 3x3 convs with SiLU, (B, C, H, W) -> (B, width, H/4,
    W/4) (rounded up)."""
    return nn.Sequential(
        nn.Conv2d(channels, width // 2, 3, stride=2, padding=1),
        nn.SiLU(),
        nn.Conv2d(width // 2, width, 3, stride=2, padding=1),
        nn.SiLU(),
    )


class ImageTower(nn.Module):
    """(B, C, H, W) in [-1, 1] -> (B, dim): two stride-2 3x3 convs (SiLU), the (width, H/4,
    W/4) map flattened (position kept) and projected to ``dim``. Both convs strided: a first
    full-resolution conv measured 7.5x the time per batch (28x56, one thread) for a tower
    that only has to tell garments and halves apart."""

    def __init__(self, channels: int, hw: tuple[int, int], dim: int, width: int = 64):
        super().__init__()
        h, w = (hw[0] + 3) // 4, (hw[1] + 3) // 4
        self.convs = strided_convs(channels, width)
        self.proj = nn.Linear(width * h * w, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.convs(x).flatten(1))  # type: ignore[no-any-return]


def cells(m: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, C, H, W) -> (B, rows * cols, C, H / rows, W / cols): the grid's cells, row-major;
    H and W divisible by the grid."""
    b, c, h, w = m.shape
    gr, gc = grid
    if h % gr or w % gc:
        raise ValueError(f"a {h}x{w} map does not split into a {gr}x{gc} grid of cells")
    t = m.reshape(b, c, gr, h // gr, gc, w // gc).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(b, gr * gc, c, h // gr, w // gc)


class RegionTower(nn.Module):
    """(B, C, H, W) in [-1, 1] -> (B, cells, dim): the :class:`ImageTower`'s two strided convs,
    then each cell of the (width, H/4, W/4) map flattened and projected by one linear layer
    shared by all cells. H/4 and W/4 (rounded up) must split into the grid."""

    def __init__(
        self, channels: int, hw: tuple[int, int], dim: int, grid: tuple[int, int], width: int = 64
    ):
        super().__init__()
        h, w = (hw[0] + 3) // 4, (hw[1] + 3) // 4
        if h % grid[0] or w % grid[1]:
            raise ValueError(
                f"region alignment: the {hw[0]}x{hw[1]} images' {h}x{w} tower map does not "
                f"split into a {grid[0]}x{grid[1]} grid"
            )
        self.grid = grid
        self.convs = strided_convs(channels, width)
        self.proj = nn.Linear(width * (h // grid[0]) * (w // grid[1]), dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(cells(self.convs(x), self.grid).flatten(2))  # type: ignore[no-any-return]


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
    """The parameters that turn the encoder's tokens into the U-Net's context, pooled vector
    and layout map: ``text_tokens``, ``text_refiner``, ``text_pool``, ``text_layout`` (those
    the U-Net has)."""
    out: list[nn.Parameter] = []
    for name in ("text_tokens", "text_refiner", "text_pool", "text_layout"):
        mod = getattr(unet, name, None)
        if mod is not None:
            out.extend(mod.parameters())
    return out


def mirror_wins(z_text: Tensor, z_image: Tensor, z_mirror: Tensor) -> float:
    """Share of rows whose caption scores its image above the image's horizontal mirror."""
    own, mirror = (z_text * z_image).sum(-1), (z_text * z_mirror).sum(-1)
    return float((own > mirror).float().mean())


def region_wins(z_text: Tensor, z_image: Tensor, z_mirror: Tensor) -> float:
    """Share of rows whose every cell's text, (B, cells, E), scores the image's cell above the
    same cell of the image's horizontal mirror (both (B, cells, E)). The same cell, so the
    same place on the canvas: where a cell sits (which a padded conv can tell) does not help;
    only *what* is in it does. On a two-garment scene the mirror's left cell holds the
    right garment, so this is "each garment named on its own side"."""
    own = (z_text * z_image).sum(-1)  # (B, cells)
    mirror = (z_text * z_mirror).sum(-1)
    return float((own > mirror).all(dim=1).float().mean())


class Aligner(nn.Module):
    """The contrastive pairs around a text-conditioned U-Net's text side: globally (with its
    ``text_pool``) ``embed_text`` (``text_context`` -> ``text_pool`` -> a linear head) against
    ``embed_images`` (an :class:`ImageTower`); by region (with its ``text_layout``)
    ``embed_text_cells`` (the layout map averaged per cell -> a linear head) against
    ``embed_image_cells`` (a :class:`RegionTower`). All L2-normalised, each pair with its
    learned logit scale (CLIP: 1/0.07)."""

    def __init__(self, model: Any, channels: int, hw: tuple[int, int], seed: int = 0):
        super().__init__()
        unet: Any = model.net  # a TextConditioned U-Net
        self.has_global = getattr(unet, "text_pool", None) is not None
        self.has_regions = getattr(unet, "text_layout", None) is not None
        if not (self.has_global or self.has_regions):
            raise ValueError(
                "text alignment needs model.unet.text_pooling = 'attention' or "
                "model.unet.text_layout = true"
            )
        self._model: list[Any] = [model]  # not a submodule: the U-Net keeps its own weights
        self.patch = int(unet.cfg.patch_size)
        with torch.random.fork_rng():  # the run's global stream is left as it was
            torch.manual_seed(seed)
            if self.has_global:
                dim = int(unet.text_pool.out.out_features)
                self.tower = ImageTower(channels, hw, dim)
                self.head = nn.Linear(dim, dim)
            if self.has_regions:
                dim = int(unet.text_layout.out_dim)
                self.region_tower = RegionTower(channels, hw, dim, REGIONS)
                self.region_head = nn.Linear(dim, dim)
        self.log_scale = nn.Parameter(torch.tensor(1 / 0.07).log())
        self.log_region_scale = nn.Parameter(torch.tensor(1 / 0.07).log())
        self.hw = hw

    @property
    def region_scale(self) -> Tensor:
        return self.log_region_scale.exp().clamp(max=100.0)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp().clamp(max=100.0)

    def context(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """(B,) caption ids (rows of the model's table) -> the U-Net's ``text_context`` of
        their tokens (B, L, D) and the tokens' mask (B, L)."""
        model = self._model[0]
        tok, mask, _ = model.text_for(ids)
        return model.net.text_context(tok, mask), mask

    def embed_text(self, ids: Tensor, context: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """(B,) caption ids -> (B, E) unit vectors; ``context``: their :meth:`context`, if
        already computed."""
        ctx, mask = self.context(ids) if context is None else context
        return F.normalize(self.head(self._model[0].net.text_pool(ctx, mask)), dim=-1)

    def embed_images(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, E) unit vectors."""
        return F.normalize(self.tower(x), dim=-1)

    def embed_text_cells(self, ids: Tensor, context: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """(B,) caption ids -> (B, cells, E) unit vectors: the U-Net's own layout map (at its
        first level's size) averaged over each cell of ``REGIONS``, through a linear head;
        ``context``: their :meth:`context`, if already computed."""
        ctx, mask = self.context(ids) if context is None else context
        size = (self.hw[0] // self.patch, self.hw[1] // self.patch)
        m = self._model[0].net.text_layout.cell_means(ctx, mask, size, REGIONS)  # (B, cells, D)
        return F.normalize(self.region_head(m), dim=-1)

    def embed_image_cells(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, cells, E) unit vectors."""
        return F.normalize(self.region_tower(x), dim=-1)

    def loss(self, ids: Tensor, x: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The alignment loss of a batch (the global and the region InfoNCE, summed, those the
        U-Net has) and its diagnostics: ``mirror`` (:func:`mirror_wins`) and ``regions``
        (:func:`region_wins`)."""
        total = x.new_zeros(())
        diag: dict[str, float] = {}
        context = self.context(ids)  # once, for both losses
        if self.has_global:
            z_t, z_i = self.embed_text(ids, context), self.embed_images(x)
            z_m = self.embed_images(x.flip(-1))
            total = total + contrastive_loss(z_t, z_i, z_m, ids, self.scale)
            diag["mirror"] = mirror_wins(z_t.detach(), z_i.detach(), z_m.detach())
        if self.has_regions:
            c_t, c_i = self.embed_text_cells(ids, context), self.embed_image_cells(x)
            c_m = self.embed_image_cells(x.flip(-1))
            n = c_t.shape[1]
            cell_ids = (ids[:, None] * n + torch.arange(n, device=ids.device)).flatten()
            total = total + contrastive_loss(
                c_t.flatten(0, 1), c_i.flatten(0, 1), c_m.flatten(0, 1), cell_ids,
                self.region_scale,
            )  # fmt: skip
            diag["regions"] = region_wins(c_t.detach(), c_i.detach(), c_m.detach())
        return total, diag

    def region_accuracy(self, ids: Tensor, images_u8: Tensor) -> float:
        """:func:`region_wins` of these captions and images."""
        with torch.no_grad():
            x = to_model_range(images_u8)
            c_t, c_i = self.embed_text_cells(ids), self.embed_image_cells(x)
            return region_wins(c_t, c_i, self.embed_image_cells(x.flip(-1)))

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

    Returns (``{"steps", "seconds", "loss", "frozen"}`` plus ``"mirror_accuracy"`` (global)
    and/or ``"region_accuracy"`` (regions), the aligner): the mean loss, the share of rows
    whose caption scores its own image above that image's mirror, and the share whose every
    cell's text picks the image's own cell (:func:`region_wins`), all over the last tenth of
    the steps' batches. ``on_block(step, aligner)`` is
    called after every ``block`` steps (diagnostics; it must leave the model's table as it
    found it)."""
    hw = (int(images_u8.shape[2]), int(images_u8.shape[3]))
    aligner = Aligner(model, images_u8.shape[1], hw, seed)
    params = text_side_parameters(model.net)  # type: ignore[arg-type]
    opt = torch.optim.AdamW([*params, *aligner.parameters()], lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    t0, tail = time.perf_counter(), max(1, steps // 10)
    losses: list[float] = []
    wins: list[dict[str, float]] = []
    for step in range(steps):
        idx = torch.randint(0, images_u8.shape[0], (batch_size,), generator=gen)
        x = to_model_range(images_u8[idx])
        ids = caption_ids[idx]
        loss, diag = aligner.loss(ids, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        if step >= steps - tail:
            losses.append(value)
            wins.append(diag)
        if on_block is not None and block > 0 and (step + 1) % block == 0:
            on_block(step + 1, aligner)
        if log is not None and (step + 1) % max(1, steps // 4) == 0:
            log(f"text alignment: step {step + 1}/{steps}, loss {value:.3f}")
    if freeze:
        for p in params:
            p.requires_grad_(False)
    stats: dict[str, Any] = {
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "loss": sum(losses) / len(losses) if losses else float("nan"),
        "frozen": freeze,
    }
    for key, name in (("mirror", "mirror_accuracy"), ("regions", "region_accuracy")):
        vals = [d[key] for d in wins if key in d]
        if vals:
            stats[name] = sum(vals) / len(vals)
    return stats, aligner
