"""Trace-time validation of shapes and dtypes.

Everything here runs on static ``.shape``/``.dtype`` information, so it raises
while tracing under ``jax.jit`` rather than returning silently wrong numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._state import LSTMState


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(np.shape(a))


def _float_dtype(a: Any, name: str) -> Any:
    """The dtype of ``a``, which must be real floating (TypeError otherwise)."""
    dtype = jnp.result_type(a)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a real floating dtype (float32, bfloat16, ...). Got dtype={dtype}."
            + (
                " Integer and bool inputs are not cast silently (torch.nn.LSTM refuses them "
                "too): cast them yourself, e.g. x.astype(jnp.float32)."
                if name == "x"
                else ""
            )
        )
    return dtype


def check_input(x: Any, input_size: int | None, *, recurrent: bool) -> None:
    """Checks the dtype, the feature axis and, in recurrent mode, the time axis of ``x``."""
    _float_dtype(x, "x")
    shape = _shape(x)
    min_ndim = 2 if recurrent else 1
    if len(shape) < min_ndim:
        expected = "[*B, T, I] (time is the last batch axis)" if recurrent else "[*B, I]"
        raise ValueError(
            f"x must have shape {expected}"
            + (" in recurrent mode; a recurrent call needs a time axis" if recurrent else "")
            + f". Got x.shape={shape}."
        )
    if recurrent and shape[-2] == 0:
        raise ValueError(f"x must hold at least one time step (T >= 1). Got x.shape={shape}, T=0.")
    if input_size is not None and shape[-1] != input_size:
        raise ValueError(
            f"x has {shape[-1]} features but the parameters expect input_size="
            f"{input_size}. Got x.shape={shape}."
        )


def normalize_is_init(
    is_init: Any, batch_shape: Sequence[int], *, name: str = "is_init"
) -> jnp.ndarray:
    """Returns ``is_init`` as a bool array of shape ``batch_shape``.

    Accepts ``batch_shape`` or ``batch_shape + (1,)`` (torchrl stores ``is_init``
    with a trailing singleton), bool or integer 0/1 values.
    """
    batch_shape = tuple(batch_shape)
    shape = _shape(is_init)
    if shape == batch_shape + (1,) and shape != batch_shape:
        is_init = jnp.reshape(is_init, batch_shape)
    elif shape != batch_shape:
        raise ValueError(
            f"{name} must have shape {batch_shape} or {batch_shape + (1,)}. "
            f"Got {name}.shape={shape}."
        )
    dtype = jnp.result_type(is_init)
    if dtype == jnp.bool_:
        return jnp.asarray(is_init)
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.asarray(is_init) != 0
    raise TypeError(f"{name} must be bool (or integer 0/1). Got dtype={dtype}.")


def check_state(
    state: Any,
    leading_shape: Sequence[int],
    num_layers: int,
    hidden_size: int,
    *,
    name: str = "state",
    layout: str = "[*B, L, H]",
    widths: Sequence[int] | None = None,
) -> LSTMState:
    """Checks that ``state`` is an ``LSTMState`` of shape ``[*leading, L, H]``.

    ``layout`` names the expected axes in the error message; ``widths`` are
    the last axes of ``h`` and ``c`` (``(P, H)`` with a projection).
    """
    if not isinstance(state, LSTMState):
        raise TypeError(
            f"{name} must be a jaxlstm.LSTMState(h=..., c=...). Got {type(state).__name__}."
        )
    widths = tuple(widths) if widths is not None else (hidden_size, hidden_size)
    for field, width in zip(("h", "c"), widths):
        expected = tuple(leading_shape) + (num_layers, width)
        got = _shape(getattr(state, field))
        if got != expected:
            proj = f", proj_size={width}" if width != hidden_size else ""
            raise ValueError(
                f"{name}.{field} must have shape {layout}={expected} "
                f"(num_layers={num_layers}, hidden_size={hidden_size}{proj}). Got {got}."
            )
        _float_dtype(getattr(state, field), f"{name}.{field}")
    return state


def check_array_state(
    state: Any,
    leading_shape: Sequence[int],
    num_layers: int,
    hidden_size: int,
    *,
    name: str = "state",
    layout: str = "[*B, L, H]",
) -> Any:
    """Checks that ``state`` is one array of shape ``[*leading, L, H]`` (a GRU's state)."""
    if isinstance(state, (LSTMState, tuple, list, dict)) or not hasattr(state, "shape"):
        raise TypeError(
            f"{name} must be one array {layout} (a GRU's hidden state). Got {type(state).__name__}."
        )
    expected = tuple(leading_shape) + (num_layers, hidden_size)
    got = _shape(state)
    if got != expected:
        raise ValueError(
            f"{name} must have shape {layout}={expected} "
            f"(num_layers={num_layers}, hidden_size={hidden_size}). Got {got}."
        )
    _float_dtype(state, name)
    return state
