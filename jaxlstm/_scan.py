"""The core computation (prepare, run the layer stack, lay out), ``lstm_scan`` and ``gru_scan``.

``core`` is jitted with its static configuration, so every front end (an
un-jitted ``LSTM.apply``, ``lstm_scan``, ``torchrl_apply``) hits one compile
cache per configuration and input shape; under an outer ``jax.jit`` it is
inlined into the caller's program.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _params
from ._bidir import reverse_states_at_ends, run_bidirectional_stack
from ._cell import GRU_CELL, LSTM_CELL
from ._loop import Backward, run_stack
from ._prepare import ResetKind, batch_major, prepare, reset_kind_of
from ._state import LSTMState

InputProjection = Literal["auto", "per_step", "hoisted"]


@functools.cache
def default_input_projection() -> str:
    """Where each layer's input projection runs, chosen per backend from measurements.

    On XLA:CPU one large ``[T*N, I] x [I, 4H]`` matmul before the loop costs
    more than it saves (``benchmarks/`` measures it); on GPU/TPU hoisting it
    out of the loop is what cuDNN does.
    """
    return "per_step" if jax.default_backend() == "cpu" else "hoisted"


class CoreConfig(NamedTuple):
    """Static options of one compiled core program (hashable)."""

    recurrent: bool
    reset_kind: str = "constant"
    start_from_reset: bool = False  # torchrl: step 0 loads the stored state
    end_mask: bool = False  # torchrl: states zero except at each trajectory's last step
    dtype: Any = None
    precision: Any = None
    unroll: int | bool = 1
    remat: bool = False
    input_projection: str = "per_step"  # resolved: "per_step" | "hoisted"
    dropout_rate: float = 0.0
    backward: str = "custom"  # resolved: "custom" | "auto"
    cell: Any = LSTM_CELL  # the cell (LSTM_CELL, GRU_CELL): hashable, part of the program


def _core(params, x, state, is_init, reset_state, dropout_rng, *, config: CoreConfig):
    """Runs one call: ``(y, state)`` batch-major (see ``lstm_scan`` for shapes).

    ``state`` is the cell's state type (LSTM: ``LSTMState``; GRU: one array).
    """
    cell = config.cell
    p = prepare(
        params,
        x,
        state,
        is_init,
        reset_state,
        recurrent=config.recurrent,
        reset_kind=config.reset_kind,
        dtype=config.dtype,
        cell=cell,
    )
    resets = p.resets
    if config.start_from_reset:
        # torchrl's recurrent mode: every row starts from its stored state at step 0.
        resets = resets.at[0].set(True)
    layers, n = p.spec.num_layers, p.xs.shape[1]
    masks = None
    if dropout_rng is not None and config.dropout_rate > 0.0 and layers > 1:
        keep = 1.0 - config.dropout_rate
        width = p.spec.directions * cell.carry_widths(p.spec.hidden_size)[0]
        masks = jax.random.bernoulli(dropout_rng, keep, (layers - 1, p.steps, n, width))
        masks = masks.astype(p.compute_dtype) / jnp.asarray(keep, p.compute_dtype)
    bidirectional = p.spec.directions == 2
    run = run_bidirectional_stack if bidirectional else run_stack
    ys, carries = run(
        cell,
        p.weights,
        p.xs,
        p.carry0,
        resets,
        p.target,
        per_step_reset=p.reset_kind == "per_step",
        compute_dtype=p.compute_dtype,
        carry_dtype=p.carry_dtype,
        hoisted=config.input_projection == "hoisted",
        unroll=config.unroll,
        remat=config.remat,
        precision=config.precision,
        dropout_masks=masks,
        backward=config.backward,
        target_grad=reset_state is not None,
    )
    if config.end_mask:
        # torchrl's layout: zeros except where the next step starts a new
        # trajectory, and at the last step. Uses the caller's resets (not the
        # forced reset at step 0).
        end = jnp.concatenate([p.resets[1:], jnp.ones((1, n), jnp.bool_)], axis=0)
        if bidirectional:
            carries = reverse_states_at_ends(carries, resets)
        carries = tuple(jnp.where(end[:, :, None, None], c, 0) for c in carries)
    layout = functools.partial(batch_major, prepared=p, recurrent=config.recurrent)
    return layout(ys), cell.make_state(tuple(layout(c) for c in carries))


core = jax.jit(_core, static_argnames=("config",))


def resolve_input_projection(input_projection: str) -> str:
    if input_projection == "auto":
        return default_input_projection()
    if input_projection not in ("per_step", "hoisted"):
        raise ValueError(
            f"input_projection must be 'auto', 'per_step' or 'hoisted'. Got {input_projection!r}."
        )
    return input_projection


@functools.cache
def default_backward() -> str:
    """The backward pass used when none is chosen, per backend, from measurements.

    On XLA:CPU JAX's automatic backward measured 1.1-1.4x faster than the
    hand-written one (W1 and T=1024; ``benchmarks/README.md`` says why: the
    weight-gradient matmul after the loop runs on XLA:CPU's slow
    transposed-operand path), while the hand-written one plans less memory
    without ``remat``. Elsewhere the hand-written one (cuDNN's structure).
    """
    return "auto" if jax.default_backend() == "cpu" else "custom"


def check_backward(backward: str | None) -> str:
    if backward is None:
        return default_backward()
    if backward not in ("custom", "auto"):
        raise ValueError(f"backward must be 'custom', 'auto' or None. Got {backward!r}.")
    return backward


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
    backward: Backward | None = None,
) -> tuple[jax.Array, LSTMState]:
    """Runs a stacked LSTM over a sequence, resetting the state where ``is_init``.

    Reset rule: before the cell runs at step ``t``, wherever ``is_init[..., t]``
    is true the carried state is replaced by ``reset_state`` at ``t`` (zeros when
    ``reset_state`` is None). Resets are a mask inside the scan body, so one
    compiled program serves every reset pattern at the same cost.

    Args:
      params: ``{"params": {...}}`` or the inner dict, in ``torch.nn.LSTM``'s
        names and layout (see ``jaxlstm.params_from_torch_state_dict``).
      x: inputs ``[*B, T, I]``, real floating; time is the last batch axis.
      state: state before step 0, ``LSTMState`` of ``[*B, L, H]``; None is zeros.
      is_init: bool ``[*B, T]`` or ``[*B, T, 1]`` (integer 0/1 accepted); None
        means no resets.
      reset_state: what a reset loads: ``[*B, L, H]`` (the same at every step)
        or ``[*B, T, L, H]`` (per step); None is zeros. The two forms differ
        in rank, so its shape says which it is.
      dropout_rate: dropout on each layer's output except the last, as torch.
      dropout_rng: PRNG key; dropout is applied only when it is given and
        ``dropout_rate > 0``.
      dtype: compute (matmul) dtype, e.g. ``jnp.bfloat16``; None is
        ``jnp.result_type`` of ``x`` and the weights. Gate math and the
        carried state run in that dtype promoted to at least float32; weight
        gradients are summed over time in float32.
      precision: ``lax.dot_general`` precision of the matmuls.
      unroll: passed to ``lax.scan``.
      remat: keep only the states for the backward pass and recompute each
        step's gates from them (less memory, one more matmul per step).
      input_projection: ``"per_step"`` projects each step's input inside the
        loop; ``"hoisted"`` projects a layer's inputs for all steps first;
        ``"auto"`` picks per backend (``default_input_projection``).
      backward: ``"custom"``: the hand-written backward, a reverse scan
        carrying only ``(dh, dc)`` with the weight gradients as one matmul
        after it (summed per step with ``remat``); ``"auto"``: JAX
        differentiates the scan; None (default): per backend,
        ``default_backward()`` ("auto" on CPU, where it measured faster,
        "custom" on GPU/TPU).

    Returns:
      ``(y, states)``: ``y [*B, T, H]`` in the compute dtype, and the state after
      every step, ``LSTMState`` of ``[*B, T, L, H]``; ``states.h[..., -1, :, :]``
      is the true final state even when a row holds several trajectories.
    """
    return _scan(
        _params.lstm_cell_for(params),
        params,
        x,
        state,
        is_init,
        reset_state,
        dropout_rate=dropout_rate,
        dropout_rng=dropout_rng,
        dtype=dtype,
        precision=precision,
        unroll=unroll,
        remat=remat,
        input_projection=input_projection,
        backward=backward,
    )


def _scan(
    cell,
    params,
    x,
    state,
    is_init,
    reset_state,
    *,
    dropout_rate,
    dropout_rng,
    dtype,
    precision,
    unroll,
    remat,
    input_projection,
    backward,
):
    kind: ResetKind = "constant"
    if reset_state is not None and np.ndim(x) >= 2:
        kind = reset_kind_of(reset_state, tuple(np.shape(x)[:-2]), np.shape(x)[-2])
    config = CoreConfig(
        recurrent=True,
        reset_kind=kind,
        dtype=dtype,
        precision=precision,
        unroll=unroll,
        remat=bool(remat),
        input_projection=resolve_input_projection(input_projection),
        dropout_rate=float(dropout_rate),
        backward=check_backward(backward),
        cell=cell,
    )
    return core(params, x, state, is_init, reset_state, dropout_rng, config=config)


def gru_scan(
    params: Mapping[str, Any],
    x: jax.Array,
    state: jax.Array | None = None,
    is_init: jax.Array | None = None,
    reset_state: jax.Array | None = None,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    dtype: Any = None,
    precision: Any = None,
    unroll: int | bool = 1,
    remat: bool = False,
    input_projection: InputProjection = "auto",
    backward: Backward | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Runs a stacked GRU (``torch.nn.GRU``'s math) over a sequence, with resets.

    The same loop, reset rule and options as ``lstm_scan``; only the cell and
    the state differ: the state is one array.

    Args:
      params: ``torch.nn.GRU``'s arrays by name (``weight_ih_l0 [3H, I]``,
        ``weight_hh_l0 [3H, H]``, ``bias_ih_l0 [3H]``, ``bias_hh_l0 [3H]``, ...).
      x: inputs ``[*B, T, I]``.
      state: hidden state before step 0, ``[*B, L, H]``; None is zeros.
      is_init: bool ``[*B, T]`` or ``[*B, T, 1]``; None means no resets.
      reset_state: what a reset loads: ``[*B, L, H]`` or per step
        ``[*B, T, L, H]``; None is zeros.
      dropout_rate, dropout_rng, dtype, precision, unroll, remat,
        input_projection, backward: as in ``lstm_scan``.

    Returns:
      ``(y, states)``: ``y [*B, T, H]`` and the hidden state after every step,
      ``[*B, T, L, H]``.
    """
    return _scan(
        GRU_CELL,
        params,
        x,
        state,
        is_init,
        reset_state,
        dropout_rate=dropout_rate,
        dropout_rng=dropout_rng,
        dtype=dtype,
        precision=precision,
        unroll=unroll,
        remat=remat,
        input_projection=input_projection,
        backward=backward,
    )
