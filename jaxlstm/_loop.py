"""The time loop over a stack of layers of any cell, with resets, and its backward.

Nothing here is LSTM-specific: the cell (``_cell.py``) supplies the step, its
parameter table and its VJP; this module runs it over time, layer after
layer, on prepared (``_prepare.py``) time-major arrays.

Layers run one after another over the whole sequence (as cuDNN does): layer
``k + 1`` reads layer ``k``'s outputs ``[T, N, H]``, so dropout between
layers is one multiply per layer and each layer is one scan whose backward
is a reverse scan that carries only the carry's gradient.

Reset rule: before the cell runs at step ``t``, wherever ``resets[t]`` is
true the carry is replaced by the reset target (one ``where`` over the
carry). The target is constant ``[N, W]`` or per step ``[T, N, W]``, an
explicit static kind.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Backward = Literal["custom", "auto"]


class LayerSpec(NamedTuple):
    """Static configuration of one layer's loop (hashable: a ``custom_vjp`` static arg)."""

    cell: Any
    compute_dtype: Any  # matmul dtype
    carry_dtype: Any  # dtype of the carry and the gate math (float32 or wider)
    per_step_reset: bool  # reset target [T, N, W] (True) or [N, W] (False)
    hoisted: bool  # input projection before the loop (True) or inside it
    unroll: int | bool
    remat: bool
    precision: Any
    target_grad: bool = True  # whether the reset target needs a gradient (False: zeros)


@jax.custom_vjp
def _reset(reset: jax.Array, target: jax.Array, value: jax.Array) -> jax.Array:
    """``where(reset[:, None], target, value)`` for ``reset [N]``, ``target, value [N, W]``.

    Its VJP keeps only the ``[N]`` mask: differentiating a plain ``jnp.where`` keeps
    the mask broadcast to ``[N, W]`` for every step (two ``pred[T, N, H]`` stores per
    step and layer in the HLO of JAX's automatic backward).
    """
    return jnp.where(reset[:, None], target, value)


def _reset_fwd(reset, target, value):
    return _reset(reset, target, value), reset


def _reset_bwd(reset, g):
    r = reset[:, None]
    return None, jnp.where(r, g, 0), jnp.where(r, 0, g)


_reset.defvjp(_reset_fwd, _reset_bwd)


def _select(reset_t: jax.Array, target: tuple, carry: tuple) -> tuple:
    # One select per carry array: the reset target where `reset_t` [N], else the carry.
    return tuple(_reset(reset_t, t, c) for c, t in zip(carry, target))


def _targets_at(spec: LayerSpec, target: tuple, t_inputs: Any) -> tuple:
    return t_inputs if spec.per_step_reset else target


def _forward(spec, weights, xs, carry0, resets, target, *, cast_in_body: bool, save: bool):
    """Runs the layer over time.

    Returns ``(carries, residuals)``: the carry after every step (a tuple of
    ``[T, N, W]``) and, when ``save``, the cell's per-step residuals.
    """
    cell = spec.cell
    accum = spec.carry_dtype

    def mm_weights():
        return cell.cast(weights, spec.compute_dtype)

    if spec.hoisted:
        xs_in = cell.project_input(mm_weights(), xs, precision=spec.precision, accum=accum)
    else:
        xs_in = xs
    # The automatic backward differentiates the scan body: casting the float32
    # weights inside it makes each step's weight cotangent float32 before JAX
    # sums them over time (XLA hoists the loop-invariant cast out of the loop).
    w_outside = None if cast_in_body else mm_weights()

    def body(carry, inputs):
        x_t, reset_t, target_t = inputs
        w = mm_weights() if cast_in_body else w_outside
        carry = _select(reset_t, _targets_at(spec, target, target_t), carry)
        gx = (
            x_t
            if spec.hoisted
            else cell.project_input(w, x_t, precision=spec.precision, accum=accum)
        )
        new_carry, residual = cell.step(w, gx, carry, precision=spec.precision)
        return new_carry, (new_carry, residual if save else None)

    if spec.remat:
        body = jax.checkpoint(body, prevent_cse=False)
    per_step_target = target if spec.per_step_reset else None
    steps = xs.shape[0]
    if steps == 1:
        # A sequence of one step (step mode) needs no loop.
        _, out = body(carry0, jax.tree.map(lambda a: a[0], (xs_in, resets, per_step_target)))
        return jax.tree.map(lambda a: a[None], out)
    _, out = lax.scan(body, carry0, (xs_in, resets, per_step_target), unroll=spec.unroll)
    return out


