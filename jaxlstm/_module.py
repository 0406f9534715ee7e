"""``jaxlstm.LSTM``: the Flax module over ``lstm_scan``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ._checks import check_input, check_state, normalize_is_init
from ._params import param_name, param_shapes
from ._scan import lstm_scan
from ._state import LSTMState


def _torch_uniform(bound: float):
    # torch.nn.LSTM initialises every weight and bias from U(-1/sqrt(H), 1/sqrt(H)).
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class LSTM(nn.Module):
    """A stacked LSTM with torchrl ``LSTMModule`` semantics, on ``jax.lax.scan``.

    Parameters are stored as in ``torch.nn.LSTM`` (``weight_ih_l{k} [4H, I]``,
    ``weight_hh_l{k} [4H, H]``, ``bias_ih_l{k}``, ``bias_hh_l{k}``), so weights
    move to and from torch by copying arrays (``params_from_torch_state_dict``).

    Step mode (``recurrent_mode=False``, the default) runs one step:
    ``x [*B, I]`` -> ``y [*B, H]`` and the next state ``[*B, L, H]``.
    Recurrent mode runs a sequence whose time axis is the last batch axis:
    ``x [*B, T, I]`` -> ``y [*B, T, H]`` and the state after every step,
    ``[*B, T, L, H]``. Both modes are the same scan (step mode has ``T = 1``).

    Reset rule (both modes): before the cell runs at step ``t``, wherever
    ``is_init`` is true the carried state is replaced by ``reset_state`` at
    ``t`` (zeros when ``reset_state`` is None).

    Attributes:
      hidden_size: H.
      num_layers: L.
      use_bias: whether the layers have ``bias_ih``/``bias_hh``.
      dropout: dropout rate on the outputs of every layer but the last, applied
        when ``deterministic=False`` with the ``'dropout'`` RNG stream.
      recurrent_mode: step mode (False) or sequence mode (True).
      dtype: matmul dtype (e.g. ``jnp.bfloat16``); None infers it from the
        inputs and parameters. The carried state stays in float32. With
        bfloat16, outputs and states stay within 1e-2 (absolute) of a float32
        run (tested; measured up to 5e-3 for H <= 256, T <= 256).
      param_dtype: dtype of the parameters at ``init``.
      unroll: ``lax.scan`` unroll factor.
      remat: recompute the scan body in the backward pass to save memory.
      precision: ``lax.dot_general`` precision of the matmuls.
    """

    hidden_size: int
    num_layers: int = 1
    use_bias: bool = True
    dropout: float = 0.0
    recurrent_mode: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    unroll: int = 1
    remat: bool = False
    precision: Any = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        state: LSTMState | None = None,
        is_init: jax.Array | None = None,
        *,
        reset_state: LSTMState | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, LSTMState]:
        """Runs one step, or a sequence in recurrent mode.

        Args:
          x: ``[*B, I]`` (step) or ``[*B, T, I]`` (recurrent), float.
          state: ``LSTMState`` of ``[*B, L, H]``: the state before this call;
            None is zeros.
          is_init: bool ``[*B]``/``[*B, 1]`` (step) or ``[*B, T]``/``[*B, T, 1]``
            (recurrent), integer 0/1 accepted; None means no resets.
          reset_state: what a reset loads. Step mode: ``[*B, L, H]``.
            Recurrent mode: ``[*B, L, H]`` or per step ``[*B, T, L, H]``.
            None is zeros.
          deterministic: when False and ``dropout > 0``, applies dropout with
            the ``'dropout'`` RNG stream.

        Returns:
          ``(y, state)``: step mode ``y [*B, H]``, ``state [*B, L, H]``;
          recurrent mode ``y [*B, T, H]``, ``state [*B, T, L, H]`` (after
          every step; ``state.h[..., -1, :, :]`` is the final state).

        Raises:
          ValueError: at trace time, for a feature size that differs from the
            parameters', states not ``[*B, L, H]``, an ``is_init`` of neither
            accepted shape, a recurrent call without a time axis, or ``T = 0``.
        """
        if self.has_variable("params", param_name("weight_ih", 0)):
            stored = self.get_variable("params", param_name("weight_ih", 0))
            check_input(x, stored.shape[-1], recurrent=self.recurrent_mode)
        else:
            check_input(x, None, recurrent=self.recurrent_mode)
        params = self._declare_params(x.shape[-1])

        if self.recurrent_mode:
            batch_shape = tuple(x.shape[:-2])
        else:
            batch_shape = tuple(x.shape[:-1])
        if not self.recurrent_mode:
            # Step mode is a sequence of length one: the same scan, T = 1.
            x = x[..., None, :]
            if is_init is not None:
                is_init = normalize_is_init(is_init, batch_shape)[..., None]
            if reset_state is not None:
                check_state(
                    reset_state, batch_shape, self.num_layers, self.hidden_size, name="reset_state"
                )

        dropout_rng = None
        if not deterministic and self.dropout > 0.0 and self.num_layers > 1:
            dropout_rng = self.make_rng("dropout")
        y, states = lstm_scan(
            params,
            x,
            state,
            is_init,
            reset_state,
            dropout_rate=self.dropout,
            dropout_rng=dropout_rng,
            dtype=self.dtype,
            precision=self.precision,
            unroll=self.unroll,
            remat=self.remat,
        )
        if self.recurrent_mode:
            return y, states
        return y[..., 0, :], jax.tree.map(lambda a: a[..., 0, :, :], states)

    def _declare_params(self, input_size: int) -> dict[str, jax.Array]:
        init = _torch_uniform(1.0 / math.sqrt(self.hidden_size))
        shapes = param_shapes(input_size, self.hidden_size, self.num_layers, self.use_bias)
        return {
            name: self.param(name, init, shape, self.param_dtype) for name, shape in shapes.items()
        }

    def set_recurrent_mode(self, mode: bool = True) -> LSTM:
        """Returns a copy in the given mode.

        Parameters live outside Flax modules, so the copy uses the same
        parameter tree: ``lstm.set_recurrent_mode(True).apply(params, ...)``.
        """
        return self.clone(recurrent_mode=bool(mode))

    def initial_state(
        self, batch_shape: Sequence[int] | int = (), dtype: Any = jnp.float32
    ) -> LSTMState:
        """Zeros of shape ``[*batch_shape, L, H]``; needs no parameters or RNG."""
        if isinstance(batch_shape, int):
            batch_shape = (batch_shape,)
        zeros = jnp.zeros(tuple(batch_shape) + (self.num_layers, self.hidden_size), dtype)
        return LSTMState(h=zeros, c=zeros)
