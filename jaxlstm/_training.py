"""Training helpers for recurrent policies: R2D2 burn-in and truncated-BPTT chunks.

Both are pure functions on arrays and pytrees, built on the public ``lstm_scan``;
``lstm_scan`` validates shapes and dtypes, these functions only check their own
arguments (``burn_in``, ``chunk_length``, ``layout``).

Stored-state layouts (``[*B, T, L, H]``):

- ``"after"``: the state after every step. ``jaxlstm.LSTM`` in recurrent mode
  returns it, and a step-mode rollout's ``("next", state)`` stacked over time
  is the same thing.
- ``"before"``: the state each step started from, as torchrl stores it under
  the input keys (``recurrent_state_h``/``_c``) when a collector runs a policy
  step by step. torchrl's recurrent mode (and ``bridge.LSTMModule``) reads
  this layout only at each trajectory's first step, so a tensor that is zero
  elsewhere serves as well.

torchrl's recurrent-mode *outputs* (``("next", state)`` zero except at each
trajectory's last step) cannot seed chunks that start mid-trajectory: the
state there was never written. Store the input states (``"before"``) or
jaxlstm's per-step states (``"after"``) instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from ._scan import lstm_scan
from ._state import LSTMState

StateLayout = Literal["after", "before"]


def _state_batch(state: LSTMState, x: jax.Array, name: str) -> bool:
    """True when ``state`` is per step ``[*B, T, L, H]``, False for ``[*B, L, H]``."""
    if not isinstance(state, LSTMState):
        raise TypeError(
            f"{name} must be a jaxlstm.LSTMState(h=..., c=...). Got {type(state).__name__}."
        )
    batch_ndim = x.ndim - 2  # x is [*B, T, I]
    if state.h.ndim == batch_ndim + 3:
        return True
    if state.h.ndim == batch_ndim + 2:
        return False
    raise ValueError(
        f"{name} must have shape [*B, L, H] or [*B, T, L, H] for x of shape [*B, T, I]="
        f"{tuple(x.shape)}. Got {name}.h.shape={tuple(state.h.shape)}."
    )


def _time_slice(a: jax.Array | None, start: int, stop: int, trailing: int) -> jax.Array | None:
    """``a[..., start:stop, <trailing>]``: slices the time axis, ``trailing`` axes from the end."""
    if a is None:
        return None
    axis = a.ndim - 1 - trailing
    return jax.lax.slice_in_dim(a, start, stop, axis=axis)


def lstm_burn_in(
    params: Mapping[str, Any],
    x: jax.Array,
    state: LSTMState | None,
    is_init: jax.Array | None = None,
    *,
    burn_in: int,
    **scan_kwargs: Any,
) -> tuple[jax.Array, LSTMState]:
    """R2D2 burn-in: the first ``burn_in`` steps without gradient, the rest with.

    Runs ``lstm_scan`` over ``x[..., :burn_in, :]`` from ``state`` under
    ``jax.lax.stop_gradient`` (parameters, inputs and stored state alike), then
    over the remaining steps from the burnt-in state, which is also cut from
    the gradient. Outputs and states equal one unsplit ``lstm_scan`` pass.

    Args:
      params: LSTM parameters, as for ``lstm_scan``.
      x: inputs ``[*B, T, I]``.
      state: the stored state, in one of two layouts: ``[*B, L, H]``, the state
        before step 0 (jaxlstm's layout); or ``[*B, T, L, H]``, the state stored
        with every step, torchrl's layout (``"before"`` in this module's
        docstring): step 0 starts from ``state[..., 0, :, :]`` and, as in
        torchrl's recurrent mode, every step where ``is_init`` is true loads
        its stored state (zeros elsewhere are fine). None is zeros.
      is_init: bool ``[*B, T]`` (or ``[*B, T, 1]``); None means no resets.
      burn_in: k, with ``0 <= k < T``: the number of leading steps that only
        warm the state up.
      **scan_kwargs: ``reset_state`` (jaxlstm layout only), ``dtype``,
        ``precision``, ``unroll``, ``remat``, ``dropout_rate``/``dropout_rng``
        and ``input_projection``, passed to both ``lstm_scan`` calls.

    Returns:
      ``(y [*B, T, H], states [*B, T, L, H])`` as ``lstm_scan`` returns them;
      the first ``k`` steps carry no gradient. A loss usually reads
      ``y[..., k:, :]``.

    Raises:
      ValueError: ``burn_in`` outside ``[0, T)``, a ``state`` of neither
        layout, or ``reset_state`` together with a per-step ``state``.
    """
    if x.ndim < 2:
        raise ValueError(f"x must have shape [*B, T, I]. Got x.shape={tuple(x.shape)}.")
    steps = x.shape[-2]
    if not isinstance(burn_in, int) or not 0 <= burn_in < steps:
        raise ValueError(
            f"burn_in must be an int with 0 <= burn_in < T={steps} (at least one step must "
            f"be trained). Got burn_in={burn_in!r}."
        )
    reset_state = scan_kwargs.pop("reset_state", None)
    if state is not None and _state_batch(state, x, "state"):
        if reset_state is not None:
            raise ValueError(
                "reset_state must be None when state is per step [*B, T, L, H]: each "
                "trajectory start loads its stored state. Got both."
            )
        # torchrl's stored layout: start from step 0, reload the stored state at every reset.
        reset_state = state
        state = jax.tree.map(lambda a: a[..., 0, :, :], state)
    per_step_reset = reset_state is not None and _state_batch(reset_state, x, "reset_state")
    dropout_rng = scan_kwargs.pop("dropout_rng", None)
    if dropout_rng is not None:
        burn_rng, train_rng = jax.random.split(dropout_rng)
    else:
        burn_rng = train_rng = None

    def segment(start, stop):
        return (
            _time_slice(x, start, stop, 1),
            _time_slice(
                is_init, start, stop, 1 if is_init is not None and is_init.ndim == x.ndim else 0
            ),
            (
                LSTMState(*(_time_slice(a, start, stop, 2) for a in reset_state))
                if per_step_reset
                else reset_state
            ),
        )

    if burn_in == 0:
        return lstm_scan(
            params, x, state, is_init, reset_state, dropout_rng=dropout_rng, **scan_kwargs
        )
    x_b, init_b, reset_b = segment(0, burn_in)
    # No gradient reaches the burn-in: not through the parameters, the inputs
    # or the stored state (R2D2 treats the stored state as data).
    y_b, states_b = jax.lax.stop_gradient(
        lstm_scan(params, x_b, state, init_b, reset_b, dropout_rng=burn_rng, **scan_kwargs)
    )
    start_state = jax.tree.map(lambda a: a[..., -1, :, :], states_b)
    x_t, init_t, reset_t = segment(burn_in, steps)
    y_t, states_t = lstm_scan(
        params, x_t, start_state, init_t, reset_t, dropout_rng=train_rng, **scan_kwargs
    )
    y = jnp.concatenate([y_b.astype(y_t.dtype), y_t], axis=-2)
    states = jax.tree.map(
        lambda a, b: jnp.concatenate([a.astype(b.dtype), b], axis=-3), states_b, states_t
    )
    return y, LSTMState(*states)


class Chunks(NamedTuple):
    """Fixed-length chunks of ``[*B, T]`` trajectories for truncated BPTT.

    ``C = ceil(T / chunk_length)`` chunks per row; the last one is padded.
    Flatten ``[*B, C]`` into one batch axis to train on chunks independently.
    """

    data: Any  # pytree, leaves [*B, C, Tc, ...]: the caller's per-step arrays, zero-padded
    is_init: jax.Array  # shape=[*B, C, Tc], bool: the original resets; False on padding
    state: LSTMState  # [*B, C, L, H]: the state before each chunk's first step
    mask: jax.Array  # shape=[*B, C, Tc], bool: True on real steps, False on padding


def split_chunks(
    data: Any,
    is_init: jax.Array,
    states: LSTMState,
    chunk_length: int,
    *,
    initial_state: LSTMState | None = None,
    layout: StateLayout = "after",
) -> Chunks:
    """Cuts ``[*B, T]`` trajectories into chunks of ``chunk_length`` steps with their start states.

    Each chunk starts from the stored state of the step before it (the R2D2
    stored-state scheme), so running the LSTM over every chunk independently
    gives the same outputs as one pass over the whole row, while gradients
    stop at chunk boundaries. ``is_init`` keeps the original resets: a chunk
    that starts mid-episode is not a reset (its first step continues from the
    stored state); one that starts an episode is.

    Args:
      data: a pytree of per-step arrays ``[*B, T, ...]`` (observations,
        actions, ...); every leaf is chunked the same way.
      is_init: bool ``[*B, T]`` (or ``[*B, T, 1]``).
      states: the per-step states ``[*B, T, L, H]`` in ``layout``.
      chunk_length: Tc >= 1.
      initial_state: the state before step 0, ``[*B, L, H]``; only for
        ``layout="after"`` (None is zeros). With ``"before"`` it is
        ``states[..., 0, :, :]``.
      layout: ``"after"`` (jaxlstm's recurrent-mode states, the state after
        each step) or ``"before"`` (torchrl's stored input states).

    Returns:
      ``Chunks`` with leaves ``[*B, C, Tc, ...]``, ``is_init``/``mask``
      ``[*B, C, Tc]`` and start states ``[*B, C, L, H]``.

    Raises:
      ValueError: a bad ``chunk_length`` or ``layout``, or arrays whose
        ``[*B, T]`` differ from ``is_init``'s.
    """
    if layout not in ("after", "before"):
        raise ValueError(f"layout must be 'after' or 'before'. Got {layout!r}.")
    if not isinstance(chunk_length, int) or chunk_length < 1:
        raise ValueError(f"chunk_length must be an int >= 1. Got {chunk_length!r}.")
    if not isinstance(states, LSTMState):
        raise TypeError(
            f"states must be a jaxlstm.LSTMState(h=..., c=...). Got {type(states).__name__}."
        )
    if layout == "before" and initial_state is not None:
        raise ValueError(
            "initial_state must be None with layout='before' (the state before "
            "step 0 is states[..., 0, :, :]). Got an initial_state."
        )
    if is_init.ndim >= 2 and is_init.shape[-1] == 1 and is_init.ndim == states.h.ndim - 1:
        is_init = is_init[..., 0]
    lead = tuple(is_init.shape)
    if len(lead) < 1:
        raise ValueError(f"is_init must have shape [*B, T]. Got is_init.shape={lead}.")
    steps = lead[-1]
    if tuple(states.h.shape[:-2]) != lead or tuple(states.c.shape[:-2]) != lead:
        raise ValueError(
            f"states must have shape [*B, T, L, H] with [*B, T]={lead} (is_init's shape). "
            f"Got states.h.shape={tuple(states.h.shape)}, states.c.shape={tuple(states.c.shape)}."
        )
    for path, leaf in jax.tree_util.tree_leaves_with_path(data):
        if tuple(leaf.shape[: len(lead)]) != lead:
            raise ValueError(
                f"data{jax.tree_util.keystr(path)} must have shape [*B, T, ...] with [*B, T]="
                f"{lead} (is_init's shape). Got {tuple(leaf.shape)}."
            )
    num_chunks = -(-steps // chunk_length)
    pad = num_chunks * chunk_length - steps
    axis = len(lead) - 1

    def chunk(a: jax.Array) -> jax.Array:
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, pad)
        a = jnp.pad(a, widths)
        return jnp.reshape(a, a.shape[:axis] + (num_chunks, chunk_length) + a.shape[axis + 1 :])

    starts = jnp.arange(num_chunks) * chunk_length
    if layout == "before":
        start_state = jax.tree.map(lambda a: jnp.take(a, starts, axis=axis), states)
    else:
        if initial_state is None:
            initial_state = jax.tree.map(lambda a: jnp.zeros_like(a[..., 0, :, :]), states)
        # The state before chunk c is the state after step c * Tc - 1.
        prev = jax.tree.map(lambda a: jnp.take(a, starts[1:] - 1, axis=axis), states)
        start_state = jax.tree.map(
            lambda s0, rest: jnp.concatenate(
                [jnp.expand_dims(s0, axis).astype(rest.dtype), rest], axis=axis
            ),
            initial_state,
            prev,
        )
    mask = chunk(jnp.ones(lead, bool))
    return Chunks(
        jax.tree.map(chunk, data), chunk(jnp.asarray(is_init, bool)), LSTMState(*start_state), mask
    )
