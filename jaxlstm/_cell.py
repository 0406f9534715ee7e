"""One LSTM step for one layer, with ``torch.nn.LSTM``'s math and weight layout."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class LayerWeights(NamedTuple):
    """Weights of one layer in torch's layout (gates stacked i, f, g, o)."""

    weight_ih: jax.Array  # shape=[4H, I]
    weight_hh: jax.Array  # shape=[4H, H]
    bias: jax.Array | None  # shape=[4H]: bias_ih + bias_hh, or None without bias


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
    accum = h.dtype
    mm = weights.weight_hh.dtype
    gates = project(h.astype(mm), weights.weight_hh, precision=precision, accum_dtype=accum)
    if input_gates is None:
        gates = gates + project(
            x.astype(mm), weights.weight_ih, precision=precision, accum_dtype=accum
        )
        if weights.bias is not None:
            # Explicit leading axes: [4H] -> [1, 4H], so the add works under
            # jax_numpy_rank_promotion="raise".
            gates = gates + lax.broadcast_to_rank(weights.bias.astype(accum), gates.ndim)
    else:
        gates = gates + input_gates.astype(accum)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
    return h_new, c_new
