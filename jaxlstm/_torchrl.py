"""torchrl ``LSTMModule``'s / ``GRUModule``'s semantics on arrays shaped like their tensordict entries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from ._cell import GRU_CELL
from ._params import lstm_cell_for
from ._scan import CoreConfig, core, default_backward, default_input_projection
from ._state import LSTMState


def torchrl_apply(
    params: Mapping[str, Any],
    x: jax.Array,
    h: jax.Array | None,
    c: jax.Array | None,
    is_init: jax.Array,
    *,
    recurrent: bool,
    full_hidden_states: bool = False,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    precision: Any = None,
    remat: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """What torchrl's ``LSTMModule.forward`` writes, from its tensordict's arrays.

    Step mode (``recurrent=False``): one step per row from the stored state;
    where ``is_init`` the state is reset to zeros first.

    Recurrent mode: ``x [*B, T, I]`` with ``h, c [*B, T, L, H]`` the states
    stored at every step (torchrl's ``"recurrent_state_h"``...). Every
    trajectory (a segment starting at step 0 or where ``is_init``) starts from
    the stored state at its first step. The returned states are the state after
    every step; unless ``full_hidden_states``, zeros except at each
    trajectory's last step (torchrl's layout).

    Args:
      params: ``torch.nn.LSTM``'s arrays by name (``weight_ih_l0 [4H, I]``, ...).
      x: step ``[*S, I]``; recurrent ``[*B, T, I]``.
      h, c: stored states, step ``[*S, L, H]``, recurrent ``[*B, T, L, H]``;
        both None for zeros.
      is_init: bool (or integer 0/1) ``[*S]``/``[*S, 1]`` or ``[*B, T]``/``[*B, T, 1]``.
      recurrent: torchrl's recurrent mode.
      full_hidden_states: keep every step's state in recurrent mode.
      dropout_rate: torch's ``nn.LSTM`` dropout (between layers); applied
        when ``dropout_rng`` is given.
      dropout_rng: PRNG key, or None for no dropout.
      precision: ``lax.dot_general`` precision.
      remat: recompute the gates in the backward pass.

    Returns:
      ``(y, h_out, c_out)`` in ``x``'s dtype: step ``[*S, H]``, ``[*S, L, H]``
      x2; recurrent ``[*B, T, H]``, ``[*B, T, L, H]`` x2.

    The options are read from ``params``: ``weight_hr_l{k}`` (torch's
    ``proj_size = P``) makes ``y`` and ``h`` ``P`` wide; ``_reverse`` arrays
    (bidirectional) make ``y`` ``2H`` wide and the states ``[..., 2L, W]``,
    each trajectory running forwards and backwards on its own, as torchrl's.

    Raises:
      ValueError: shapes, or only one of ``h``/``c``. TypeError: dtypes.
    """
    if (h is None) != (c is None):
        raise ValueError(
            "h and c must be given together (or both None for zeros). "
            f"Got h={'None' if h is None else 'an array'}, c={'None' if c is None else 'an array'}."
        )
    stored = None if h is None else LSTMState(h=h, c=c)
    y, states = _apply(
        lstm_cell_for(params),
        params,
        x,
        stored,
        is_init,
        recurrent=recurrent,
        full_hidden_states=full_hidden_states,
        dropout_rate=dropout_rate,
        dropout_rng=dropout_rng,
        precision=precision,
        remat=remat,
    )
    return y, states.h, states.c


def torchrl_gru_apply(
    params: Mapping[str, Any],
    x: jax.Array,
    h: jax.Array | None,
    is_init: jax.Array,
    *,
    recurrent: bool,
    full_hidden_states: bool = False,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    precision: Any = None,
    remat: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """What torchrl's ``GRUModule.forward`` writes, from its tensordict's arrays.

    The same semantics as ``torchrl_apply`` (step mode resets to zeros where
    ``is_init``; recurrent mode starts each trajectory from the stored state
    at its first step and, unless ``full_hidden_states``, writes zeros except
    at each trajectory's last step), with ``torch.nn.GRU``'s cell and one
    state array (torchrl's ``"recurrent_state"``).

    Args:
      params: ``torch.nn.GRU``'s arrays by name (``weight_ih_l0 [3H, I]``, ...).
      x: step ``[*S, I]``; recurrent ``[*B, T, I]``.
      h: stored hidden state, step ``[*S, L, H]``, recurrent ``[*B, T, L, H]``;
        None for zeros.
      is_init, recurrent, full_hidden_states, dropout_rate, dropout_rng,
        precision, remat: as in ``torchrl_apply``.

    Returns:
      ``(y, h_out)`` in ``x``'s dtype: step ``[*S, H]``, ``[*S, L, H]``;
      recurrent ``[*B, T, H]``, ``[*B, T, L, H]``.
    """
    return _apply(
        GRU_CELL,
        params,
        x,
        h,
        is_init,
        recurrent=recurrent,
        full_hidden_states=full_hidden_states,
        dropout_rate=dropout_rate,
        dropout_rng=dropout_rng,
        precision=precision,
        remat=remat,
    )


def _apply(
    cell,
    params,
    x,
    stored,
    is_init,
    *,
    recurrent,
    full_hidden_states,
    dropout_rate,
    dropout_rng,
    precision,
    remat,
):
    """torchrl's forward for any cell; ``stored`` is the cell's state or None."""
    if recurrent:
        config = CoreConfig(
            recurrent=True,
            reset_kind="per_step",
            start_from_reset=stored is not None,
            end_mask=not full_hidden_states,
            precision=precision,
            remat=bool(remat),
            dropout_rate=float(dropout_rate),
            input_projection=default_input_projection(),
            backward=default_backward(),
            cell=cell,
        )
        y, states = core(params, x, None, is_init, stored, dropout_rng, config=config)
    else:
        # Step mode: resets load zeros.
        config = CoreConfig(
            recurrent=False,
            precision=precision,
            remat=bool(remat),
            dropout_rate=float(dropout_rate),
            backward=default_backward(),
            cell=cell,
        )
        y, states = core(params, x, stored, is_init, None, dropout_rng, config=config)
    # torchrl writes every output in the input's dtype.
    dtype = jax.numpy.result_type(x)
    return y.astype(dtype), jax.tree.map(lambda a: a.astype(dtype), states)
