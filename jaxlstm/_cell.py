"""Cells: one recurrent step, its parameter table and its hand-written backward.

A cell is everything the loop (``_loop.py``) needs to know about one layer's
math; the loop itself (time, resets, dropout between layers, remat, unroll,
per-step states, the custom backward's reverse scan) knows nothing about it.
``LSTM_CELL`` (``torch.nn.LSTM``) and ``GRU_CELL`` (``torch.nn.GRU``) are the
cells. A cell provides:

- ``kinds``: torch's parameter kinds of one layer (``weight_ih``, ...), and
  ``layer_param_shapes(input_size, hidden_size, bias)``: their shapes.
- ``carry_widths(hidden_size)``: the widths of the carry's arrays, in order
  (LSTM: ``(H, H)`` for ``(h, c)``; an LSTM with projection would have
  ``(P, H)``). ``carry[0]`` is the layer's output ``y_t``.
- ``state_arrays(state)`` / ``make_state(arrays)`` / ``check_state(...)``: the
  user-facing state (LSTM: ``LSTMState(h, c)``; GRU: one array) to and from
  the carry's arrays, and its trace-time check.
- ``weights(layer_params, bias)``: one layer's arrays -> its weight pytree
  (LSTM: ``LayerWeights``, the two torch biases summed once), and
  ``cast(weights, dtype)``: the matmul-dtype copy the step uses.
- ``project_input(weights, x)``: the part of the step that depends on ``x``
  only (LSTM: ``x W_ih^T + b``); the loop may hoist it out of the time loop.
- ``step(weights, gx_t, carry) -> (carry', residual)``: one step from the
  projected input. ``residual`` is what ``step_backward`` needs.
- ``step_backward(weights, residual, carry, carry', dcarry')
  -> (dpre, dcarry)``: the step's VJP. ``dpre`` is whatever per-step gradient
  ``weight_grads`` needs after the loop (LSTM: the gate pre-activations').
- ``weight_grads(weights, xs, carries, dpre) -> (dweights, dxs)``: every
  weight gradient and the input gradient, from all steps at once (one large
  matmul each, as cuDNN's backward does, instead of one small accumulation
  per step).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from . import _checks
from ._state import LSTMState


class LayerWeights(NamedTuple):
    """Weights of one LSTM layer in torch's layout (gates stacked i, f, g, o)."""

    weight_ih: jax.Array  # shape=[4H, I]
    weight_hh: jax.Array  # shape=[4H, H], or [4H, P] with a projection
    bias: jax.Array | None  # shape=[4H]: bias_ih + bias_hh, or None without bias
    weight_hr: jax.Array | None = None  # shape=[P, H]: torch's proj_size > 0, else None


def project(
    a: jax.Array, weight: jax.Array, *, precision: Any = None, accum_dtype: Any = None
) -> jax.Array:
    """``a @ weight.T`` for a torch-layout ``weight [G, K]`` and ``a [..., K]``.

    Contracting the weight's axis 1 directly matters on XLA:CPU: writing
    ``a @ weight.T`` materialises the transposed weight on every call.
    """
    return lax.dot_general(
        a,
        weight,
        (((a.ndim - 1,), (1,)), ((), ())),
        precision=precision,
        preferred_element_type=accum_dtype,
    )


def project_input_with_bias(
    weight_ih: jax.Array,
    bias: jax.Array | None,
    x: jax.Array,
    *,
    precision: Any = None,
    accum: Any = None,
) -> jax.Array:
    """``x W_ih^T + b`` for any cell: ``[..., I]`` -> ``[..., G]`` in ``accum``.

    ``x`` is cast to the weight's (matmul) dtype; ``bias`` (``[G]`` or None)
    is added in the accumulation dtype.
    """
    gx = project(x.astype(weight_ih.dtype), weight_ih, precision=precision, accum_dtype=accum)
    if bias is not None:
        # Explicit leading axes so the add works under rank promotion 'raise'.
        gx = gx + lax.broadcast_to_rank(bias.astype(gx.dtype), gx.ndim)
    return gx


