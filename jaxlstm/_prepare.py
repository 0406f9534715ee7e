"""Prepare once: check and normalise every input of a call, in one place.

``prepare`` is the only function that validates: shapes, dtypes (one rule,
modelled on flax's ``promote_dtype``), ``is_init`` -> bool ``[T, N]``, the reset
target (always present, of an explicit kind), params -> per-layer weights.
It runs once per trace, on static shapes, so errors raise while tracing.
What it returns is time-major and flat (``[T, N, ...]`` with ``N`` the
product of the batch axes): the layout the loop scans over.

The dtype rule: the compute (matmul) dtype is ``dtype`` when given, else
``jnp.result_type`` of ``x`` and every weight; the carry (the recurrent state
and the gate math) is that promoted to at least float32. States and reset
targets are cast to the carry dtype; outputs ``y`` come out in the compute
dtype, states in the carry dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from . import _checks, _params
from ._cell import LSTM_CELL

ResetKind = Literal["constant", "per_step"]


class Prepared(NamedTuple):
    """A call's inputs, checked and laid out for the loop."""

    weights: tuple  # per-layer cell weights, stored dtype
    xs: jax.Array  # [T, N, I], compute dtype
    carry0: tuple  # the cell's carry (LSTM: (h0, c0)), [N, L, W] each, carry dtype
    resets: jax.Array  # bool [T, N]: reset before step t
    target: tuple  # the carry a reset loads: [N, L, W] (constant) or [T, N, L, W] (per step)
    reset_kind: str  # "constant" | "per_step"
    batch_shape: tuple[int, ...]
    steps: int
    spec: _params.ParamSpec
    compute_dtype: Any
    carry_dtype: Any


def reset_kind_of(reset_state: Any, batch_shape: tuple[int, ...], steps: int) -> ResetKind:
    """The kind of a user's ``reset_state`` in recurrent mode, from its exact shape.

    ``[*B, L, H]`` is constant and ``[*B, T, L, H]`` per step: the two ranks
    differ, so this is a lookup, not a guess. Anything else is reported as
    not matching the constant form (``check_state`` names both).
    """
    # An LSTMState's h, or a GRU's state array.
    h = getattr(reset_state, "h", reset_state)
    if hasattr(h, "shape") and jnp.ndim(h) == len(batch_shape) + 3:
        return "per_step"
    return "constant"


def prepare(
    params: Mapping[str, Any],
    x: Any,
    state: Any,
    is_init: Any,
    reset_state: Any,
    *,
    recurrent: bool,
    reset_kind: ResetKind = "constant",
    dtype: Any = None,
    cell: Any = LSTM_CELL,
) -> Prepared:
    """Checks and normalises one call's inputs.

    Args:
      params: parameter dict (``{"params": {...}}`` or the inner dict).
      x: ``[*B, T, I]`` (recurrent) or ``[*B, I]`` (step, T = 1).
      state: the cell's state (LSTM: ``LSTMState`` of ``[*B, L, H]``; GRU:
        one ``[*B, L, H]`` array), or None for zeros.
      is_init: bool/int ``[*B, T]`` or ``[*B, T, 1]`` (step: ``[*B]`` or
        ``[*B, 1]``), or None for no resets.
      reset_state: the cell's state of ``[*B, L, H]`` (``reset_kind="constant"``)
        or ``[*B, T, L, H]`` (``"per_step"``), or None for zeros (constant).
      recurrent: whether ``x`` has a time axis.
      reset_kind: the kind of ``reset_state``.
      dtype: the compute dtype, or None for the promotion rule.
      cell: the cell (``LSTM_CELL``, ``GRU_CELL``): its parameter table and state.

    Raises:
      ValueError: shapes, sizes, values. TypeError: dtypes, non-LSTMState states.
    """
    spec = _params.check_params(params, cell=cell)
    _checks.check_input(x, spec.input_size, recurrent=recurrent)
    x = jnp.asarray(x)
    if recurrent:
        batch_shape, steps = tuple(x.shape[:-2]), x.shape[-2]
    else:
        batch_shape, steps = tuple(x.shape[:-1]), 1
    n = math.prod(batch_shape)
    # Bidirectional states hold 2 slots per layer (torch's [L * D, H]).
    layers, hidden = spec.num_layers * spec.directions, spec.hidden_size

    if dtype is not None:
        compute_dtype = jnp.dtype(dtype)
        if not jnp.issubdtype(compute_dtype, jnp.floating):
            raise TypeError(f"dtype must be a real floating dtype. Got dtype={compute_dtype}.")
    else:
        compute_dtype = jnp.result_type(x.dtype, spec.dtype)
    carry_dtype = jnp.promote_types(compute_dtype, jnp.float32)

    widths = cell.carry_widths(hidden)
    if state is not None:
        cell.check_state(state, batch_shape, layers, hidden)
        carry0 = tuple(
            jnp.reshape(jnp.asarray(a).astype(carry_dtype), (n, layers, w))
            for a, w in zip(cell.state_arrays(state), widths)
        )
    else:
        carry0 = tuple(jnp.zeros((n, layers, w), carry_dtype) for w in widths)

    if is_init is not None:
        resets = _checks.normalize_is_init(is_init, batch_shape + ((steps,) if recurrent else ()))
        resets = jnp.swapaxes(jnp.reshape(resets, (n, steps)), 0, 1)  # [T, N]
    else:
        resets = jnp.zeros((steps, n), jnp.bool_)

    if reset_kind not in ("constant", "per_step"):
        raise ValueError(f"reset_kind must be 'constant' or 'per_step'. Got {reset_kind!r}.")
    if reset_state is None:
        target = tuple(jnp.zeros((n, layers, w), carry_dtype) for w in widths)
        reset_kind = "constant"
    elif reset_kind == "per_step":
        cell.check_state(
            reset_state,
            batch_shape + (steps,),
            layers,
            hidden,
            name="reset_state",
            layout="[*B, T, L, H]",
        )
        target = tuple(
            jnp.swapaxes(
                jnp.reshape(jnp.asarray(a).astype(carry_dtype), (n, steps, layers, w)), 0, 1
            )
            for a, w in zip(cell.state_arrays(reset_state), widths)
        )
    else:
        cell.check_state(reset_state, batch_shape, layers, hidden, name="reset_state")
        target = tuple(
            jnp.reshape(jnp.asarray(a).astype(carry_dtype), (n, layers, w))
            for a, w in zip(cell.state_arrays(reset_state), widths)
        )

    if recurrent:
        xs = jnp.swapaxes(jnp.reshape(x, (n, steps, spec.input_size)), 0, 1)
    else:
        xs = jnp.reshape(x, (1, n, spec.input_size))
    return Prepared(
        weights=_params.layer_weights(params, spec, cell=cell),
        xs=xs.astype(compute_dtype),
        carry0=carry0,
        resets=resets,
        target=target,
        reset_kind=reset_kind,
        batch_shape=batch_shape,
        steps=steps,
        spec=spec,
        compute_dtype=compute_dtype,
        carry_dtype=carry_dtype,
    )


def batch_major(a: jax.Array, prepared: Prepared, *, recurrent: bool) -> jax.Array:
    """``[T, N, ...]`` -> ``[*B, T, ...]`` (recurrent) or ``[*B, ...]`` (step)."""
    if recurrent:
        return jnp.reshape(
            jnp.swapaxes(a, 0, 1), prepared.batch_shape + (prepared.steps,) + a.shape[2:]
        )
    return jnp.reshape(a[0], prepared.batch_shape + a.shape[2:])
