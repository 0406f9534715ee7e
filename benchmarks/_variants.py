"""Prototypes of other scan structures, measured against the current core.

These live here, not in ``jaxlstm/``: the lead decides what moves into the
core. They are single-layer, zero-reset versions of ``jaxlstm.lstm_scan``
(same math, same torch-layout parameters) that differ in one design choice:

- ``proj``: ``"per_step"`` (two matmuls per step, as the core on CPU),
  ``"per_gate"`` (eight ``[N, K] x [K, H]`` matmuls per step, one per gate and
  input, as Flax's ``LSTMCell`` and so the purejaxrl ``ScannedRNN`` do),
  ``"concat"`` (one matmul per step: ``concat([x_t, h]) @ W_cat^T`` with the
  weights concatenated once per call, outside the loop), or ``"hoisted"``
  (``x @ W_ih^T`` for all steps before the loop, as cuDNN does).
- ``vjp``: ``"autodiff"`` (JAX differentiates the scan: the weight gradients
  are accumulated inside the reverse loop, one ``[4H, N] x [N, K]`` product
  and a read-modify-write of the ``[4H, K]`` accumulator per step) or
  ``"custom"`` (a hand-written backward scan that only carries ``dh, dc``
  and emits the gate gradients; the weight gradients are then two large
  matmuls over all ``T*N`` rows, as cuDNN's backward does).
- ``layout``: gate order ``"ifgo"`` (torch's) or ``"ifog"`` (the three
  sigmoid gates contiguous, one sigmoid over ``3H`` and one tanh over ``H``).
- ``states``: ``"all"`` returns the state after every step (as the core does,
  ``[T, N, H]`` twice more); ``"final"`` returns only the final state.
- ``wlayout``: ``"nt"`` contracts torch's ``[4H, K]`` weights on their axis 1
  (as the core does); ``"nn"`` transposes them once per call, outside the
  loop, to ``[K, 4H]`` and runs plain ``a @ w`` matmuls in the loop.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._common import Bench, NotAvailable
from ._jax_impls import _step_runner, _train_runner, jitted
from ._workloads import Data, Workload


def _nt(a: jax.Array, w: jax.Array) -> jax.Array:
    """``a @ w.T`` for a torch-layout ``w [G, K]`` without materialising ``w.T``."""
    return lax.dot_general(a, w, (((a.ndim - 1,), (1,)), ((), ())))


def _nn(a: jax.Array, w: jax.Array) -> jax.Array:
    """``a @ w`` for ``w [G, K]``: contracts ``a``'s last axis with ``w``'s axis 0."""
    return lax.dot_general(a, w, (((a.ndim - 1,), (0,)), ((), ())))


def _mm(a: jax.Array, w: jax.Array, wlayout: str) -> jax.Array:
    """``a @ W^T`` for the torch-layout ``W``, given as ``W`` (nt) or as ``W^T`` (nn)."""
    return _nn(a, w) if wlayout == "nn" else _nt(a, w)


def _mm_back(d: jax.Array, w: jax.Array, wlayout: str) -> jax.Array:
    """``d @ W`` (the input gradient of ``a @ W^T``) for ``W`` given as in ``_mm``."""
    return _nt(d, w) if wlayout == "nn" else _nn(d, w)


def _gate_order(layout: str, hidden: int) -> np.ndarray | None:
    if layout == "ifgo":
        return None
    if layout == "ifog":
        h = np.arange(hidden)
        return np.concatenate([h, h + hidden, h + 3 * hidden, h + 2 * hidden])
    raise ValueError(f"layout must be 'ifgo' or 'ifog'. Got {layout!r}.")


def _activate(gates: jax.Array, layout: str) -> tuple[jax.Array, ...]:
    """Returns the activated gates ``(i, f, g, o)``."""
    hidden = gates.shape[-1] // 4
    if layout == "ifog":
        sig = jax.nn.sigmoid(gates[..., : 3 * hidden])
        i, f, o = jnp.split(sig, 3, axis=-1)
        return i, f, jnp.tanh(gates[..., 3 * hidden :]), o
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def _pack(i, f, g, o, layout: str) -> jax.Array:
    return jnp.concatenate([i, f, o, g] if layout == "ifog" else [i, f, g, o], axis=-1)


def _prepare(params: dict, layout: str, proj: str, wlayout: str = "nt"):
    """Per-call weight preparation (outside the loop): bias sum, gate order, concat, layout."""
    p = params.get("params", params)
    w_ih, w_hh = p["weight_ih_l0"], p["weight_hh_l0"]
    bias = p["bias_ih_l0"] + p["bias_hh_l0"]
    order = _gate_order(layout, w_hh.shape[1])
    if order is not None:
        w_ih, w_hh, bias = w_ih[order], w_hh[order], bias[order]
    if wlayout == "nn":
        w_ih, w_hh = w_ih.T, w_hh.T
    w_cat = _concat_weights(w_ih, w_hh, wlayout) if proj == "concat" else None
    return w_ih, w_hh, bias, w_cat


def _concat_weights(w_ih, w_hh, wlayout):
    return jnp.concatenate([w_ih, w_hh], axis=0 if wlayout == "nn" else 1)


def _forward_scan(
    w_ih,
    w_hh,
    bias,
    w_cat,
    x_tm,
    resets_tm,
    h0,
    c0,
    *,
    proj,
    layout,
    unroll,
    save_residuals,
    states,
    wlayout="nt",
):
    """The forward loop, time-major. Returns ``(ys, (h_T, c_T), per_step_or_residuals)``."""
    if proj == "hoisted":
        xs = _mm(x_tm, w_ih, wlayout) + bias  # [T, N, 4H]
    else:
        xs = x_tm

    def step(carry, inputs):
        h, c = carry
        x_t, reset_t = inputs
        keep = ~reset_t[:, None]
        h = jnp.where(keep, h, 0.0)
        c = jnp.where(keep, c, 0.0)
        if proj == "hoisted":
            gates = x_t + _mm(h, w_hh, wlayout)
        elif proj == "concat":
            gates = _mm(jnp.concatenate([x_t, h], axis=-1), w_cat, wlayout) + bias
        elif proj == "per_gate":
            # Four [N, K] x [K, H] products per input, as Flax's LSTMCell does.
            axis = 1 if wlayout == "nn" else 0
            gates = (
                jnp.concatenate(
                    [
                        _mm(x_t, wi, wlayout) + _mm(h, wh, wlayout)
                        for wi, wh in zip(
                            jnp.split(w_ih, 4, axis=axis), jnp.split(w_hh, 4, axis=axis)
                        )
                    ],
                    axis=-1,
                )
                + bias
            )
        else:
            gates = _mm(x_t, w_ih, wlayout) + _mm(h, w_hh, wlayout) + bias
        i, f, g, o = _activate(gates, layout)
        c_new = f * c + i * g
        tanh_c = jnp.tanh(c_new)
        h_new = o * tanh_c
        if save_residuals:
            out = (h_new, c, _pack(i, f, g, o, layout), tanh_c)
        elif states == "all":
            out = (h_new, h_new, c_new)
        else:
            out = (h_new,)
        return (h_new, c_new), out

    (h_t, c_t), outs = lax.scan(step, (h0, c0), (xs, resets_tm), unroll=unroll)
    return outs[0], (h_t, c_t), outs[1:]


def _hidden(w_hh, wlayout):
    return w_hh.shape[0] if wlayout == "nn" else w_hh.shape[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _lstm_custom(proj, layout, unroll, wlayout, w_ih, w_hh, bias, x_tm, resets_tm):
    w_cat = _concat_weights(w_ih, w_hh, wlayout) if proj == "concat" else None
    zeros = jnp.zeros((x_tm.shape[1], _hidden(w_hh, wlayout)), x_tm.dtype)
    ys, _, _ = _forward_scan(
        w_ih,
        w_hh,
        bias,
        w_cat,
        x_tm,
        resets_tm,
        zeros,
        zeros,
        proj=proj,
        layout=layout,
        unroll=unroll,
        save_residuals=False,
        states="final",
        wlayout=wlayout,
    )
    return ys


def _lstm_custom_fwd(proj, layout, unroll, wlayout, w_ih, w_hh, bias, x_tm, resets_tm):
    w_cat = _concat_weights(w_ih, w_hh, wlayout) if proj == "concat" else None
    zeros = jnp.zeros((x_tm.shape[1], _hidden(w_hh, wlayout)), x_tm.dtype)
    ys, _, (c_prev, acts, tanh_c) = _forward_scan(
        w_ih,
        w_hh,
        bias,
        w_cat,
        x_tm,
        resets_tm,
        zeros,
        zeros,
        proj=proj,
        layout=layout,
        unroll=unroll,
        save_residuals=True,
        states="final",
        wlayout=wlayout,
    )
    return ys, (w_ih, w_hh, x_tm, resets_tm, ys, c_prev, acts, tanh_c)


def _lstm_custom_bwd(proj, layout, unroll, wlayout, res, dys):
    w_ih, w_hh, x_tm, resets_tm, ys, c_prev, acts, tanh_c = res
    zeros = jnp.zeros_like(ys[0])

    def step(carry, inputs):
        dh, dc = carry
        dy_t, acts_t, tanh_c_t, c_prev_t, reset_t = inputs
        if layout == "ifog":
            i, f, o, g = jnp.split(acts_t, 4, axis=-1)
        else:
            i, f, g, o = jnp.split(acts_t, 4, axis=-1)
        dh = dh + dy_t
        do = dh * tanh_c_t
        dc = dc + dh * o * (1.0 - tanh_c_t * tanh_c_t)
        d_gates = _pack(
            dc * g * i * (1.0 - i),
            dc * c_prev_t * f * (1.0 - f),
            dc * i * (1.0 - g * g),
            do * o * (1.0 - o),
            layout,
        )
        keep = ~reset_t[:, None]
        dh_prev = jnp.where(keep, _mm_back(d_gates, w_hh, wlayout), 0.0)
        dc_prev = jnp.where(keep, dc * f, 0.0)
        return (dh_prev, dc_prev), d_gates

    _, d_gates = lax.scan(
        step, (zeros, zeros), (dys, acts, tanh_c, c_prev, resets_tm), reverse=True, unroll=unroll
    )
    # h entering step t, after its reset: the previous output, or zeros.
    h_prev = jnp.where(~resets_tm[..., None], jnp.concatenate([zeros[None], ys[:-1]], axis=0), 0.0)
    # The weight gradients over all T*N rows at once: two large matmuls.
    out = "kg" if wlayout == "nn" else "gk"
    d_w_hh = jnp.einsum(f"tng,tnk->{out}", d_gates, h_prev)
    d_w_ih = jnp.einsum(f"tng,tnk->{out}", d_gates, x_tm)
    d_bias = jnp.sum(d_gates, axis=(0, 1))
    d_x = _mm_back(d_gates, w_ih, wlayout)
    return d_w_ih, d_w_hh, d_bias, d_x, np.zeros(resets_tm.shape, jax.dtypes.float0)


_lstm_custom.defvjp(_lstm_custom_fwd, _lstm_custom_bwd)


def proto_forward(
    params,
    x,
    is_init,
    *,
    proj="per_step",
    vjp="autodiff",
    layout="ifgo",
    unroll=1,
    states="all",
    time_major=False,
    wlayout="nt",
):
    """A single-layer LSTM over ``x [B, T, I]`` with zero resets where ``is_init [B, T]``.

    Returns ``(y [B, T, H], h_all, c_all)`` (``states="all"``) or ``(y, h_T, c_T)``
    (``"final"``); with ``time_major`` the inputs and outputs are ``[T, B, ...]``
    and no transposes are done.
    """
    w_ih, w_hh, bias, w_cat = _prepare(params, layout, proj, wlayout)
    if time_major:
        x_tm, resets_tm = x, is_init
    else:
        x_tm, resets_tm = jnp.swapaxes(x, 0, 1), jnp.swapaxes(is_init, 0, 1)

    def out_layout(a):
        return a if time_major else jnp.swapaxes(a, 0, 1)

    if vjp == "custom":
        if proj == "per_gate":
            raise NotAvailable("the hand-written backward is not written for per_gate")
        ys = _lstm_custom(proj, layout, unroll, wlayout, w_ih, w_hh, bias, x_tm, resets_tm)
        return out_layout(ys), None, None
    zeros = jnp.zeros((x_tm.shape[1], _hidden(w_hh, wlayout)), x_tm.dtype)
    ys, (h_t, c_t), per_step = _forward_scan(
        w_ih,
        w_hh,
        bias,
        w_cat,
        x_tm,
        resets_tm,
        zeros,
        zeros,
        proj=proj,
        layout=layout,
        unroll=unroll,
        save_residuals=False,
        states=states,
        wlayout=wlayout,
    )
    if states == "all":
        return out_layout(ys), out_layout(per_step[0]), out_layout(per_step[1])
    return out_layout(ys), h_t, c_t


def custom_vjp_forward(params, x, is_init):
    """``y`` of the hand-written-backward prototype (per-step projection), for the memory sweep."""
    return proto_forward(params, x, is_init, proj="per_step", vjp="custom")[0]


def build_proto(wl: Workload, data: Data, weights: dict, **options: Any) -> Bench:
    """A prototype variant (see the module docstring) on a train or infer workload."""
    if wl.num_layers != 1:
        raise NotAvailable("the prototypes are single-layer")
    if wl.kind == "step":
        return _build_proto_step(wl, data, weights, **options)
    params = {k: jnp.asarray(v) for k, v in weights.items()}
    time_major = options.get("time_major", False)
    x, is_init = data.x, data.is_init
    ct = data.cotangent
    if time_major:  # the caller's data is already time-major (prepared untimed)
        x, is_init = np.swapaxes(x, 0, 1), np.swapaxes(is_init, 0, 1)
        ct = None if ct is None else np.swapaxes(ct, 0, 1)
    x, is_init = jnp.asarray(x), jnp.asarray(is_init)
    key = ("proto", tuple(sorted(options.items())))
    if wl.kind == "train":
        fwd = lambda p, x_, ii: proto_forward(p, x_, ii, **options)[0]
        return Bench(_train_runner(key, fwd, params, x, is_init, jnp.asarray(ct)))
    options = dict(options)
    options.setdefault("states", "all")
    infer = jitted(
        ("infer",) + key, lambda: jax.jit(lambda p, x_, ii: proto_forward(p, x_, ii, **options))
    )
    if time_major:
        return Bench(
            lambda: np.swapaxes(
                np.asarray(jax.block_until_ready(infer(params, x, is_init))[0]), 0, 1
            )
        )
    return Bench(lambda: jax.block_until_ready(infer(params, x, is_init))[0])


def _build_proto_step(
    wl: Workload,
    data: Data,
    weights: dict,
    *,
    proj="per_step",
    layout="ifgo",
    wlayout="nt",
    **_: Any,
) -> Bench:
    params = {k: jnp.asarray(v) for k, v in weights.items()}
    zeros = jnp.zeros((wl.batch, wl.hidden_size), jnp.float32)

    def step(p, x_t, carry, reset):
        w_ih, w_hh, bias, w_cat = _prepare(p, layout, proj, wlayout)
        h, c = carry
        ys, (h, c), _ = _forward_scan(
            w_ih,
            w_hh,
            bias,
            w_cat,
            x_t[None],
            reset[None],
            h,
            c,
            proj=proj,
            layout=layout,
            unroll=1,
            save_residuals=False,
            states="final",
            wlayout=wlayout,
        )
        return ys[0], (h, c)

    return Bench(
        _step_runner(
            ("proto", proj, layout, wlayout),
            step,
            params,
            jnp.asarray(data.x),
            (zeros, zeros),
            jnp.asarray(data.is_init),
        )
    )