def _back_project(
    d: jax.Array, weight: jax.Array, *, precision: Any, accum_dtype: Any
) -> jax.Array:
    """``d @ weight`` for ``d [..., G]`` and ``weight [G, K]``: the input gradient of ``project``."""
    return lax.dot_general(
        d.astype(weight.dtype),
        weight,
        (((d.ndim - 1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=accum_dtype,
    )


def _outer_sum(d: jax.Array, a: jax.Array, *, precision: Any) -> jax.Array:
    """``sum_rows d^T a`` for ``d [R, G]``, ``a [R, K]`` -> ``[G, K]``, summed in float32 or wider.

    One matmul over every (step, row) pair: the weight gradient of all steps at
    once, accumulated in at least float32 even when ``d``/``a`` are bfloat16.
    """
    accum = jnp.promote_types(jnp.result_type(d, a), jnp.float32)
    return lax.dot_general(
        d, a, (((0,), (0,)), ((), ())), precision=precision, preferred_element_type=accum
    )


def lstm_cell(
    weights: LayerWeights,
    x: jax.Array,
    h: jax.Array,
    c: jax.Array,
    *,
    input_gates: jax.Array | None = None,
    precision: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """Runs one step of one LSTM layer.

    ``i, f, g, o = split(x W_ih^T + b_ih + h W_hh^T + b_hh)``,
    ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``, ``h' = sigmoid(o) * tanh(c')``.

    Args:
      weights: the layer's weights; their dtype is the matmul dtype.
      x: input ``[N, I]``. Ignored when ``input_gates`` is given.
      h: hidden state ``[N, H]``; its dtype is the accumulation dtype.
      c: cell state ``[N, H]``, same dtype as ``h``.
      input_gates: optional precomputed ``x W_ih^T + bias`` ``[N, 4H]``, for
        callers that hoist the input projection out of the time loop.
      precision: ``lax.dot_general`` precision.

    Returns:
      ``(h', c')``, both ``[N, H]`` in the dtype of ``h``.
    """
    if input_gates is None:
        input_gates = LSTM_CELL.project_input(weights, x, precision=precision, accum=h.dtype)
    (h_new, c_new), _ = LSTM_CELL.step(
        weights, input_gates.astype(h.dtype), (h, c), precision=precision
    )
    return h_new, c_new


class _LSTMCell:
    """``torch.nn.LSTM``'s layer math as a cell (see the module docstring).

    With ``proj_size = P > 0`` it is torch's LSTMP: ``h' = (o * tanh(c')) W_hr^T``,
    so ``h`` (the output and the recurrent input) is ``[N, P]`` and ``c`` stays
    ``[N, H]``. Cells compare (and hash) by ``proj_size``: they are static
    arguments of compiled programs.
    """

    name = "lstm"
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    gates = 4

    def __init__(self, proj_size: int = 0):
        self.proj_size = int(proj_size)

    def __repr__(self) -> str:
        return f"lstm_projected_cell({self.proj_size})" if self.proj_size else "LSTM_CELL"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.proj_size == self.proj_size

    def __hash__(self) -> int:
        return hash((type(self), self.proj_size))

    def layer_param_shapes(
        self, input_size: int, hidden_size: int, bias: bool
    ) -> dict[str, tuple[int, ...]]:
        g = self.gates * hidden_size
        p = self.proj_size
        shapes = {"weight_ih": (g, input_size), "weight_hh": (g, p or hidden_size)}
        if bias:
            shapes["bias_ih"] = (g,)
            shapes["bias_hh"] = (g,)
        if p:
            shapes["weight_hr"] = (p, hidden_size)  # torch lists it after the biases
        return shapes

    def carry_widths(self, hidden_size: int) -> tuple[int, ...]:
        return (self.proj_size or hidden_size, hidden_size)  # (h, c)

    def state_arrays(self, state: LSTMState) -> tuple[jax.Array, ...]:
        """The user-facing state -> the carry's arrays, in carry order."""
        return (state.h, state.c)

    def make_state(self, arrays: tuple) -> LSTMState:
        """The carry's arrays -> the user-facing state."""
        return LSTMState(*arrays)

    def check_state(self, state: Any, leading: tuple, layers: int, hidden: int, **kw: Any) -> None:
        """``state`` must be an ``LSTMState`` of ``[*leading, L, H]`` arrays (see ``_checks``)."""
        _checks.check_state(state, leading, layers, hidden, widths=self.carry_widths(hidden), **kw)

    def weights(self, layer: dict[str, jax.Array], bias: bool) -> LayerWeights:
        # The two torch biases always appear summed: sum them once, outside the loop.
        b = layer["bias_ih"] + layer["bias_hh"] if bias else None
        return LayerWeights(layer["weight_ih"], layer["weight_hh"], b, layer.get("weight_hr"))

    def cast(self, w: LayerWeights, dtype: Any) -> LayerWeights:
        # The bias is added to the float32 (or wider) gates, so it keeps its dtype.
        w_hr = None if w.weight_hr is None else w.weight_hr.astype(dtype)
        return LayerWeights(w.weight_ih.astype(dtype), w.weight_hh.astype(dtype), w.bias, w_hr)

    def project_input(
        self, w: LayerWeights, x: jax.Array, *, precision: Any = None, accum: Any = None
    ) -> jax.Array:
        """``x W_ih^T + b``: ``[..., I]`` -> ``[..., 4H]`` in ``accum``."""
        return project_input_with_bias(w.weight_ih, w.bias, x, precision=precision, accum=accum)

    def step(
        self, w: LayerWeights, gx: jax.Array, carry: tuple[jax.Array, ...], *, precision: Any = None
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        """One step from the projected input ``gx [N, 4H]``; carry ``(h, c)`` ``[N, H]`` each.

        Returns ``((h', c'), acts)`` with ``acts = [sig(i), sig(f), tanh(g), sig(o)]``
        ``[N, 4H]``, what the backward needs besides the carries.
        """
        h, c = carry
        gates = gx + project(
            h.astype(w.weight_hh.dtype), w.weight_hh, precision=precision, accum_dtype=c.dtype
        )
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        if w.weight_hr is not None:
            h_new = project(
                h_new.astype(w.weight_hr.dtype),
                w.weight_hr,
                precision=precision,
                accum_dtype=c.dtype,
            )
        return (h_new, c_new), jnp.concatenate([i, f, g, o], axis=-1)

    def step_backward(
        self,
        w: LayerWeights,
        acts: jax.Array,
        carry: tuple[jax.Array, ...],
        new_carry: tuple[jax.Array, ...],
        d_new: tuple[jax.Array, ...],
        *,
        precision: Any = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """The VJP of ``step``: gate pre-activation gradients ``[N, 4H]`` and ``(dh, dc)``.

        With a projection the first output is ``[N, 4H + P + H]``: the gates'
        gradients, then ``dh'`` and ``o * tanh(c')``, which ``weight_grads``
        needs for ``W_hr``.
        """
        _, c = carry
        _, c_new = new_carry
        dh, dc = d_new
        i, f, g, o = jnp.split(acts, 4, axis=-1)
        tanh_c = jnp.tanh(c_new)
        dh_proj = None
        if w.weight_hr is not None:
            dh_proj = dh
            dh = _back_project(dh, w.weight_hr, precision=precision, accum_dtype=dc.dtype)
        dc = dc + dh * o * (1 - tanh_c * tanh_c)
        d_gates = jnp.concatenate(
            [
                dc * g * i * (1 - i),
                dc * c * f * (1 - f),
                dc * i * (1 - g * g),
                dh * tanh_c * o * (1 - o),
            ],
            axis=-1,
        )
        dh_prev = _back_project(d_gates, w.weight_hh, precision=precision, accum_dtype=dc.dtype)
        if dh_proj is not None:
            d_gates = jnp.concatenate([d_gates, dh_proj, o * tanh_c], axis=-1)
        return d_gates, (dh_prev, dc * f)

    def weight_grads(
        self,
        w: LayerWeights,
        xs: jax.Array,
        carries: tuple[jax.Array, ...],
        d_gates: jax.Array,
        *,
        precision: Any = None,
    ) -> tuple[LayerWeights, jax.Array]:
        """All steps' weight gradients at once.

        Args:
          w: the matmul-dtype weights the forward used.
          xs: the layer's inputs ``[R, I]`` (all steps and rows).
          carries: the carries each step started from, ``([R, H], [R, H])``.
          d_gates: ``[R, 4H]`` from ``step_backward``.

        Returns:
          ``(dw, dxs)``: ``dw`` in float32 or wider (bias None without bias),
          ``dxs [R, I]``.
        """
        h = carries[0]
        mm = w.weight_hh.dtype
        dw_hr = None
        if w.weight_hr is not None:
            proj, hidden = w.weight_hr.shape
            g = self.gates * hidden
            dh_proj, h_full = d_gates[:, g : g + proj], d_gates[:, g + proj :]
            d_gates = d_gates[:, :g]
            dw_hr = _outer_sum(dh_proj.astype(mm), h_full.astype(mm), precision=precision)
        d_mm = d_gates.astype(mm)
        dw_ih = _outer_sum(d_mm, xs.astype(mm), precision=precision)
        dw_hh = _outer_sum(d_mm, h.astype(mm), precision=precision)
        db = None if w.bias is None else jnp.sum(d_gates, axis=0)
        dxs = _back_project(d_gates, w.weight_ih, precision=precision, accum_dtype=d_gates.dtype)
        return LayerWeights(dw_ih, dw_hh, db, dw_hr), dxs


LSTM_CELL = _LSTMCell()


def lstm_projected_cell(proj_size: int) -> _LSTMCell:
    """The LSTM cell with torch's ``proj_size`` (``LSTM_CELL`` for 0)."""
    if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
        raise ValueError(f"proj_size must be a non-negative integer. Got {proj_size!r}.")
    return _LSTMCell(proj_size) if proj_size else LSTM_CELL


class GRUWeights(NamedTuple):
    """Weights of one GRU layer in torch's layout (gates stacked r, z, n).

    torch adds ``b_hn`` inside the reset gate's product (``r * (W_hn h + b_hn)``),
    so it cannot be folded into the input bias; the other five biases can.
    """

    weight_ih: jax.Array  # shape=[3H, I]
    weight_hh: jax.Array  # shape=[3H, H]
    bias: jax.Array | None  # shape=[3H]: b_ih + [b_hr, b_hz, 0], or None without bias
    bias_hn: jax.Array | None  # shape=[H]: b_hn, or None without bias


def gru_cell(
    weights: GRUWeights,
    x: jax.Array,
    h: jax.Array,
    *,
    precision: Any = None,
) -> jax.Array:
    """Runs one step of one GRU layer, as ``torch.nn.GRU``.

    ``r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.

    Args:
      weights: the layer's weights (``GRU_CELL.weights(...)``); their dtype is
        the matmul dtype.
      x: input ``[N, I]``.
      h: hidden state ``[N, H]``; its dtype is the accumulation dtype.
      precision: ``lax.dot_general`` precision.

    Returns:
      ``h'`` ``[N, H]`` in the dtype of ``h``.
    """
    gx = GRU_CELL.project_input(weights, x, precision=precision, accum=h.dtype)
    (h_new,), _ = GRU_CELL.step(weights, gx, (h,), precision=precision)
    return h_new


class _GRUCell:
    """``torch.nn.GRU``'s layer math as a cell (see the module docstring).

    The carry is ``(h,)``; the user-facing state is the array ``h`` itself.
    """

    name = "gru"
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    gates = 3

    def __repr__(self) -> str:
        return "GRU_CELL"

    def layer_param_shapes(
        self, input_size: int, hidden_size: int, bias: bool
    ) -> dict[str, tuple[int, ...]]:
        g = self.gates * hidden_size
        shapes = {"weight_ih": (g, input_size), "weight_hh": (g, hidden_size)}
        if bias:
            shapes["bias_ih"] = (g,)
            shapes["bias_hh"] = (g,)
        return shapes

    def carry_widths(self, hidden_size: int) -> tuple[int, ...]:
        return (hidden_size,)

    def state_arrays(self, state: jax.Array) -> tuple[jax.Array, ...]:
        return (state,)

    def make_state(self, arrays: tuple) -> jax.Array:
        (h,) = arrays
        return h

    def check_state(self, state: Any, leading: tuple, layers: int, hidden: int, **kw: Any) -> None:
        """``state`` must be one ``[*leading, L, H]`` array (see ``_checks``)."""
        _checks.check_array_state(state, leading, layers, hidden, **kw)

    def weights(self, layer: dict[str, jax.Array], bias: bool) -> GRUWeights:
        if not bias:
            return GRUWeights(layer["weight_ih"], layer["weight_hh"], None, None)
        b_hh = layer["bias_hh"]
        hidden = b_hh.shape[0] // 3
        # b_hr and b_hz are plain additive biases: fold them into the input bias once.
        folded = jnp.concatenate([b_hh[: 2 * hidden], jnp.zeros((hidden,), b_hh.dtype)])
        return GRUWeights(
            layer["weight_ih"], layer["weight_hh"], layer["bias_ih"] + folded, b_hh[2 * hidden :]
        )

    def cast(self, w: GRUWeights, dtype: Any) -> GRUWeights:
        return w._replace(weight_ih=w.weight_ih.astype(dtype), weight_hh=w.weight_hh.astype(dtype))

    def project_input(
        self, w: GRUWeights, x: jax.Array, *, precision: Any = None, accum: Any = None
    ) -> jax.Array:
        """``x W_ih^T + b``: ``[..., I]`` -> ``[..., 3H]`` in ``accum``."""
        return project_input_with_bias(w.weight_ih, w.bias, x, precision=precision, accum=accum)

    def step(
        self, w: GRUWeights, gx: jax.Array, carry: tuple[jax.Array, ...], *, precision: Any = None
    ) -> tuple[tuple[jax.Array], jax.Array]:
        """One step from the projected input ``gx [N, 3H]``; carry ``(h,)`` ``[N, H]``.

        Returns ``((h',), acts)`` with ``acts = (r, z, n, W_hn h + b_hn)``,
        each ``[N, H]``: what the backward needs besides the carry.
        """
        (h,) = carry
        gh = project(
            h.astype(w.weight_hh.dtype), w.weight_hh, precision=precision, accum_dtype=h.dtype
        )
        gx_r, gx_z, gx_n = jnp.split(gx, 3, axis=-1)
        gh_r, gh_z, gh_n = jnp.split(gh, 3, axis=-1)
        if w.bias_hn is not None:
            gh_n = gh_n + lax.broadcast_to_rank(w.bias_hn.astype(gh_n.dtype), gh_n.ndim)
        r = jax.nn.sigmoid(gx_r + gh_r)
        z = jax.nn.sigmoid(gx_z + gh_z)
        n = jnp.tanh(gx_n + r * gh_n)
        # torch's form of (1 - z) * n + z * h.
        h_new = n + z * (h - n)
        # A tuple, not one concatenated array: the loop stacks each leaf over
        # time as it is, without a per-step copy into a [N, 4H] buffer.
        return (h_new,), (r, z, n, gh_n)

    def step_backward(
        self,
        w: GRUWeights,
        acts: jax.Array,
        carry: tuple[jax.Array, ...],
        new_carry: tuple[jax.Array, ...],
        d_new: tuple[jax.Array, ...],
        *,
        precision: Any = None,
    ) -> tuple[jax.Array, tuple[jax.Array]]:
        """The VJP of ``step``.

        Returns ``(d_pre, (dh,))`` with ``d_pre = [dr, dz, dn, d(W_hn h + b_hn)]``
        ``[N, 4H]`` (gate pre-activation gradients): the first three are the
        input projection's gradient, ``[dr, dz, d_hn]`` the recurrent one's.
        """
        (h,) = carry
        (dh,) = d_new
        r, z, n, gh_n = acts
        dn = dh * (1 - z) * (1 - n * n)
        dz = dh * (h - n) * z * (1 - z)
        d_ghn = dn * r
        dr = dn * gh_n * r * (1 - r)
        d_gh = jnp.concatenate([dr, dz, d_ghn], axis=-1)
        dh_prev = dh * z + _back_project(
            d_gh, w.weight_hh, precision=precision, accum_dtype=dh.dtype
        )
        return jnp.concatenate([dr, dz, dn, d_ghn], axis=-1), (dh_prev,)

    def weight_grads(
        self,
        w: GRUWeights,
        xs: jax.Array,
        carries: tuple[jax.Array, ...],
        d_pre: jax.Array,
        *,
        precision: Any = None,
    ) -> tuple[GRUWeights, jax.Array]:
        """All steps' weight gradients at once (see ``_LSTMCell.weight_grads``).

        ``xs [R, I]``, ``carries ([R, H],)``, ``d_pre [R, 4H]``.
        """
        (h,) = carries
        hidden = d_pre.shape[-1] // 4
        d_gx = d_pre[:, : 3 * hidden]
        d_gh = jnp.concatenate([d_pre[:, : 2 * hidden], d_pre[:, 3 * hidden :]], axis=-1)
        mm = w.weight_hh.dtype
        dw_ih = _outer_sum(d_gx.astype(mm), xs.astype(mm), precision=precision)
        dw_hh = _outer_sum(d_gh.astype(mm), h.astype(mm), precision=precision)
        if w.bias is None:
            db = db_hn = None
        else:
            db = jnp.sum(d_gx, axis=0)
            db_hn = jnp.sum(d_pre[:, 3 * hidden :], axis=0)
        dxs = _back_project(d_gx, w.weight_ih, precision=precision, accum_dtype=d_pre.dtype)
        return GRUWeights(dw_ih, dw_hh, db, db_hn), dxs


GRU_CELL = _GRUCell()
