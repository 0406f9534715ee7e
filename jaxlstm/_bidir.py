"""Bidirectional layers on the one-direction loop (``_loop.run_layer``).

torchrl 0.14.1's recurrent mode runs every trajectory of a row (a segment
that starts at step 0 or where ``is_init``) through a bidirectional layer on
its own: the reverse direction starts at the trajectory's last step, from the
state stored at the trajectory's first step (measured: its output equals
``nn.LSTM(bidirectional=True)`` run per trajectory from that state).

Over flipped time that is the ordinary loop: its resets sit at trajectory
ends, and its per-step reset target is the target at the trajectory's first
step, gathered with one cumulative max over time. No per-trajectory Python
loop and no padding: one compiled program for every reset pattern, as in the
forward direction.

Layout, as torch's: state slot ``2 * k + d`` holds layer ``k``'s direction
``d`` (0 forward, 1 reverse); layer ``k + 1`` reads ``[forward, reverse]``
outputs concatenated on the feature axis.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ._loop import Backward, LayerSpec, run_layer


def trajectory_starts(resets: jax.Array) -> jax.Array:
    """The first step of each step's trajectory: int32 ``[T, N]`` from bool ``[T, N]``."""
    steps = resets.shape[0]
    index = lax.broadcasted_iota(jnp.int32, resets.shape, 0)
    del steps
    return lax.cummax(jnp.where(resets, index, 0), axis=0)


def trajectory_ends(resets: jax.Array) -> jax.Array:
    """Bool ``[T, N]``: the step is a trajectory's last (the next one resets, or it is the last)."""
    return jnp.concatenate([resets[1:], jnp.ones_like(resets[:1])], axis=0)


def at_starts(a: jax.Array, starts: jax.Array) -> jax.Array:
    """``a[starts[t, n], n]`` for ``a [T, N, W]``: each step's value at its trajectory's start."""
    return jnp.take_along_axis(a, starts[:, :, None], axis=0)


def _reverse_resets_and_targets(resets, carry0, target, per_step):
    """The reverse direction's resets and per-step targets, in flipped time.

    A trajectory's reverse pass starts from what its forward pass starts from:
    the reset target at its first step where that step resets, else (the
    row's first trajectory without a reset) the carry before step 0.
    """
    steps = resets.shape[0]
    starts = trajectory_starts(resets)
    start_resets = jnp.take_along_axis(resets, starts, axis=0)[:, :, None]
    targets = []
    for c0, t in zip(carry0, target):
        if per_step:
            t = at_starts(t, starts)
        else:
            t = jnp.broadcast_to(t[None], (steps,) + t.shape)
        targets.append(jnp.flip(jnp.where(start_resets, t, c0[None]), axis=0))
    return jnp.flip(trajectory_ends(resets), axis=0), tuple(targets)


def run_bidirectional_stack(
    cell: Any,
    layer_weights: tuple,
    xs: jax.Array,
    carry0: tuple,
    resets: jax.Array,
    target: tuple,
    *,
    per_step_reset: bool,
    compute_dtype: Any,
    carry_dtype: Any,
    hoisted: bool,
    unroll: int | bool,
    remat: bool,
    precision: Any,
    dropout_masks: jax.Array | None,
    backward: Backward,
    target_grad: bool = True,
) -> tuple[jax.Array, tuple]:
    """Every layer, both directions, with dropout between layers (see ``run_stack``).

    Args:
      layer_weights: per layer, ``(forward weights, reverse weights)``.
      xs: ``[T, N, I]`` in the compute dtype.
      carry0: tuple of ``[N, 2L, W]`` (slot ``2k + d``).
      resets: bool ``[T, N]``.
      target: tuple of ``[N, 2L, W]`` (constant) or ``[T, N, 2L, W]`` (per step).
      dropout_masks: ``[L - 1, T, N, 2 W_y]`` scaled keep masks, or None.
      target_grad: whether the forward direction's reset target needs a gradient
        (see ``run_stack``).

    Returns:
      ``(ys, carries)``: the last layer's ``[T, N, 2 W_y]`` (forward then
      reverse features) and every slot's carry after every step (the reverse
      direction's after it processed that step), a tuple of ``[T, N, 2L, W]``.
    """
    forward = LayerSpec(
        cell,
        compute_dtype,
        carry_dtype,
        per_step_reset,
        hoisted,
        unroll,
        remat,
        precision,
        target_grad,
    )
    # The reverse direction's initial carry enters only through its gathered
    # targets, so their gradient is always needed.
    reverse = forward._replace(per_step_reset=True, target_grad=True)
    axis = 2 if per_step_reset else 1
    layer_in = xs
    per_slot = []
    for k, (w_forward, w_reverse) in enumerate(layer_weights):
        outputs = []
        for direction, weights in enumerate((w_forward, w_reverse)):
            slot = 2 * k + direction
            c0 = tuple(c[:, slot] for c in carry0)
            tg = tuple(lax.index_in_dim(t, slot, axis, keepdims=False) for t in target)
            if direction == 0:
                carries = run_layer(forward, weights, layer_in, c0, resets, tg, backward=backward)
            else:
                resets_rev, tg_rev = _reverse_resets_and_targets(resets, c0, tg, per_step_reset)
                # Step 0 of the flipped sequence always resets, so c0 only enters
                # through the targets.
                carries = run_layer(
                    reverse,
                    weights,
                    jnp.flip(layer_in, axis=0),
                    c0,
                    resets_rev,
                    tg_rev,
                    backward=backward,
                )
                carries = tuple(jnp.flip(c, axis=0) for c in carries)
            per_slot.append(carries)
            outputs.append(carries[0])
        layer_in = jnp.concatenate(outputs, axis=-1).astype(compute_dtype)
        if dropout_masks is not None and k < len(layer_weights) - 1:
            layer_in = layer_in * dropout_masks[k]
    stacked = tuple(jnp.stack(arrays, axis=2) for arrays in zip(*per_slot))
    return layer_in, stacked


def reverse_states_at_ends(carries: tuple, resets: jax.Array) -> tuple:
    """torchrl's layout of the reverse slots: at a trajectory's last step, its reverse final state.

    torch's ``h_n`` for the reverse direction is its state after the
    trajectory's first step; torchrl writes ``h_n`` at the trajectory's last
    step. ``carries`` are ``[T, N, 2L, W]``; only odd slots change.
    """
    starts = trajectory_starts(resets)
    out = []
    for c in carries:
        steps, n, slots, width = c.shape
        flat = jnp.reshape(c, (steps, n, slots * width))
        gathered = jnp.reshape(at_starts(flat, starts), c.shape)
        is_reverse = (jnp.arange(slots) % 2 == 1)[None, None, :, None]
        out.append(jnp.where(is_reverse, gathered, c))
    return tuple(out)
