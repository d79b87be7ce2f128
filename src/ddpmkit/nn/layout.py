"""The text as a layout: a per-position readout of the prompt's tokens (issue 15).

Global conditioning (the pooled vector in the time embedding) is the same at every pixel, and
cross-attention queries come from the noisy image's features: in both, turning "a sandal to the
left of a bag" into "sandal here, bag there" is left to the U-Net to discover. A layout map
states it: every position of the first level's grid asks the tokens, with a query computed
from *where it is* only (not from the image),

    m(r, c) = W_o  sum_l softmax_l( q(r, c) . k_l / sqrt(d) ) v_l,     q(r, c) = MLP(P(r, c)),

multi-head (Vaswani et al. 2017, eq. 1), P the fixed 2-D sin-cos code of the position
(:func:`~ddpmkit.nn.blocks.position_grid`), k_l, v_l linear in the conditioning tokens (padding
masked out), W_o (D_m, D) with D_m = ``out_dim`` the map's width (default D). The map
(B, D_m, H, W) is independent of the noise and of t, so it is computed once per forward pass;
each U-Net level adds a zero-initialised 1x1 projection of it, average-pooled
to the level's size, to its features (:class:`LayoutInjection`), as SPADE (Park et al. 2019)
feeds a semantic layout to every level. The readout is trained by the denoising loss itself:
the left half's loss tells the left positions' queries which token to read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpmkit.nn.blocks import attention, position_grid, zero_init

__all__ = ["LayoutInjection", "TextLayout"]


class TextLayout(nn.Module):
    """Tokens (B, L, dim) + mask (B, L) -> layout map (B, out_dim, H, W); see the module
    docstring. ``out_dim`` (0 = ``dim``) is the map's width: what every level's 1x1 projection
    reads, so it sets their cost (64 instead of 256 measured 15% less time per training step
    of the fashion_text U-Net, AVX2 EPYC, 2 threads).

    ``mask``: True for the keys a row may read; every row needs one (the U-Net's null token
    guarantees it). Padding keys take no part, so appending padding changes nothing.
    """

    def __init__(self, dim: int, num_heads: int, out_dim: int = 0):
        super().__init__()
        if dim % num_heads or dim % 4:
            raise ValueError(f"num_heads={num_heads} must divide the layout width {dim} (and 4)")
        if out_dim < 0:
            raise ValueError(f"the layout map's width must be >= 0 (0 = {dim}), got {out_dim}")
        self.dim, self.heads, self.out_dim = dim, num_heads, out_dim or dim
        self.query = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, self.out_dim)
        self._grid: Tensor | None = None

    def forward(self, tokens: Tensor, mask: Tensor, size: tuple[int, int]) -> Tensor:
        h, w = size
        m = self.out(self._read(tokens, mask, h, w))  # (B, HW, out_dim)
        return m.transpose(1, 2).reshape(tokens.shape[0], self.out_dim, h, w)

    def cell_means(
        self, tokens: Tensor, mask: Tensor, size: tuple[int, int], grid: tuple[int, int]
    ) -> Tensor:
        """The map of :meth:`forward` averaged over each cell of a (rows, cols) ``grid``,
        row-major: (B, rows * cols, out_dim). Exactly that average, computed before the
        output projection (an affine map commutes with a mean), so the projection runs on
        B x cells rows instead of B x H x W: what region alignment needs, at a fraction of the
        cost. H and W must be divisible by the grid."""
        h, w = size
        gr, gc = grid
        if h % gr or w % gc:
            raise ValueError(f"a {h}x{w} map does not split into a {gr}x{gc} grid of cells")
        a = self._read(tokens, mask, h, w).view(-1, gr, h // gr, gc, w // gc, self.dim)
        return self.out(a.mean(dim=(2, 4)).flatten(1, 2))  # type: ignore[no-any-return]

    def _read(self, tokens: Tensor, mask: Tensor, h: int, w: int) -> Tensor:
        """The attention readout before the output projection: (B, H W, dim), row-major."""
        b, length, _ = tokens.shape
        d = self.dim // self.heads
        q = self.query(self._positions(h, w, tokens.device))  # (HW, dim), the same for every row
        q = q.view(1, h * w, self.heads, d).transpose(1, 2).expand(b, -1, -1, -1)
        kv = self.kv(tokens).to(q.dtype)
        k, v = kv.view(b, length, 2 * self.heads, d).transpose(1, 2).chunk(2, dim=1)
        a = attention(q, k, v, mask)  # (B, heads, HW, d)
        return a.transpose(1, 2).reshape(b, h * w, self.dim)

    def _positions(self, h: int, w: int, device: torch.device) -> Tensor:
        """(H W, dim) position codes, row-major; built once per size and device."""
        g = self._grid
        if g is None or g.shape[0] != h * w or g.device != device:
            g = position_grid(self.dim, h, w, device)[0].flatten(1).t().contiguous()
            self._grid = g
        return g


class LayoutInjection(nn.Module):
    """x + conv1x1(avgpool(map)): a level's features plus its view of the layout map.

    The 1x1 conv is zero-initialised (the level starts as without a layout); the map is
    average-pooled to x's size (an integer factor: the U-Net halves its maps).
    """

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.proj = zero_init(nn.Conv2d(dim, channels, 1))

    def forward(self, x: Tensor, layout: Tensor) -> Tensor:
        factor = layout.shape[-1] // x.shape[-1]
        m = F.avg_pool2d(layout, factor) if factor > 1 else layout
        return x + self.proj(m.to(x.dtype))
