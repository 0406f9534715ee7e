"""``jaxlstm.LSTM`` and ``jaxlstm.GRU``: the Flax modules over the core (``_scan.core``).

Both are one module class (``_Recurrent``) that differ by their cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ._cell import GRU_CELL, LSTM_CELL, lstm_projected_cell
from ._checks import check_input
from ._params import param_name, param_shapes
from ._prepare import reset_kind_of
from ._scan import CoreConfig, check_backward, core, resolve_input_projection

_FIRST = param_name("weight_ih", 0)


def _torch_uniform(bound: float):
    # torch.nn.LSTM initialises every weight and bias from U(-1/sqrt(H), 1/sqrt(H)).
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _check_hidden_size(hidden_size: Any) -> None:
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, (int, np.integer)):
        raise ValueError(f"hidden_size must be a positive integer. Got {hidden_size!r}.")
    if hidden_size < 1:
        raise ValueError(f"hidden_size must be a positive integer. Got hidden_size={hidden_size}.")


class _Recurrent(nn.Module):
    """The fields, ``__call__`` and helpers that ``LSTM`` and ``GRU`` share.

    Subclasses set ``_cell`` (a class attribute, not a field).
    """

    _cell: ClassVar[Any] = None  # set by subclasses; a class variable, not a field

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
    input_projection: str = "auto"
    backward: str | None = None
    bidirectional: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        state: Any = None,
        is_init: jax.Array | None = None,
        *,
        reset_state: Any = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, Any]:
        """Runs one step, or a sequence in recurrent mode.

        Args:
          x: ``[*B, I]`` (step) or ``[*B, T, I]`` (recurrent), real floating.
          state: the state before this call, ``[*B, L, H]``: an ``LSTMState``
            (``LSTM``) or one array (``GRU``); None is zeros.
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
          ValueError: at trace time, for params that do not match the
            module's fields (naming the field), a feature size that differs
            from the parameters', states not ``[*B, L, H]``, an ``is_init`` of
            neither accepted shape, a recurrent call without a time axis, or
            ``T = 0``.
          TypeError: a non-floating ``x``, state or parameter; a float ``is_init``.
        """
        _check_hidden_size(self.hidden_size)
        cell = self._the_cell()
        # The core checks x (once); here only what declaring the params needs.
        if np.ndim(x) == 0:
            check_input(x, None, recurrent=self.recurrent_mode)
        if self.has_variable("params", _FIRST):
            stored = self.variables["params"]
            self._check_stored_params(stored, x)
            # Already checked against the table: read them directly. (`self.param`
            # would re-check each by tracing its initialiser, ~0.7 ms per array per
            # un-jitted call.)
            params = {name: stored[name] for name in stored}
        else:
            params = self._declare_params(np.shape(x)[-1])

        kind = "constant"
        if self.recurrent_mode and reset_state is not None and np.ndim(x) >= 2:
            kind = reset_kind_of(reset_state, tuple(np.shape(x)[:-2]), np.shape(x)[-2])
        dropout_rng = None
        if not deterministic and self.dropout > 0.0 and self.num_layers > 1:
            dropout_rng = self.make_rng("dropout")
        config = CoreConfig(
            recurrent=bool(self.recurrent_mode),
            reset_kind=kind,
            dtype=self.dtype,
            precision=self.precision,
            unroll=self.unroll,
            remat=bool(self.remat),
            input_projection=resolve_input_projection(self.input_projection),
            dropout_rate=float(self.dropout),
            backward=check_backward(self.backward),
            cell=cell,
        )
        # `core` is jitted on its static config: an un-jitted `apply` hits its
        # compile cache; under an outer jit it is inlined.
        return core(params, x, state, is_init, reset_state, dropout_rng, config=config)

    def _check_stored_params(self, stored: Mapping[str, Any], x: Any) -> None:
        """Params of another configuration raise our ValueError, naming the field.

        Without this, flax would raise its scope errors for some mismatches and
        silently ignore extra layers or biases for others.
        """
        layers = 0
        while param_name("weight_ih", layers) in stored:
            layers += 1
        if layers != self.num_layers:
            raise ValueError(
                f"num_layers: the module has num_layers={self.num_layers} but the params "
                f"hold {layers} layer(s) (weight_ih_l0 ... weight_ih_l{layers - 1})."
            )
        has_bias = any(param_name(k, 0) in stored for k in ("bias_ih", "bias_hh"))
        if has_bias != bool(self.use_bias):
            raise ValueError(
                f"use_bias: the module has use_bias={self.use_bias} but the params "
                f"{'hold' if has_bias else 'hold no'} biases (bias_ih_l0, bias_hh_l0)."
            )
        w_hh = stored.get(param_name("weight_hh", 0))
        if (
            w_hh is not None
            and np.ndim(w_hh) == 2
            and np.shape(w_hh)[-1] != self._the_cell().carry_widths(self.hidden_size)[0]
        ):
            raise ValueError(
                f"hidden_size: the module has hidden_size={self.hidden_size} but the params "
                f"have hidden_size={np.shape(w_hh)[-1]} "
                f"(weight_hh_l0 shape {tuple(np.shape(w_hh))})."
            )
        w_ih = stored[_FIRST]
        if np.ndim(w_ih) != 2:
            raise ValueError(
                f"params['weight_ih_l0'] must have shape ({self._the_cell().gates}*hidden_size, "
                f"input_size). "
                f"Got {tuple(np.shape(w_ih))}."
            )
        input_size = int(np.shape(w_ih)[-1])
        if np.shape(x)[-1] != input_size:
            check_input(x, input_size, recurrent=self.recurrent_mode)  # raises, naming both
        expected = self._param_shapes(input_size)
        if set(stored) != set(expected):
            raise ValueError(
                f"params: the module (num_layers={self.num_layers}, use_bias={self.use_bias}) "
                f"expects exactly {sorted(expected)}. Got {sorted(stored)}."
            )
        for name, shape in expected.items():
            got = tuple(np.shape(stored[name]))
            if got != shape:
                raise ValueError(
                    f"params[{name!r}]: the module (input_size={input_size}, hidden_size="
                    f"{self.hidden_size}) expects shape {shape}. Got {got}."
                )

    def _param_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        """torch's name -> shape of every parameter this module's fields call for."""
        return param_shapes(
            input_size,
            self.hidden_size,
            self.num_layers,
            self.use_bias,
            cell=self._the_cell(),
            bidirectional=bool(self.bidirectional),
        )

    def _declare_params(self, input_size: int) -> dict[str, jax.Array]:
        init = _torch_uniform(1.0 / math.sqrt(self.hidden_size))
        shapes = self._param_shapes(input_size)
        return {
            name: self.param(name, init, shape, self.param_dtype) for name, shape in shapes.items()
        }

    def _the_cell(self) -> Any:
        return self._cell

    def set_recurrent_mode(self, mode: bool = True) -> _Recurrent:
        """Returns a copy in the given mode.

        Parameters live outside Flax modules, so the copy uses the same
        parameter tree: ``lstm.set_recurrent_mode(True).apply(params, ...)``.
        """
        return self.clone(recurrent_mode=bool(mode))

    def initial_state(self, batch_shape: Sequence[int] | int = (), dtype: Any = jnp.float32) -> Any:
        """Zeros of shape ``[*batch_shape, L, H]``; needs no parameters or RNG.

        An ``LSTMState`` for ``LSTM``, one array for ``GRU``.
        """
        _check_hidden_size(self.hidden_size)
        if isinstance(batch_shape, int):
            batch_shape = (batch_shape,)
        return self._the_cell().make_state(
            tuple(
                jnp.zeros(
                    tuple(batch_shape) + (self.num_layers * (2 if self.bidirectional else 1), w),
                    dtype,
                )
                for w in self._the_cell().carry_widths(self.hidden_size)
            )
        )


class LSTM(_Recurrent):
    """A stacked LSTM with torchrl ``LSTMModule`` semantics, on ``jax.lax.scan``.

    Parameters are stored as in ``torch.nn.LSTM`` (``weight_ih_l{k} [4H, I]``,
    ``weight_hh_l{k} [4H, H]``, ``bias_ih_l{k}``, ``bias_hh_l{k}``), so weights
    move to and from torch by copying arrays (``params_from_torch_state_dict``).

    Step mode (``recurrent_mode=False``, the default) runs one step:
    ``x [*B, I]`` -> ``y [*B, H]`` and the next state ``[*B, L, H]``.
    Recurrent mode runs a sequence whose time axis is the last batch axis:
    ``x [*B, T, I]`` -> ``y [*B, T, H]`` and the state after every step,
    ``[*B, T, L, H]``. Both modes are the same core (step mode has ``T = 1``).

    Reset rule (both modes): before the cell runs at step ``t``, wherever
    ``is_init`` is true the carried state is replaced by ``reset_state`` at
    ``t`` (zeros when ``reset_state`` is None).

    Called un-jitted (``lstm.apply(params, ...)``), the computation still runs
    as one compiled program per configuration and input shape: the core is
    jitted with this module's fields as its static configuration.

    Attributes:
      hidden_size: H (a positive integer).
      num_layers: L.
      use_bias: whether the layers have ``bias_ih``/``bias_hh``.
      dropout: dropout rate on the outputs of every layer but the last, applied
        when ``deterministic=False`` with the ``'dropout'`` RNG stream.
      recurrent_mode: step mode (False) or sequence mode (True).
      dtype: compute (matmul) dtype (e.g. ``jnp.bfloat16``); None is
        ``jnp.result_type`` of the input and the parameters. The carried state
        stays in float32 and weight gradients are summed over time in float32.
        With bfloat16, outputs and states stay within 1e-2 (absolute) of a
        float32 run (tested; measured up to 5e-3 for H <= 256, T <= 256).
      param_dtype: dtype of the parameters at ``init``.
      unroll: ``lax.scan`` unroll factor.
      remat: keep only the states for the backward pass and recompute the gates.
      precision: ``lax.dot_general`` precision of the matmuls.
      input_projection: ``"auto"``, ``"per_step"`` or ``"hoisted"`` (see
        ``lstm_scan``).
      backward: ``"custom"`` (the hand-written backward), ``"auto"`` (JAX
        differentiates the scan) or None (default: per backend, "auto" on
        CPU, "custom" on GPU/TPU); see ``lstm_scan``.
      bidirectional: torch's bidirectional layers (``_reverse`` parameters;
        ``y [..., 2H]``; states ``[*B, 2L, H]`` in torch's order, slot
        ``2k + d``). In recurrent mode each trajectory (a segment between
        resets) runs forwards and backwards on its own; the reverse direction
        starts at the trajectory's last step from what the forward direction
        starts from (``state`` for a row's first trajectory, ``reset_state``
        at the trajectory's first step otherwise), as torchrl does. The
        per-step state of a reverse slot is its state after processing that
        step, so a reverse slot's final state (torch's ``h_n``) is at the
        trajectory's first step, not its last.
      proj_size: torch's LSTMP (``P > 0``, ``P < H``): ``weight_hr_l{k}
        [P, H]``, ``y [..., P]``, ``h [*B, L, P]``, ``c [*B, L, H]``.
    """

    _cell = LSTM_CELL
    proj_size: int = 0

    def _the_cell(self) -> Any:
        # torch's LSTMP: proj_size = P > 0 projects h to [.., P] (weight_hr_l{k} [P, H]).
        if self.proj_size and self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size (as torch.nn.LSTM requires). "
                f"Got proj_size={self.proj_size}, hidden_size={self.hidden_size}."
            )
        return lstm_projected_cell(self.proj_size)


class GRU(_Recurrent):
    """A stacked GRU (``torch.nn.GRU``'s math) with torchrl ``GRUModule`` semantics.

    The same fields, modes, reset rule and call as ``LSTM``; the cell is
    ``GRU_CELL`` and the state is one array instead of an ``LSTMState``.

    Parameters are stored as in ``torch.nn.GRU`` (``weight_ih_l{k} [3H, I]``,
    ``weight_hh_l{k} [3H, H]``, ``bias_ih_l{k} [3H]``, ``bias_hh_l{k} [3H]``;
    gates r, z, n), so weights move to and from torch by copying arrays
    (``params_from_torch_state_dict`` recognises a GRU by its shapes). The
    step is ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``,
    ``h' = (1 - z) * n + z * h``: ``b_hn`` sits inside the reset gate's
    product, which is why flax's ``GRUCell`` cannot load torch weights.

    Step mode: ``x [*B, I]`` -> ``y [*B, H]`` and the next state ``[*B, L, H]``.
    Recurrent mode: ``x [*B, T, I]`` -> ``y [*B, T, H]`` and the state after
    every step, ``[*B, T, L, H]``.

    Attributes: as ``LSTM``'s (``bidirectional`` included).
    """

    _cell = GRU_CELL
