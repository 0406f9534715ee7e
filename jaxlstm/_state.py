"""The recurrent state pytree."""

from __future__ import annotations

from typing import NamedTuple

import jax


class LSTMState(NamedTuple):
    """Hidden and cell state of a (stacked) LSTM, in torchrl's tensordict layout.

    torch's ``nn.LSTM`` uses ``(h, c)`` while Flax's cells carry ``(c, h)``; pass
    this tuple around by name (``state.h``, ``state.c``), never by position.
    """

    h: jax.Array  # shape=[*B, L, H] (or [*B, T, L, H] per step), float
    c: jax.Array  # shape=[*B, L, H] (or [*B, T, L, H] per step), float
