"""A text-conditioned network behind the label interface: ``TextConditioned(net, table)``.

``forward(x, t, y)`` reads ``y`` as a row index into a caption table: rows ``y >= 0`` take that
caption's ``(tokens, mask, pooled)``; ``y < 0`` (``NULL_LABEL`` = -1, what label dropout and
guidance's unconditional branch use) gets the null condition (mask all False, pooled zero: the
U-Net substitutes its learned null). So every label path (batches, prompt dropout through
``train.cfg_dropout``, EMA, all samplers, classifier-free guidance) is reused unchanged: training
passes ``y = caption id``, sampling ``y = prompt index`` after :meth:`set_table` with the
prompts' encodings.

The table is a plain attribute, never a parameter or buffer: it is not saved in checkpoints,
not averaged by the EMA and shared (not copied) by ``copy.deepcopy``. ``state_dict`` and
``load_state_dict`` are the inner network's, so the keys load into the same architecture
without a wrapper prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ddpmkit.text.encoding import CaptionTable, TextEncoding

__all__ = ["TextConditioned"]


class _Shared:
    """Holds the table; ``deepcopy`` returns the same holder (the EMA copy shares it)."""

    def __init__(self, encoding: TextEncoding | None):
        self.encoding = encoding
        self.on: dict[tuple[torch.device, torch.dtype], TextEncoding] = {}

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self

    def get(self, device: torch.device) -> TextEncoding:
        if self.encoding is None:
            raise RuntimeError("TextConditioned: no caption table; call set_table(...) first")
        key = (device, self.encoding.tokens.dtype)
        if key not in self.on:
            self.on = {key: self.encoding.to(device)}  # one device at a time
        return self.on[key]


def _as_encoding(table: CaptionTable | TextEncoding | None) -> TextEncoding | None:
    if table is None:
        return None
    return table.encoding if isinstance(table, CaptionTable) else table


class TextConditioned(nn.Module):
    """``net(x, t, None, text=...)`` called with the rows ``y`` of a caption table (module doc)."""

    def __init__(self, net: nn.Module, table: CaptionTable | TextEncoding | None = None):
        super().__init__()
        self.net = net
        self._table = _Shared(_as_encoding(table))

    def set_table(self, table: CaptionTable | TextEncoding) -> None:
        """Use ``table``'s rows from now on (e.g. the encodings of the prompts to sample)."""
        self._table = _Shared(_as_encoding(table))

    @property
    def table_size(self) -> int:
        enc = self._table.encoding
        return 0 if enc is None else enc.batch_size

    def text_for(self, y: Tensor) -> TextEncoding:
        """The (tokens, mask, pooled) of rows ``y`` (B,); ``y < 0`` is the null condition."""
        enc = self._table.get(y.device)
        if y.numel() and int(y.max()) >= enc.batch_size:
            raise IndexError(
                f"caption index {int(y.max())} is outside the table ({enc.batch_size})"
            )
        rows = enc.take(y.clamp(min=0))
        return rows.drop(y < 0).trim()

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if y is None:
            y = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        tokens, mask, pooled = self.text_for(y)
        return self.net(x, t, None, text=(tokens, mask, pooled))  # type: ignore[no-any-return]

    # the inner network's weights, without a wrapper prefix
    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)