def _layer_auto(spec, weights, xs, carry0, resets, target):
    carries, _ = _forward(spec, weights, xs, carry0, resets, target, cast_in_body=True, save=False)
    return carries


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _layer_custom(spec, weights, xs, carry0, resets, target):
    carries, _ = _forward(spec, weights, xs, carry0, resets, target, cast_in_body=False, save=False)
    return carries


def _layer_custom_fwd(spec, weights, xs, carry0, resets, target):
    # With remat only the carries (the outputs anyway) are kept; the backward
    # recomputes each step's residual from them.
    carries, residuals = _forward(
        spec, weights, xs, carry0, resets, target, cast_in_body=False, save=not spec.remat
    )
    return carries, (weights, xs, carry0, resets, target, carries, residuals)


def _layer_custom_bwd(spec, saved, d_carries):
    weights, xs, carry0, resets, target, carries, residuals = saved
    cell = spec.cell
    w = cell.cast(weights, spec.compute_dtype)
    accum = spec.carry_dtype

    def started_from(t, reset_t, target_t):
        # The carry step t started from, after its reset, read from the saved
        # carries (no shifted copy of them is made).
        before = tuple(
            jnp.where(
                t == 0, c0, lax.dynamic_index_in_dim(c, jnp.maximum(t - 1, 0), keepdims=False)
            )
            for c0, c in zip(carry0, carries)
        )
        return _select(reset_t, target_t, before)

    # With remat the weight gradients are summed step by step (in float32), so that
    # every step's gate gradients are never all kept; otherwise they are one matmul
    # over all steps after the loop.
    in_loop = spec.remat

    def body(state, inputs):
        d_carry, dw_sum = state
        t, d_out_t, residual_t, new_t, x_t, reset_t, target_t = inputs
        prev_t = started_from(t, reset_t, _targets_at(spec, target, target_t))
        if spec.remat:
            gx = cell.project_input(w, x_t, precision=spec.precision, accum=accum)
            _, residual_t = cell.step(w, gx, prev_t, precision=spec.precision)
        d_new = tuple(a + b for a, b in zip(d_carry, d_out_t))
        d_pre, d_prev = cell.step_backward(
            w, residual_t, prev_t, new_t, d_new, precision=spec.precision
        )
        # A reset step's carry came from the target, not from the step before.
        keep = ~reset_t[:, None]
        d_carry = tuple(jnp.where(keep, d, 0) for d in d_prev)
        d_prev_out = d_prev if spec.target_grad else None
        if in_loop:
            dw_t, dx_t = cell.weight_grads(w, x_t, prev_t, d_pre, precision=spec.precision)
            dw_sum = jax.tree.map(jnp.add, dw_sum, dw_t)
            return (d_carry, dw_sum), (None, d_prev_out, dx_t)
        return (d_carry, dw_sum), (d_pre, d_prev_out, None)

    zeros = tuple(jnp.zeros_like(c0, dtype=accum) for c0 in carry0)
    dw_sum = None
    if in_loop:
        dw_sum = jax.tree.map(
            lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)), weights
        )
    steps, n = xs.shape[:2]
    (d_carry0, dw_sum), (d_pre, d_prev, dxs) = lax.scan(
        body,
        (zeros, dw_sum),
        (
            jnp.arange(steps),
            d_carries,
            residuals,
            carries,
            xs,
            resets,
            target if spec.per_step_reset else None,
        ),
        reverse=True,
        unroll=spec.unroll,
    )
    if in_loop:
        dw = dw_sum
    else:
        rows = steps * n

        def flat(a):
            return jnp.reshape(a, (rows,) + a.shape[2:])

        mask = resets[:, :, None]
        # The carries every step started from, for the weight gradients (one matmul).
        prev = tuple(jnp.concatenate([c0[None], c[:-1]], axis=0) for c0, c in zip(carry0, carries))
        per_step_target = target if spec.per_step_reset else tuple(t[None] for t in target)
        prev = tuple(jnp.where(mask, t, p) for t, p in zip(per_step_target, prev))
        dw, dxs = cell.weight_grads(
            w, flat(xs), tuple(flat(p) for p in prev), flat(d_pre), precision=spec.precision
        )
    dw = jax.tree.map(lambda g, p: g.astype(p.dtype), dw, weights)
    dxs = jnp.reshape(dxs, xs.shape).astype(xs.dtype)
    if spec.target_grad:
        d_target = tuple(jnp.where(resets[:, :, None], d, 0) for d in d_prev)
        if not spec.per_step_reset:
            d_target = tuple(jnp.sum(d, axis=0) for d in d_target)
        d_target = tuple(d.astype(t.dtype) for d, t in zip(d_target, target))
    else:
        d_target = tuple(jnp.zeros_like(t) for t in target)
    d_carry0 = tuple(d.astype(c.dtype) for d, c in zip(d_carry0, carry0))
    return dw, dxs, d_carry0, None, d_target


