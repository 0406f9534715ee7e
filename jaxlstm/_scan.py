"""The time loop: one ``lax.scan`` over a stacked LSTM, with reset masks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp

from ._cell import lstm_cell, project
from ._checks import check_input, check_state, normalize_is_init
from ._params import layer_weights, lstm_dims, unwrap_params
from ._state import LSTMState

InputProjection = Literal["auto", "per_step", "hoisted"]


def default_input_projection() -> str:
    """Where layer 0's input projection runs, chosen per backend from measurements.

    On XLA:CPU, one large ``[T*N, I] x [I, 4H]`` matmul before the loop plus the
    time-major re-layout cost more than they save (``benchmarks/`` measures
    it); on GPU/TPU hoisting it out of the loop is what cuDNN does.
    """
    return "per_step" if jax.default_backend() == "cpu" else "hoisted"


def lstm_scan(
    params: Mapping[str, Any],
    x: jax.Array,
    state: LSTMState | None = None,
    is_init: jax.Array | None = None,
    reset_state: LSTMState | None = None,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    dtype: Any = None,
    precision: Any = None,
    unroll: int | bool = 1,
    remat: bool = False,
    input_projection: InputProjection = "auto",
) -> tuple[jax.Array, LSTMState]:
    """Runs a stacked LSTM over a sequence, resetting the state where ``is_init``.

    Reset rule: before the cell runs at step ``t``, wherever ``is_init[..., t]``
    is true the carried state is replaced by ``reset_state`` at ``t`` (zeros when
    ``reset_state`` is None). Resets are a mask inside the scan body, so one
    compiled program serves every reset pattern at the same cost.

    Args:
      params: ``{"params": {...}}`` or the inner dict, in ``torch.nn.LSTM``'s
        names and layout (see ``jaxlstm.params_from_torch_state_dict``).
      x: inputs ``[*B, T, I]``; time is the last batch axis.
      state: state before step 0, ``LSTMState`` of ``[*B, L, H]``; None is zeros.
      is_init: bool ``[*B, T]`` or ``[*B, T, 1]`` (integer 0/1 accepted); None
        means no resets.
      reset_state: what a reset loads: ``[*B, L, H]`` (the same at every step)
        or ``[*B, T, L, H]`` (per step); None is zeros.
      dropout_rate: dropout on each layer's output except the last, as torch.
      dropout_rng: PRNG key; dropout is applied only when it is given and
        ``dropout_rate > 0``.
      dtype: matmul dtype (e.g. ``jnp.bfloat16``). Gate nonlinearities and the
        carried state stay in the state's dtype (float32 by default).
      precision: ``lax.dot_general`` precision of the matmuls.
      unroll: passed to ``lax.scan``.
      remat: recompute each step in the backward pass instead of storing its
        activations (``jax.checkpoint`` on the scan body).
      input_projection: ``"per_step"`` projects each step's input inside the
        loop; ``"hoisted"`` projects layer 0's inputs for all steps first;
        ``"auto"`` picks per backend (``default_input_projection``).

    Returns:
      ``(y, states)``: ``y [*B, T, H]`` in the matmul dtype, and the state after
      every step, ``LSTMState`` of ``[*B, T, L, H]``; ``states.h[..., -1, :, :]``
      is the true final state even when a row holds several trajectories.
    """
    input_size, hidden, num_layers, _ = lstm_dims(params)
    check_input(x, input_size, recurrent=True)
    batch_shape, steps = tuple(x.shape[:-2]), x.shape[-2]
    n = math.prod(batch_shape)

    mm_dtype = (
        jnp.dtype(dtype)
        if dtype is not None
        else jnp.result_type(x.dtype, jnp.asarray(unwrap_params(params)["weight_ih_l0"]).dtype)
    )
    if state is None:
        state_dtype = jnp.promote_types(mm_dtype, jnp.float32)
        zeros = jnp.zeros(batch_shape + (num_layers, hidden), state_dtype)
        state = LSTMState(h=zeros, c=zeros)
    check_state(state, batch_shape, num_layers, hidden)
    state_dtype = jnp.result_type(state.h.dtype, state.c.dtype)

    resets = None
    if is_init is not None:
        resets = normalize_is_init(is_init, batch_shape + (steps,))
        resets = jnp.swapaxes(jnp.reshape(resets, (n, steps)), 0, 1)  # [T, N]
    per_step_reset = None
    const_reset = None
    if reset_state is not None:
        if isinstance(reset_state, LSTMState) and reset_state.h.ndim == len(batch_shape) + 3:
            check_state(
                reset_state,
                batch_shape + (steps,),
                num_layers,
                hidden,
                name="reset_state",
                layout="[*B, T, L, H]",
            )
            per_step_reset = jax.tree.map(
                lambda a: jnp.swapaxes(
                    jnp.reshape(a.astype(state_dtype), (n, steps, num_layers, hidden)), 0, 1
                ),
                reset_state,
            )
        else:
            check_state(reset_state, batch_shape, num_layers, hidden, name="reset_state")
            const_reset = jax.tree.map(
                lambda a: jnp.reshape(a.astype(state_dtype), (n, num_layers, hidden)), reset_state
            )

    weights = layer_weights(params, mm_dtype)
    if input_projection == "auto":
        input_projection = default_input_projection()
    if input_projection not in ("per_step", "hoisted"):
        raise ValueError(
            f"input_projection must be 'auto', 'per_step' or 'hoisted'. Got {input_projection!r}."
        )

    xs_x = jnp.swapaxes(jnp.reshape(x, (n, steps, input_size)), 0, 1)  # [T, N, I]
    if input_projection == "hoisted":
        first = weights[0]
        gates_x = project(
            xs_x.astype(mm_dtype), first.weight_ih, precision=precision, accum_dtype=state_dtype
        )
        if first.bias is not None:
            gates_x = gates_x + jax.lax.broadcast_to_rank(first.bias.astype(state_dtype), 3)
        xs_x = gates_x  # [T, N, 4H]

    masks = None
    if dropout_rng is not None and dropout_rate > 0.0 and num_layers > 1:
        keep = 1.0 - dropout_rate
        masks = jax.random.bernoulli(dropout_rng, keep, (num_layers - 1, steps, n, hidden))
        masks = jnp.swapaxes(masks, 0, 1).astype(mm_dtype) / jnp.asarray(keep, mm_dtype)

    h0 = jnp.reshape(state.h.astype(state_dtype), (n, num_layers, hidden))
    c0 = jnp.reshape(state.c.astype(state_dtype), (n, num_layers, hidden))
    carry0 = tuple((h0[:, k], c0[:, k]) for k in range(num_layers))

    def step(carry, inputs):
        x_t, reset_t, reset_to, mask_t = inputs
        if reset_to is None:
            reset_to = const_reset
        if reset_t is not None:
            keep_old = ~reset_t[:, None]
            if reset_to is None:
                carry = tuple(
                    (jnp.where(keep_old, h, 0), jnp.where(keep_old, c, 0)) for h, c in carry
                )
            else:
                carry = tuple(
                    (
                        jnp.where(keep_old, h, reset_to.h[:, k]),
                        jnp.where(keep_old, c, reset_to.c[:, k]),
                    )
                    for k, (h, c) in enumerate(carry)
                )
        layer_in = x_t
        new_carry = []
        for k, (w, (h, c)) in enumerate(zip(weights, carry)):
            if k == 0 and input_projection == "hoisted":
                h, c = lstm_cell(w, None, h, c, input_gates=layer_in, precision=precision)
            else:
                h, c = lstm_cell(w, layer_in, h, c, precision=precision)
            new_carry.append((h, c))
            layer_in = h.astype(mm_dtype)
            if mask_t is not None and k < num_layers - 1:
                layer_in = layer_in * mask_t[k]
        new_carry = tuple(new_carry)
        h_all = jnp.stack([h for h, _ in new_carry], axis=1)  # [N, L, H]
        c_all = jnp.stack([c for _, c in new_carry], axis=1)
        return new_carry, (layer_in, h_all, c_all)

    if remat:
        step = jax.checkpoint(step, prevent_cse=False)
    _, (ys, hs, cs) = jax.lax.scan(
        step, carry0, (xs_x, resets, per_step_reset, masks), length=steps, unroll=unroll
    )

    def batch_major(a):
        return jnp.reshape(jnp.swapaxes(a, 0, 1), batch_shape + (steps,) + a.shape[2:])

    return batch_major(ys), LSTMState(h=batch_major(hs), c=batch_major(cs))