_layer_custom.defvjp(_layer_custom_fwd, _layer_custom_bwd)


def run_layer(spec: LayerSpec, weights, xs, carry0, resets, target, *, backward: Backward):
    """One layer over time: the carry after every step, a tuple of ``[T, N, W]``.

    Args:
      spec: static configuration.
      weights: the layer's weights (stored dtype; cast to ``spec.compute_dtype``).
      xs: the layer's inputs ``[T, N, I]``.
      carry0: the carry before step 0, a tuple of ``[N, W]`` in the carry dtype.
      resets: bool ``[T, N]``.
      target: what a reset loads, a tuple of ``[N, W]`` or ``[T, N, W]``.
      backward: ``"custom"`` (the cell's hand-written VJP, weight gradients
        after the loop) or ``"auto"`` (JAX differentiates the scan).
    """
    if backward == "custom":
        return _layer_custom(spec, weights, xs, carry0, resets, target)
    if backward == "auto":
        return _layer_auto(spec, weights, xs, carry0, resets, target)
    raise ValueError(f"backward must be 'custom' or 'auto'. Got {backward!r}.")


def run_stack(
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
    """Runs every layer, with dropout between layers.

    Args:
      xs: ``[T, N, I]`` in the compute dtype.
      carry0: tuple of ``[N, L, W]`` (one per carry array).
      resets: bool ``[T, N]``.
      target: tuple of ``[N, L, W]`` (constant) or ``[T, N, L, W]`` (per step).
      dropout_masks: ``[L - 1, T, N, W_y]`` scaled keep masks, or None.
      target_grad: False when the target is the implicit zeros, whose gradient
        nobody reads (the custom backward then does not compute it).

    Returns:
      ``(ys, carries)``: the last layer's outputs ``[T, N, W_y]`` in the
      compute dtype and every layer's carry after every step, a tuple of
      ``[T, N, L, W]``.
    """
    spec = LayerSpec(
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
    layer_in = xs
    per_layer = []
    axis = 2 if per_step_reset else 1
    for k, weights in enumerate(layer_weights):
        carries = run_layer(
            spec,
            weights,
            layer_in,
            tuple(c[:, k] for c in carry0),
            resets,
            tuple(lax.index_in_dim(t, k, axis, keepdims=False) for t in target),
            backward=backward,
        )
        per_layer.append(carries)
        layer_in = carries[0].astype(compute_dtype)
        if dropout_masks is not None and k < len(layer_weights) - 1:
            layer_in = layer_in * dropout_masks[k]
    stacked = tuple(jnp.stack(arrays, axis=2) for arrays in zip(*per_layer))
    return layer_in, stacked
