"""``bridge.LSTMModule`` / ``GRUModule``: stand-ins for torchrl's modules computed by ``jaxlstm``.

Both are ``_RecurrentModule``, which differs per class only by a ``_Table``
(state keys, the torch RNN's class and attribute, the jaxlstm cell and model).

A module keeps a real ``torch.nn.LSTM`` (``self.lstm``) or ``torch.nn.GRU``
(``self.gru``) for its parameters, so its ``state_dict`` is torchrl's, and runs
the math as one compiled JAX program per input shape
(``jaxlstm.torchrl_apply`` / ``torchrl_gru_apply``). A ``torch.autograd.Function``
around ``jax.vjp`` makes it differentiable.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import numpy as np
import torch
from jax import lax
from tensordict import TensorDictBase, unravel_key_list
from tensordict.nn import TensorDictModuleBase, dispatch
from torch import nn
from torch.autograd.function import once_differentiable

import jaxlstm

from ._buckets import TimeBuckets, pad_time, padded_length, resolve_time_buckets
from ._convert import torch_dtype_to_jax, torch_to_jax
from ._errors import DtypeError
from ._fork import check_not_forked
from ._hotpath import jax_arg as _jax_arg
from ._hotpath import torch_out as _torch_out
from ._params import ParamViews

__all__ = ["GRUModule", "LSTMModule"]

# torchrl's module that holds the process-wide recurrent mode of
# ``torchrl.modules.set_recurrent_mode``. Looked up in sys.modules on each call
# so that bridge never imports torchrl: if torchrl was never imported, nobody
# can have entered its context manager.
_TORCHRL_RNN = "torchrl.modules.tensordict_module.rnn"

_BACKENDS = ("auto", "pad", "scan", "triton")
_RECOMPUTE = ("none", "full")
# recurrent_matmul_precision -> JAX matmul precision. torchrl's modes name GPU
# matmul algorithms; JAX's precision levels are the nearest match: full IEEE
# float32 is HIGHEST, the 3-pass compensated tf32 is HIGH, plain tf32 DEFAULT.
_PRECISIONS = {
    "ieee": lax.Precision.HIGHEST,
    "tf32x3": lax.Precision.HIGH,
    "high-prec": lax.Precision.HIGH,
    "tf32": lax.Precision.DEFAULT,
    "fast": lax.Precision.DEFAULT,
}
# "auto" follows torch.get_float32_matmul_precision(), as torchrl's does.
_TORCH_PRECISIONS = {
    "highest": lax.Precision.HIGHEST,
    "high": lax.Precision.HIGH,
    "medium": lax.Precision.DEFAULT,
}


# --------------------------------------------------------------------------
# The pure JAX computation, compiled once per static config and input shape.
# --------------------------------------------------------------------------


class _Config(NamedTuple):
    """Static arguments of one compiled program (hashable)."""

    recurrent: bool
    full_hidden_states: bool
    precision: Any  # lax.Precision | None
    remat: bool
    dropout: float  # 0.0 unless dropout is applied (training mode)
    cell: str = "lstm"  # a key of _APPLY: which torchrl module's math


def _apply_lstm(params, x, states, is_init, **kwargs):
    h, c = (None, None) if states is None else states
    return jaxlstm.torchrl_apply(params, x, h, c, is_init, **kwargs)


def _apply_gru(params, x, states, is_init, **kwargs):
    h = None if states is None else states[0]
    return jaxlstm.torchrl_gru_apply(params, x, h, is_init, **kwargs)


# The cell-specific part of the JAX computation: torchrl's semantics per cell.
_APPLY = {"lstm": _apply_lstm, "gru": _apply_gru}


def _rnn_apply(
    params: dict[str, jax.Array],
    x: jax.Array,
    states: tuple[jax.Array, ...] | None,
    is_init: jax.Array,
    seed: jax.Array | None,
    *,
    config: _Config,
) -> tuple[jax.Array, ...]:
    """torchrl ``LSTMModule``/``GRUModule.forward``'s math on arrays shaped like the tensordict's.

    Args:
      params: the torch RNN's arrays by name (``weight_ih_l0 [gH, I]``, ...).
      x: step mode ``[*S, I]``; recurrent mode ``[*B, T, I]``.
      states: the stored states (LSTM ``(h, c)``, GRU ``(h,)``), each
        ``[*S, L, H]`` (step) or ``[*B, T, L, H]`` (recurrent); None for zeros.
      is_init: bool ``[*S]``/``[*S, 1]`` or ``[*B, T]``/``[*B, T, 1]``.
      seed: uint32 ``[]`` dropout seed, or None without dropout.
      config: static options.

    Returns:
      ``(y, *states_out)``: step mode ``[*S, H]``, ``[*S, L, H]`` each;
      recurrent mode ``[*B, T, H]``, ``[*B, T, L, H]`` each.
    """
    return tuple(
        _APPLY[config.cell](
            params,
            x,
            states,
            is_init,
            recurrent=config.recurrent,
            full_hidden_states=config.full_hidden_states,
            dropout_rate=config.dropout,
            dropout_rng=None if seed is None else jax.random.key(seed),
            precision=config.precision,
            remat=config.remat,
        )
    )


class _Programs(NamedTuple):
    """The compiled programs of one static config (jax.jit caches per input shape)."""

    forward: Callable  # (params, x, states, is_init, seed) -> (y, *states_out)
    forward_with_vjp: Callable  # same args -> ((y, *states_out), pullback)
    recompute_vjp: Callable  # (same args, cotangents) -> (d_params, d_x, d_states)


@functools.cache
def _programs(config: _Config) -> _Programs:
    apply = functools.partial(_rnn_apply, config=config)

    def forward_with_vjp(params, x, states, is_init, seed):
        # The pullback (jax.vjp's VJP object) is a pytree of residuals: returned
        # from this jitted function and passed into `_apply_vjp`, the backward
        # pass reuses the forward's residuals instead of recomputing them.
        return jax.vjp(lambda p, x, s: apply(p, x, s, is_init, seed), params, x, states)

    def recompute_vjp(params, x, states, is_init, seed, cotangents):
        return forward_with_vjp(params, x, states, is_init, seed)[1](cotangents)

    return _Programs(jax.jit(apply), jax.jit(forward_with_vjp), jax.jit(recompute_vjp))


@jax.jit
def _apply_vjp(vjp_fn, cotangents):
    return vjp_fn(cotangents)


def _meta_outputs(programs, names, tensors, x, states, is_init):
    """The outputs' shapes, as ``meta`` tensors, from ``jax.eval_shape`` of the program."""

    def spec(t):
        return (
            None if t is None else jax.ShapeDtypeStruct(tuple(t.shape), torch_dtype_to_jax(t.dtype))
        )

    params = {name: spec(t) for name, t in zip(names, tensors)}
    jax_states = None if states is None else tuple(spec(s) for s in states)
    shapes = jax.eval_shape(programs.forward, params, spec(x), jax_states, spec(is_init), None)
    # Every output is written in the input's dtype (as torchrl does).
    return tuple(torch.empty(s.shape, dtype=x.dtype, device="meta") for s in shapes)


# --------------------------------------------------------------------------
# Scoped float64. JAX has 64-bit types only with x64 enabled; instead of asking
# users to flip that process-wide, a float64 module enables it for its own
# computation (jax.enable_x64 is a thread-local context manager, and x64 is
# part of jit's cache key, so float32 programs are untouched).
# --------------------------------------------------------------------------


def _x64_scope(needed: bool) -> Any:
    if needed and not jax.config.jax_enable_x64:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


_WIDE = (torch.float64, torch.complex128)


def _x64_scope_for_module(forward: Callable) -> Callable:
    """Runs ``forward`` with JAX's x64 enabled when the RNN's parameters are float64."""

    @functools.wraps(forward)
    def wrapper(self, tensordict, *args, **kwargs):
        weight = getattr(self._rnn, self._param_names[0])
        with _x64_scope(weight.dtype in _WIDE):
            return forward(self, tensordict, *args, **kwargs)

    return wrapper


def _x64_scope_for_tensors(fn: Callable) -> Callable:
    """Runs ``fn`` with JAX's x64 enabled when one of its tensor arguments is float64."""

    @functools.wraps(fn)
    def wrapper(*args):
        wide = any(isinstance(a, torch.Tensor) and a.dtype in _WIDE for a in args)
        with _x64_scope(wide):
            return fn(*args)

    return wrapper


def _jax_states(states, cpu):
    return None if states is None else tuple(_jax_arg(s, cpu) for s in states)


class _RNNFunction(torch.autograd.Function):
    """The compiled RNN as a torch op; its backward is the JAX pullback.

    Inputs: ``(call, x, *states, *params)``, with ``call.n_states`` states
    (0 when the tensordict holds none: zeros). Outputs: ``(y, *states_out)``.

    Two strategies, chosen per call: recurrent mode keeps the forward's
    residuals (training calls backward, and a long sequence is costly to
    recompute); step mode runs the plain forward and recomputes its single
    step in backward, so rollouts that run with grad enabled but never call
    backward pay nothing for residuals.
    """

    @staticmethod
    def forward(ctx, call: _Call, x, *tensors):
        cpu = call.cpu
        states = tensors[: call.n_states] if call.n_states else None
        args = (
            call.jax_params,
            _jax_arg(x, cpu),
            _jax_states(states, cpu),
            call.is_init,
            call.seed,
        )
        if call.recompute:
            outputs = call.programs.forward(*args)
            ctx.args = args
        else:
            outputs, ctx.vjp_fn = call.programs.forward_with_vjp(*args)
        ctx.call = call
        # Saved so that torch raises its usual error if any of them is modified
        # in place before backward: the numpy/JAX views above alias them.
        ctx.save_for_backward(x, *tensors)
        return tuple(_torch_out(a, cpu) for a in outputs)

    @staticmethod
    @_x64_scope_for_tensors
    @once_differentiable
    def backward(ctx, *grads):
        _ = ctx.saved_tensors  # raises if an input was modified in place since forward
        call = ctx.call
        cpu = call.cpu
        cotangents = tuple(_jax_arg(g, cpu) for g in grads)
        if call.recompute:
            d_params, d_x, d_states = call.programs.recompute_vjp(*ctx.args, cotangents)
        else:
            d_params, d_x, d_states = _apply_vjp(ctx.vjp_fn, cotangents)
        needs = ctx.needs_input_grad
        out = [None, _torch_out(d_x, cpu) if needs[1] else None]
        for i in range(call.n_states):
            out.append(_torch_out(d_states[i], cpu) if needs[2 + i] else None)
        for i, name in enumerate(call.param_names, start=2 + call.n_states):
            out.append(_torch_out(d_params[name], cpu) if needs[i] else None)
        return tuple(out)


class _Call(NamedTuple):
    """What the autograd Function needs besides the tensors."""

    programs: _Programs
    recompute: bool
    jax_params: dict
    is_init: Any
    seed: Any
    cpu: bool
    param_names: tuple[str, ...]
    n_states: int  # stored states passed (0: none, zeros)


# --------------------------------------------------------------------------
# torch.compile: dynamo cannot trace into JAX (DLPack capsules, numpy views of
# XLA buffers), so the module's forward is a graph break. Compiled code around
# it (heads, losses) stays compiled; the RNN runs as its own XLA program.
# --------------------------------------------------------------------------

_graph_break = torch.compiler.disable


# --------------------------------------------------------------------------
# torch.func transforms (torch.vmap over inputs or parameters, torch.func.grad).
# Under a transform the tensors are functorch wrappers without memory of their
# own, so they cannot be shared with JAX. _TransformFunction is an autograd
# Function in the setup_context style that functorch accepts; its vmap rule does
# not loop: it records the vmapped dims of each input and re-applies itself to
# the underlying tensors, and the JAX program is wrapped in one jax.vmap per
# recorded level, so the vmapped dims become batch dims of one XLA computation.
# --------------------------------------------------------------------------


class _TransformSpec(NamedTuple):
    """Static description of one call through _TransformFunction (hashable)."""

    config: _Config
    param_names: tuple[str, ...]
    seed: Any  # np.uint32 | None: the dropout seed, shared by all vmapped rows
    cpu: bool
    n_states: int  # stored states passed (0: none, zeros)
    # One entry per torch.vmap level, innermost first:
    # ((axis of each parameter), x axis, (axis of each state) or None, is_init axis),
    # None for unmapped.
    levels: tuple = ()


def _under_functorch(*tensors: torch.Tensor | None) -> bool:
    return any(
        t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors
    )


def _vmapped(fn: Callable, param_names: tuple[str, ...], levels: tuple) -> Callable:
    """``fn(params, x, states, is_init, seed, *rest)`` under one ``jax.vmap`` per level.

    A level is ``(param axes, x, state axes, is_init axes, *axes of rest)``; the
    first level is the innermost vmap. Outputs are batched on axis 0 at every level.
    """
    for param_axes, x_axis, state_axes, init_axis, *rest in levels:
        in_axes = (dict(zip(param_names, param_axes)), x_axis, state_axes, init_axis, None, *rest)
        fn = jax.vmap(fn, in_axes=in_axes)
    return fn


@functools.cache
def _transform_forward(config: _Config, param_names: tuple[str, ...], levels: tuple) -> Callable:
    apply = functools.partial(_rnn_apply, config=config)
    return jax.jit(_vmapped(apply, param_names, levels))


@functools.cache
def _transform_vjp(
    config: _Config, param_names: tuple[str, ...], levels: tuple, vjp_levels: tuple
) -> Callable:
    """The pullback of ``_transform_forward(levels)``, itself vmapped over ``vjp_levels``.

    ``vjp_levels`` appear when the backward pass runs under vmap (per-sample
    gradients: ``torch.vmap(torch.func.grad(f))``).
    """
    apply = _vmapped(functools.partial(_rnn_apply, config=config), param_names, levels)

    def vjp(params, x, states, is_init, seed, grads):
        _, pullback = jax.vjp(lambda p, x, s: apply(p, x, s, is_init, seed), params, x, states)
        return pullback(grads)

    return jax.jit(_vmapped(vjp, param_names, vjp_levels))


def _split_states(spec: _TransformSpec, tensors: tuple) -> tuple[tuple | None, tuple]:
    n = spec.n_states
    return (tuple(tensors[:n]) if n else None), tuple(tensors[n:])


class _TransformFunction(torch.autograd.Function):
    """The RNN as a torch op that torch.func transforms (vmap, grad) can see through.

    Inputs: ``(spec, x, is_init, *states, *params)`` with ``spec.n_states``
    states (0 when absent). The backward is another such op
    (``_TransformVJP``), which recomputes the forward inside ``jax.vjp``, so
    that ``torch.func.grad`` and ``torch.vmap(torch.func.grad(...))`` can see
    through it as well.
    """

    @staticmethod
    def forward(spec: _TransformSpec, x, is_init, *tensors):
        forward = _transform_forward(spec.config, spec.param_names, spec.levels)
        states, params = _split_states(spec, tensors)
        with _x64_scope(x.dtype in _WIDE):
            outputs = forward(*_transform_args(spec, x, states, is_init, params))
            return tuple(_torch_out(a, spec.cpu) for a in outputs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec, x, is_init, *tensors = inputs
        ctx.spec = spec
        ctx.save_for_backward(x, is_init, *tensors)

    @staticmethod
    def backward(ctx, *grads):
        x, is_init, *tensors = ctx.saved_tensors
        grads_in = _TransformVJP.apply((ctx.spec, ()), x, is_init, *grads, *tensors)
        return (None, grads_in[0], None, *grads_in[1:])

    @staticmethod
    def vmap(info, in_dims, spec: _TransformSpec, x, is_init, *tensors):
        _, x_axis, init_axis, *axes = in_dims
        n = spec.n_states
        state_axes = tuple(axes[:n]) if n else None
        level = (tuple(axes[n:]), x_axis, state_axes, init_axis)
        spec = spec._replace(levels=spec.levels + (level,))
        outputs = _TransformFunction.apply(spec, x, is_init, *tensors)
        return outputs, (0,) * len(outputs)


class _TransformVJP(torch.autograd.Function):
    """The backward of ``_TransformFunction``, as a torch op with its own vmap rule.

    Inputs: ``((spec, vjp_levels), x, is_init, *grads, *states, *params)`` with
    ``1 + n_outputs_states`` grads. Returns ``(d_x, *d_states, *d_params)``.
    Not differentiable again.
    """

    @staticmethod
    def forward(specs, x, is_init, *tensors):
        spec, vjp_levels = specs
        n_out = _n_out_states(spec)
        grads, rest = tensors[: 1 + n_out], tensors[1 + n_out :]
        states, params = _split_states(spec, rest)
        vjp = _transform_vjp(spec.config, spec.param_names, spec.levels, vjp_levels)
        cpu = spec.cpu
        with _x64_scope(x.dtype in _WIDE):
            cotangents = tuple(_jax_arg(g.contiguous(), cpu) for g in grads)
            d_params, d_x, d_states = vjp(
                *_transform_args(spec, x, states, is_init, params), cotangents
            )
            out = [d_x] + (list(d_states) if states is not None else [])
            out += [d_params[name] for name in spec.param_names]
            return tuple(_torch_out(d, cpu) for d in out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(
            "bridge's recurrent modules support first-order gradients only (no double backward)."
        )

    @staticmethod
    def vmap(info, in_dims, specs, x, is_init, *tensors):
        spec, vjp_levels = specs
        n_out = _n_out_states(spec)
        _, x_axis, init_axis, *axes = in_dims
        grad_axes, rest = tuple(axes[: 1 + n_out]), axes[1 + n_out :]
        n = spec.n_states
        state_axes = tuple(rest[:n]) if n else None
        level = (tuple(rest[n:]), x_axis, state_axes, init_axis, grad_axes)
        outputs = _TransformVJP.apply((spec, vjp_levels + (level,)), x, is_init, *tensors)
        return outputs, (0,) * len(outputs)


def _n_out_states(spec: _TransformSpec) -> int:
    # The outputs always hold every state of the cell, even when none was passed in.
    return len(_TABLES[spec.config.cell].state_keys)


def _transform_args(spec: _TransformSpec, x, states, is_init, params) -> tuple:
    cpu = spec.cpu
    jax_params = {name: _jax_arg(p.contiguous(), cpu) for name, p in zip(spec.param_names, params)}
    return (
        jax_params,
        _jax_arg(x, cpu),
        _jax_states(states, cpu),
        _jax_arg(is_init, cpu),
        spec.seed,
    )


class _Table(NamedTuple):
    """What differs between the bridge's recurrent modules: the rest is shared."""

    name: str  # the class name, as torchrl's: "LSTMModule"
    cell: str  # the key of _APPLY (and _Config.cell)
    attr: str  # the attribute holding the torch RNN, as torchrl's: "lstm"
    torch_mode: str  # nn.RNNBase.mode of the torch RNN: "LSTM"
    state_keys: tuple[str, ...]  # the default state keys, in order
    states_phrase: str  # for the key-count messages: "two hidden states"
    model: type  # the Flax module of to_jax
    jax_cell: Callable  # torch RNN -> the jaxlstm cell (its parameter table)
    state_widths: Callable  # torch RNN -> the last axis of each state (LSTMP: (P, H))
    model_kwargs: Callable  # torch RNN -> extra fields of the Flax module


def _directions(rnn: nn.Module) -> int:
    return 2 if rnn.bidirectional else 1


def _check_backend_options(
    recurrent_backend: str, recurrent_recompute: str, recurrent_matmul_precision: str
) -> None:
    # The same checks, in the same order and with the same messages, as
    # torchrl 0.14's constructors.
    if recurrent_backend not in _BACKENDS:
        raise ValueError(
            "recurrent_backend must be one of 'auto', 'pad', 'scan' or 'triton'. "
            f"Got {recurrent_backend}."
        )
    if recurrent_recompute not in _RECOMPUTE:
        raise ValueError(
            f"recurrent_recompute must be one of 'none' or 'full'. Got {recurrent_recompute}."
        )
    if recurrent_recompute != "none" and recurrent_backend in {"pad", "auto"}:
        raise ValueError(
            "recurrent_recompute is only supported for recurrent_backend "
            "'scan' and 'triton'. Set recurrent_backend explicitly: "
            "'auto' may select cuDNN's 'pad' backend, which manages its "
            "own backward workspace."
        )
    if recurrent_matmul_precision != "auto" and recurrent_matmul_precision not in _PRECISIONS:
        raise ValueError(
            f"Invalid recurrent_matmul_precision={recurrent_matmul_precision!r}. "
            f"Expected one of {sorted(['auto', *_PRECISIONS])}."
        )


def _check_new_rnn(
    hidden_size: Any, batch_first: bool, python_based: bool, bidirectional: bool, table: _Table
) -> None:
    if not batch_first:
        raise ValueError(f"The input {table.attr} must have batch_first=True.")
    if not hidden_size:
        # torchrl's message, plus the value when one was given.
        got = "" if hidden_size is None else f" Got hidden_size={hidden_size!r}."
        raise ValueError(f"hidden_size must be passed.{got}")
    if hidden_size < 0:
        # torch.nn.LSTM's message, plus the value.
        raise ValueError(f"hidden_size must be greater than zero. Got {hidden_size}.")
    if python_based and bidirectional:
        raise ValueError(f"python_based=True does not support bidirectional {table.torch_mode}s.")


def _check_given_rnn(rnn: nn.Module, input_size: Any, hidden_size: Any, table: _Table) -> None:
    if not rnn.batch_first:
        raise ValueError(f"The input {table.attr} must have batch_first=True.")
    if input_size is not None or hidden_size is not None:
        raise ValueError(
            f"An {table.torch_mode} instance cannot be passed along with class argument."
        )
    if getattr(rnn, "mode", None) != table.torch_mode:
        raise TypeError(
            f"{table.attr} must be a torch.nn.{table.torch_mode}. Got {type(rnn).__name__}."
        )


class _RecurrentModule(TensorDictModuleBase):
    """What ``LSTMModule`` and ``GRUModule`` share: everything but a ``_Table``.

    Subclasses define ``_table``, the default keys and a constructor with
    torchrl's signature that ends in ``_setup``.
    """

    _table: ClassVar[_Table]
    DEFAULT_IN_KEYS: ClassVar[list]
    DEFAULT_OUT_KEYS: ClassVar[list]

    def _setup(
        self,
        rnn: nn.Module,
        *,
        in_key: Any,
        in_keys: Any,
        out_key: Any,
        out_keys: Any,
        default_recurrent_mode: bool | None,
        recurrent_backend: str,
        recurrent_compute_dtype: torch.dtype,
        recurrent_recompute: str,
        recurrent_matmul_precision: str,
        python_based: bool,
        full_hidden_states: bool,
        time_buckets: TimeBuckets,
    ) -> None:
        table = self._table
        if not ((in_key is None) ^ (in_keys is None)):
            raise ValueError(
                "Either in_keys or in_key must be specified but not both or none. "
                f"Got {in_keys} and {in_key} respectively."
            )
        elif in_key:
            in_keys = [in_key, *self.DEFAULT_IN_KEYS]
        if not ((out_key is None) ^ (out_keys is None)):
            raise ValueError(
                "Either out_keys or out_key must be specified but not both or none. "
                f"Got {out_keys} and {out_key} respectively."
            )
        elif out_key:
            out_keys = [out_key, *self.DEFAULT_OUT_KEYS]
        in_keys = unravel_key_list(in_keys)
        out_keys = unravel_key_list(out_keys)
        n = 1 + len(table.state_keys)
        if not isinstance(in_keys, (tuple, list)) or (
            len(in_keys) != n and not (len(in_keys) == n + 1 and in_keys[-1] == "is_init")
        ):
            raise ValueError(
                f"{table.name} expects {n} inputs: a value, and {table.states_phrase} (and "
                f"potentially an 'is_init' marker). Got in_keys {in_keys} instead."
            )
        if not isinstance(out_keys, (tuple, list)) or len(out_keys) != n:
            raise ValueError(
                f"{table.name} expects {n} outputs: a value, and {table.states_phrase}. "
                f"Got out_keys {out_keys} instead."
            )

        setattr(self, table.attr, rnn)
        if "is_init" not in in_keys:
            in_keys = in_keys + ["is_init"]
        self.in_keys = in_keys
        self.out_keys = out_keys
        self._recurrent_mode = default_recurrent_mode
        self.recurrent_backend = recurrent_backend
        self.recurrent_compute_dtype = recurrent_compute_dtype
        self.recurrent_recompute = recurrent_recompute
        self.recurrent_matmul_precision = recurrent_matmul_precision
        self.python_based = python_based
        self.full_hidden_states = bool(full_hidden_states)
        self.time_buckets = time_buckets
        self._time_bucket = resolve_time_buckets(time_buckets)
        self._param_names = tuple(
            jaxlstm.lstm_param_shapes(
                rnn.input_size,
                rnn.hidden_size,
                rnn.num_layers,
                rnn.bias,
                cell=table.jax_cell(rnn),
                bidirectional=rnn.bidirectional,
            )
        )
        self._param_views = ParamViews(self._param_names)

    @property
    def _rnn(self) -> nn.Module:
        """The wrapped torch RNN (``self.lstm`` / ``self.gru``)."""
        return getattr(self, self._table.attr)

    def __getstate__(self) -> dict[str, Any]:
        # The JAX views of the parameters are a cache: pickles (torch.save,
        # multiprocess collectors) rebuild them on the first call.
        state = dict(super().__getstate__())
        state["_param_views"] = ParamViews(self._param_names)
        return state

    # ------------------------------------------------------------------ mode

    @property
    def recurrent_mode(self) -> bool:
        """Whether forward expects sequences; torchrl's context manager wins over the default."""
        rnn = sys.modules.get(_TORCHRL_RNN)
        if rnn is not None:
            mode = rnn.recurrent_mode()
            if mode is not None:
                return mode
        return bool(self._recurrent_mode)

    @recurrent_mode.setter
    def recurrent_mode(self, value):
        raise RuntimeError(
            "recurrent_mode cannot be changed in-place. Please use the set_recurrent_mode "
            "context manager."
        )

    def set_recurrent_mode(self, mode: bool = True) -> _RecurrentModule:
        """Returns a copy in the given mode that shares this module's torch RNN.

        The behaviour of the ``set_recurrent_mode`` method that torchrl's
        documentation shows (torchrl 0.14.1's method raises a RuntimeError,
        saying it was removed in v0.8): one set of parameters, used step by
        step in one policy and over sequences in another. The copy is ``self``
        when the mode does not change. torchrl's ``set_recurrent_mode`` context
        manager still overrides the copy's mode while it is active.

        Args:
          mode: True for recurrent mode, False for step mode.

        Returns:
          A module of the same class with ``default_recurrent_mode=mode``.
        """
        mode = bool(mode)
        if mode == bool(self._recurrent_mode):
            return self
        return self._wrap(
            self._rnn,
            in_keys=list(self.in_keys),
            out_keys=list(self.out_keys),
            default_recurrent_mode=mode,
        )

    def _wrap(self, rnn: nn.Module, **overrides: Any) -> _RecurrentModule:
        kwargs = {
            "recurrent_backend": self.recurrent_backend,
            "recurrent_compute_dtype": self.recurrent_compute_dtype,
            "recurrent_recompute": self.recurrent_recompute,
            "recurrent_matmul_precision": self.recurrent_matmul_precision,
            "python_based": self.python_based,
            "default_recurrent_mode": self._recurrent_mode,
            "full_hidden_states": self.full_hidden_states,
            "time_buckets": self.time_buckets,
        }
        kwargs.update(overrides)
        out = type(self)(**{self._table.attr: rnn}, **kwargs)
        out.train(self.training)
        return out

    @property
    def temporal_mode(self):
        raise RuntimeError("temporal_mode is deprecated, use recurrent_mode instead.")

    def make_python_based(self) -> _RecurrentModule:
        """Returns self: there is a single (JAX) implementation. For torchrl compatibility."""
        return self

    def make_cudnn_based(self) -> _RecurrentModule:
        """Returns self: there is a single (JAX) implementation. For torchrl compatibility."""
        return self

    # ------------------------------------------------ memory layout (torchrl 0.13+)

    @property
    def canonical_keys(self) -> list:
        """The keys whose memory layout matters to this module: ``in_keys + out_keys``.

        torchrl's API (read by ``torchrl.modules.canonicalize_rnn_subset``).
        """
        return [*self.in_keys, *self.out_keys]

    def canonicalize(self, data: TensorDictBase, *, inplace: bool = False) -> TensorDictBase:
        """Gives the leaves under ``canonical_keys`` a canonical (row-major) layout.

        As torchrl's method: keys that ``data`` lacks are skipped, other leaves
        are left as they are (no full-batch copy). The bridge does not need it
        for correctness (non-contiguous inputs are copied on their way to JAX),
        but a contiguous input is shared with XLA instead of copied.

        Args:
          data: a TensorDict.
          inplace: write the canonical leaves into ``data`` and return it.
            Default False: a shallow copy of ``data`` is returned and ``data``
            is left untouched.

        Returns:
          ``data`` or its shallow copy, with the canonical leaves.
        """
        present = data.keys(include_nested=True)
        keys = [key for key in self.canonical_keys if key in present]
        if not keys:
            return data
        selected = data.select(*keys)
        try:
            canonical = selected.contiguous(canonical=True)
        except TypeError:  # a tensordict release without the canonical flag
            canonical = selected.contiguous()
        out = data if inplace else data.copy()
        out.update(canonical)
        return out

    # ------------------------------------------------------------ interop

    @classmethod
    def from_torch(
        cls,
        module: nn.Module,
        *,
        in_key: Any = None,
        in_keys: Sequence[Any] | None = None,
        out_key: Any = None,
        out_keys: Sequence[Any] | None = None,
        default_recurrent_mode: bool | None = None,
        full_hidden_states: bool = False,
        time_buckets: TimeBuckets = "auto",
    ) -> _RecurrentModule:
        """Builds this module from torchrl's module of the same name or a torch RNN.

        ``LSTMModule.from_torch`` takes a torchrl ``LSTMModule`` or a
        ``torch.nn.LSTM``; ``GRUModule.from_torch`` a torchrl ``GRUModule`` or
        a ``torch.nn.GRU``.

        From a torchrl module the keys, default mode and backend options are
        taken over (keyword arguments given here win). The new module wraps
        the same torch RNN, so the two share parameters, like torchrl's
        ``lstm=``/``gru=`` argument; ``copy.deepcopy(module)`` first for independent
        weights.

        Args:
          module: a torchrl module or a torch RNN (``batch_first=True``).
          in_key, in_keys, out_key, out_keys: the keys, as in the constructor;
            required for a torch RNN.
          default_recurrent_mode: the default mode (torchrl module: its own).
          full_hidden_states, time_buckets: see the constructor.

        Returns:
          A module of this class.
        """
        keys = {"in_key": in_key, "in_keys": in_keys, "out_key": out_key, "out_keys": out_keys}
        attr = cls._table.attr
        if isinstance(module, nn.RNNBase):
            return cls(
                **{attr: module},
                default_recurrent_mode=default_recurrent_mode,
                full_hidden_states=full_hidden_states,
                time_buckets=time_buckets,
                **keys,
            )
        rnn = getattr(module, attr, None)
        if not isinstance(rnn, nn.RNNBase):
            raise TypeError(
                f"from_torch expects a torchrl {cls._table.name} or a torch.nn."
                f"{cls._table.torch_mode}. Got {type(module).__name__}."
            )
        if in_key is None and in_keys is None:
            keys["in_keys"] = list(module.in_keys)
        if out_key is None and out_keys is None:
            keys["out_keys"] = list(module.out_keys)
        if default_recurrent_mode is None:
            default_recurrent_mode = getattr(module, "_recurrent_mode", None)
        options = {
            name: getattr(module, name)
            for name in (
                "recurrent_backend",
                "recurrent_compute_dtype",
                "recurrent_recompute",
                "recurrent_matmul_precision",
            )
            if hasattr(module, name)
        }
        out = cls(
            **{attr: rnn},
            default_recurrent_mode=default_recurrent_mode,
            full_hidden_states=full_hidden_states,
            time_buckets=time_buckets,
            **options,
            **keys,
        )
        out.train(module.training)
        return out

    def to_jax(self) -> tuple[Any, dict[str, dict[str, jax.Array]]]:
        """Returns the Flax model and a copy of the parameters, for JAX-side training.

        ``model.apply(params, x, state, is_init)`` computes what this module
        computes, with ``jaxlstm.LSTM``'s / ``jaxlstm.GRU``'s conventions (its recurrent mode
        returns the state after every step). Load trained parameters back with
        ``load_jax_params``.

        Returns:
          ``(model, {"params": {"weight_ih_l0": [gH, I], ...}})`` with ``model``
          a ``jaxlstm.LSTM`` or ``jaxlstm.GRU``; the arrays
          are copies, so torch-side updates do not reach them.
        """
        lstm = self._rnn
        model = self._table.model(
            hidden_size=lstm.hidden_size,
            num_layers=lstm.num_layers,
            use_bias=lstm.bias,
            dropout=float(lstm.dropout),
            recurrent_mode=self.recurrent_mode,
            remat=self.recurrent_recompute == "full",
            precision=self._precision(),
            **self._table.model_kwargs(lstm),
        )
        params = {name: torch_to_jax(getattr(lstm, name), copy=True) for name in self._param_names}
        return model, {"params": params}

    @torch.no_grad()
    def load_jax_params(self, params: Any) -> None:
        """Copies ``jaxlstm`` parameters into the torch RNN's parameters, in place.

        Args:
          params: ``{"params": {...}}`` or the inner dict, with torch's names
            and shapes (as returned by ``to_jax`` or ``jaxlstm.LSTM.init`` /
            ``jaxlstm.GRU.init``).

        Raises:
          ValueError: names or shapes that differ from this module's.
        """
        arrays = jaxlstm.params_to_torch_state_dict(params)
        if set(arrays) != set(self._param_names):
            raise ValueError(
                f"params must hold exactly {sorted(self._param_names)}. Got {sorted(arrays)}."
            )
        for name in self._param_names:
            target = getattr(self._rnn, name)
            value = np.asarray(arrays[name])
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"params[{name!r}] must have shape {tuple(target.shape)}. "
                    f"Got {tuple(value.shape)}."
                )
        for name in self._param_names:
            getattr(self._rnn, name).copy_(torch.from_numpy(np.array(arrays[name])))

    def make_tensordict_primer(self):
        """Makes torchrl's ``TensorDictPrimer`` for the recurrent states, as torchrl's method.

        Needs torchrl. Each out state key must be ``("next", <in state key>)``.

        Returns:
          ``torchrl.envs.TensorDictPrimer`` with ``Unbounded`` specs of shape
          ``[L, H]`` for every state key (LSTM: two, GRU: one).

        Raises:
          ImportError: torchrl is not installed.
          RuntimeError: the in and out state keys do not match.
        """
        try:
            from torchrl.data.tensor_specs import Unbounded
            from torchrl.envs.transforms.transforms import TensorDictPrimer
        except ImportError as err:
            raise ImportError(
                f"{self._table.name}.make_tensordict_primer() builds a torchrl TensorDictPrimer "
                "and needs torchrl: pip install torchrl."
            ) from err

        def make_tuple(key):
            return key if isinstance(key, tuple) else (key,)

        n = len(self._table.state_keys)
        in_state = [make_tuple(k) for k in self.in_keys[1 : 1 + n]]
        out_state = [make_tuple(k) for k in self.out_keys[1 : 1 + n]]
        if any(o != ("next", *i) for i, o in zip(in_state, out_state)):
            raise RuntimeError(
                "make_tensordict_primer is supposed to work with in_keys/out_keys that "
                "have compatible names, ie. the out_keys should be named after ('next', "
                f"<in_key>). Got in_keys={self.in_keys} and out_keys={self.out_keys} instead."
            )
        rnn = self._rnn
        widths = self._table.state_widths(rnn)
        return TensorDictPrimer(
            {
                key: Unbounded(shape=(rnn.num_layers * _directions(rnn), width))
                for key, width in zip(in_state, widths)
            },
            expand_specs=True,
        )

    # ------------------------------------------------------------- forward

    def _precision(self) -> Any:
        mode = self.recurrent_matmul_precision
        if mode == "auto":
            return _TORCH_PRECISIONS.get(torch.get_float32_matmul_precision())
        return _PRECISIONS[mode]

    def _read_inputs(self, tensordict: TensorDictBase, recurrent: bool, weight: torch.Tensor):
        """Fetches and validates the inputs; raises before anything is written."""
        shape = tuple(tensordict.batch_size)
        if recurrent and not shape:
            raise ValueError(
                f"{self._table.name}(recurrent_mode=True) requires the input tensordict to "
                "have at least one batch dim (time). Got a 0-d tensordict."
            )
        n = len(self._table.state_keys)
        value_key, state_keys, init_key = (
            self.in_keys[0],
            self.in_keys[1 : 1 + n],
            self.in_keys[1 + n],
        )
        value = tensordict.get(value_key, None)
        states = [tensordict.get(key, None) for key in state_keys]
        is_init = tensordict.get(init_key, None)
        missing = [k for k, v in ((value_key, value), (init_key, is_init)) if v is None]
        absent = [k for k, v in zip(state_keys, states) if v is None]
        if absent and len(absent) < n:
            missing += absent
        if missing:
            all_absent = "the two state keys may both" if n > 1 else "the state key may"
            raise KeyError(
                f"{self._table.name}: key(s) {missing} not found in the tensordict (in_keys="
                f"{self.in_keys}; {all_absent} be absent, meaning zeros)."
            )
        states = None if absent else tuple(states)

        lstm = self._rnn
        expected = shape + (lstm.input_size,)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{value_key!r} must be a tensor. Got {type(value).__name__}.")
        if tuple(value.shape) != expected:
            if value.ndim == len(expected):
                detail = f"{value.shape[-1]} features but input_size={lstm.input_size}"
            else:
                detail = "a feature dim after the batch dims"
            raise ValueError(
                f"{value_key!r} must have shape [*batch, input_size]={expected} "
                f"({detail}). Got {tuple(value.shape)}."
            )
        if value.dtype != weight.dtype:
            # torchrl checks this as a ValueError; DtypeError is both.
            raise DtypeError(
                f"{value_key!r} has dtype {value.dtype} but the {self._table.torch_mode}'s "
                "parameters are "
                f"{weight.dtype}."
            )
        if value.device != weight.device:
            raise ValueError(
                f"{value_key!r} is on {value.device} but the {self._table.torch_mode}'s "
                "parameters are on "
                f"{weight.device}."
            )
        if states is not None:
            for key, state, width in zip(state_keys, states, self._table.state_widths(lstm)):
                state_shape = shape + (lstm.num_layers * _directions(lstm), width)
                last = "hidden_size" if width == lstm.hidden_size else "proj_size"
                if not isinstance(state, torch.Tensor):
                    raise TypeError(f"{key!r} must be a tensor. Got {type(state).__name__}.")
                if tuple(state.shape) != state_shape:
                    raise ValueError(
                        f"{key!r} must have shape [*batch, num_layers * directions, {last}]="
                        f"{state_shape}. Got {tuple(state.shape)}."
                    )
                if state.dtype != value.dtype:
                    raise DtypeError(
                        f"{key!r} must have the dtype of {value_key!r} ({value.dtype}). "
                        f"Got {state.dtype}."
                    )
                if state.device != value.device:
                    raise ValueError(
                        f"{key!r} must be on the device of {value_key!r} ({value.device}). "
                        f"Got {state.device}."
                    )
        if not isinstance(is_init, torch.Tensor):
            raise TypeError(f"{init_key!r} must be a tensor. Got {type(is_init).__name__}.")
        if tuple(is_init.shape) not in (shape, shape + (1,)):
            raise ValueError(
                f"{init_key!r} must have shape {shape + (1,)} (or {shape}). "
                f"Got {tuple(is_init.shape)}."
            )
        if is_init.dtype != torch.bool:
            # torchrl accepts integer and float markers (its recurrent mode reads
            # any non-zero value as a reset); so do we, in both modes.
            is_init = is_init != 0
        if recurrent and shape[-1] == 0:
            # torchrl fails here with an IndexError deep in its padding code.
            raise ValueError(
                f"{value_key!r} must hold at least one time step in recurrent mode (time is "
                f"the last batch dim). Got batch size {shape}, T=0."
            )
        return value, states, is_init

    @dispatch
    @_graph_break
    @_x64_scope_for_module
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Runs one step, or sequences in recurrent mode, and writes the out keys.

        Args:
          tensordict: holds the in keys (see the class docstring for shapes).

        Returns:
          ``tensordict``, with ``out_keys`` written (values, then states).

        Raises:
          KeyError: a missing input (the value or ``"is_init"``; or one state
            key without the other), naming the key(s).
          ValueError: a 0-d tensordict in recurrent mode; a value whose
            feature size is not ``input_size``; states not ``[*batch, L, H]``;
            an ``is_init`` of another shape. The messages name the key and give
            the expected and actual shapes.
          DtypeError: (a ``TypeError`` and a ``ValueError``, as torchrl raises
            ``ValueError``) a value whose dtype differs from the parameters', or
            states whose dtype differs from the value's.

        On error nothing is written to ``tensordict``.
        """
        check_not_forked(type(self).__name__)
        recurrent = self.recurrent_mode
        lstm = self._rnn
        tensors = [getattr(lstm, name) for name in self._param_names]
        x, states, is_init = self._read_inputs(tensordict, recurrent, tensors[0])
        steps = padded = None
        if recurrent and self._time_bucket is not None:
            # One program per bucket, not per T (see bridge._buckets).
            time_dim = tensordict.batch_dims - 1
            steps = tensordict.batch_size[-1]
            padded = padded_length(self._time_bucket, steps) if steps else steps
            x = pad_time(x, -2, padded)
            if states is not None:
                states = tuple(pad_time(s, -3, padded) for s in states)
            is_init = pad_time(is_init, time_dim, padded, value=True)

        dropout = float(lstm.dropout) if self.training and lstm.num_layers > 1 else 0.0
        config = _Config(
            recurrent=recurrent,
            full_hidden_states=self.full_hidden_states,
            precision=self._precision(),
            remat=self.recurrent_recompute == "full",
            dropout=dropout,
            cell=self._table.cell,
        )
        programs = _programs(config)
        seed = None
        if dropout > 0.0:
            seed = np.uint32(torch.randint(0, 2**31 - 1, ()).item())
        cpu = x.device.type == "cpu"
        if x.device.type == "meta":
            # No data: shapes only, as torch's own modules do on "meta".
            outputs = _meta_outputs(programs, self._param_names, tensors, x, states, is_init)
        elif _under_functorch(x, *(states or ()), is_init, *tensors):
            # torch.vmap / torch.func: the tensors are functorch wrappers with no
            # memory of their own; see _TransformFunction.
            n_states = 0 if states is None else len(states)
            spec = _TransformSpec(config, self._param_names, seed, cpu, n_states, ())
            outputs = _TransformFunction.apply(spec, x, is_init, *(states or ()), *tensors)
        else:
            outputs = self._compute(programs, tensors, x, states, is_init, seed, cpu, recurrent)
        y, *states_out = outputs
        if padded != steps:
            y = y[..., :steps, :]
            states_out = [s[..., :steps, :, :] for s in states_out]
        out_keys = self.out_keys
        tensordict.set(out_keys[0], y)
        for key, state in zip(out_keys[1:], states_out):
            tensordict.set(key, state)
        return tensordict

    def _compute(self, programs, tensors, x, states, is_init, seed, cpu, recurrent):
        """Runs the compiled program, through autograd when a gradient can flow."""
        params = self._param_views(tensors, cpu)
        jax_init = _jax_arg(is_init, cpu)

        if torch.is_grad_enabled() and (
            x.requires_grad
            or (states is not None and any(s.requires_grad for s in states))
            or any(t.requires_grad for t in tensors)
        ):
            if not recurrent:
                jax_init = jax_init.copy()  # backward recomputes from it
            n_states = 0 if states is None else len(states)
            call = _Call(
                programs, not recurrent, params, jax_init, seed, cpu, self._param_names, n_states
            )
            return _RNNFunction.apply(call, x, *(states or ()), *tensors)
        return tuple(
            _torch_out(a, cpu)
            for a in programs.forward(
                params, _jax_arg(x, cpu), _jax_states(states, cpu), jax_init, seed
            )
        )


class LSTMModule(_RecurrentModule):
    """torchrl's ``LSTMModule``, computed by JAX (``jaxlstm``).

    A drop-in replacement for ``torchrl.modules.LSTMModule`` (torchrl 0.14):
    the same constructor, keys, outputs, ``state_dict`` and gradients, with the
    LSTM run as one compiled XLA program per input shape.

    Layouts (``S`` the tensordict's batch size; ``L`` layers, ``H`` hidden):

    * step mode (default): reads ``in_keys[0]`` ``[*S, I]``, the stored states
      ``in_keys[1:3]`` ``[*S, L, H]`` (missing: zeros) and ``"is_init"``
      ``[*S, 1]`` (or ``[*S]``), bool. Where ``is_init`` is true the stored
      state is replaced by zeros. Writes ``out_keys[0]`` ``[*S, H]`` and the
      next states ``out_keys[1:3]`` ``[*S, L, H]``.
    * recurrent mode: ``S = (*B, T)``, time last, at least one batch dim. Each
      trajectory in a row (a new one starts wherever ``is_init``) starts from
      the state stored at its first step. Writes ``[*B, T, H]`` and states
      ``[*B, T, L, H]`` that are zero except at each trajectory's last step
      (torchrl's layout), or, with ``full_hidden_states=True``, the state after
      every step.

    Pipelines: under ``torch.compile`` the forward is a graph break (the LSTM
    runs as its own XLA program); ``torch.vmap`` (over inputs or parameters)
    and ``torch.func.grad`` map onto ``jax.vmap`` / ``jax.vjp`` through the
    autograd Function's vmap rule; float64 parameters enable JAX's x64 mode
    for this module's computation only.

    Devices: the computation runs where the parameters are. CPU tensors are
    handed to XLA through numpy views (the fastest route for small steps);
    GPU tensors go through DLPack and stay on the device. When torch and JAX
    share one GPU, set ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` before JAX
    starts, or JAX reserves most of the memory torch needs.

    Args:
      input_size: I, the input features.
      hidden_size: H.
      num_layers: L. Default 1.
      bias: whether the layers have biases. Default True.
      batch_first: must be True (as torchrl requires).
      dropout: dropout on the outputs of every layer but the last, in training
        mode (``module.train()``), with masks drawn from torch's RNG. Default 0.
      proj_size: torch's LSTMP: ``P > 0`` projects ``h`` to ``[..., P]``; the
        ``h`` state key holds ``[*S, L, P]``, the ``c`` key ``[*S, L, H]``. Works
        in both modes (torchrl 0.14.1's own module crashes in step mode with a
        projection; this one matches ``nn.LSTM``).
      bidirectional: torch's bidirectional layers; the state keys hold
        ``[*S, 2L, W]`` (torch's ``[L * D, W]`` order). Recurrent mode runs
        each trajectory forwards and backwards on its own, as torchrl does.
      python_based: accepted for compatibility; torchrl's choice of a Python
        LSTM cell. There is one JAX implementation, so it changes nothing.
      recurrent_backend: accepted and checked as torchrl does (``"auto"``,
        ``"pad"``, ``"scan"``, ``"triton"``); torchrl's choice of how to run
        multi-trajectory rows. The JAX scan handles resets with a mask inside
        the loop for every value, with identical results. ``"triton"`` needs no
        triton package here.
      recurrent_compute_dtype: accepted for compatibility; only torchrl's triton
        backend uses it. Ignored.
      recurrent_recompute: ``"full"`` recomputes each step in the backward pass
        (``jax.checkpoint``, i.e. ``lstm_scan(remat=True)``) to save activation
        memory. As in torchrl, ``"full"`` needs ``recurrent_backend`` ``"scan"``
        or ``"triton"``.
      recurrent_matmul_precision: the JAX matmul precision: ``"ieee"`` ->
        ``HIGHEST``, ``"tf32x3"``/``"high-prec"`` -> ``HIGH``,
        ``"tf32"``/``"fast"`` -> ``DEFAULT``; ``"auto"`` follows
        ``torch.get_float32_matmul_precision()`` (``"highest"`` -> ``HIGHEST``,
        ``"high"`` -> ``HIGH``, ``"medium"`` -> ``DEFAULT``) at call time. On
        CPU every level computes in float32.

    Keyword Args:
      in_key: the input key; the state keys default to
        ``["recurrent_state_h", "recurrent_state_c"]``. Exclusive with
        ``in_keys``.
      in_keys: ``[value, h, c]`` (optionally followed by ``"is_init"``).
      out_key: the output key; the state keys default to
        ``[("next", "recurrent_state_h"), ("next", "recurrent_state_c")]``.
        Exclusive with ``out_keys``.
      out_keys: ``[value, h, c]``.
      device: where a newly created ``nn.LSTM`` lives.
      lstm: a ``torch.nn.LSTM`` (``batch_first=True``) to wrap instead of
        creating one; exclusive with the size arguments. As in torchrl the
        module is wrapped, not copied: both share the parameters.
      default_recurrent_mode: the mode when torchrl's ``set_recurrent_mode``
        context manager does not set one. Default False.
      full_hidden_states: recurrent mode writes the state after every step
        instead of torchrl's zeros-except-at-trajectory-ends. Default False.
      time_buckets: how recurrent mode pads the sequence length T so that
        varying lengths share compiled programs: ``"auto"`` (default) rounds
        T up with ``bridge.time_bucket`` (1, 2, 4, 8, 16, ..., 64, 80, 96,
        ...: at most 4 programs per doubling of T); a callable ``T -> padded
        T`` (``>= T``) sets your own buckets, e.g. ``lambda t: 128`` for one
        program; None compiles one program per T. Padded steps are
        ``is_init`` steps that are cut off afterwards, so outputs and
        gradients are those of the unpadded sequence.

    Raises:
      ValueError: as torchrl's constructor, for bad key combinations, a
        missing ``hidden_size``, ``batch_first=False``, an ``lstm`` together
        with size arguments, or invalid backend options.
    """

    # Lists, as torchrl's (code that reads them may expect lists).
    DEFAULT_IN_KEYS: ClassVar[list] = ["recurrent_state_h", "recurrent_state_c"]
    DEFAULT_OUT_KEYS: ClassVar[list] = [
        ("next", "recurrent_state_h"),
        ("next", "recurrent_state_c"),
    ]

    def __init__(
        self,
        input_size: int | None = None,
        hidden_size: int | None = None,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = True,
        dropout: float = 0,
        proj_size: int = 0,
        bidirectional: bool = False,
        python_based: bool = False,
        recurrent_backend: str = "pad",
        recurrent_compute_dtype: torch.dtype = torch.float32,
        recurrent_recompute: str = "none",
        recurrent_matmul_precision: str = "auto",
        *,
        in_key: Any = None,
        in_keys: Sequence[Any] | None = None,
        out_key: Any = None,
        out_keys: Sequence[Any] | None = None,
        device: Any = None,
        lstm: nn.LSTM | None = None,
        default_recurrent_mode: bool | None = None,
        full_hidden_states: bool = False,
        time_buckets: TimeBuckets = "auto",
    ):
        super().__init__()
        _check_backend_options(recurrent_backend, recurrent_recompute, recurrent_matmul_precision)
        table = self._table
        if lstm is not None:
            _check_given_rnn(lstm, input_size, hidden_size, table)
            proj_size = lstm.proj_size
            bidirectional = lstm.bidirectional
        else:
            _check_new_rnn(hidden_size, batch_first, python_based, bidirectional, table)
        if lstm is None:
            lstm = nn.LSTM(
                input_size=input_size,
                hidden_size=hidden_size,
                num_layers=num_layers,
                bias=bias,
                dropout=dropout,
                proj_size=proj_size,
                device=device,
                batch_first=True,
                bidirectional=bidirectional,
            )
        self._setup(
            lstm,
            in_key=in_key,
            in_keys=in_keys,
            out_key=out_key,
            out_keys=out_keys,
            default_recurrent_mode=default_recurrent_mode,
            recurrent_backend=recurrent_backend,
            recurrent_compute_dtype=recurrent_compute_dtype,
            recurrent_recompute=recurrent_recompute,
            recurrent_matmul_precision=recurrent_matmul_precision,
            python_based=python_based,
            full_hidden_states=full_hidden_states,
            time_buckets=time_buckets,
        )


class GRUModule(_RecurrentModule):
    """torchrl's ``GRUModule``, computed by JAX (``jaxlstm.GRU``'s cell).

    A drop-in replacement for ``torchrl.modules.GRUModule`` (torchrl 0.14):
    the same constructor, keys, outputs, ``state_dict`` (``gru.weight_ih_l0``,
    ...) and gradients. Everything but the cell is ``LSTMModule``'s: modes,
    time buckets, the fork guard, ``torch.compile`` (a graph break),
    ``torch.vmap``/``torch.func``, float64, ``from_torch``, ``to_jax``,
    ``load_jax_params`` and ``make_tensordict_primer``.

    Layouts (``S`` the tensordict's batch size; ``L`` layers, ``H`` hidden):

    * step mode (default): reads ``in_keys[0]`` ``[*S, I]``, the stored state
      ``in_keys[1]`` ``[*S, L, H]`` (missing: zeros) and ``"is_init"``
      ``[*S, 1]`` (or ``[*S]``). Where ``is_init`` is true the stored state
      is replaced by zeros. Writes ``out_keys[0]`` ``[*S, H]`` and the next
      state ``out_keys[1]`` ``[*S, L, H]``.
    * recurrent mode: ``S = (*B, T)``, time last. Each trajectory in a row
      starts from the state stored at its first step. Writes ``[*B, T, H]``
      and states ``[*B, T, L, H]`` that are zero except at each trajectory's
      last step (or every step's state with ``full_hidden_states=True``).

    Args:
      input_size, hidden_size, num_layers, bias, batch_first, dropout,
      python_based, recurrent_backend, recurrent_compute_dtype,
      recurrent_recompute, recurrent_matmul_precision: as ``LSTMModule``'s.
      bidirectional: as ``LSTMModule``'s.

    Keyword Args:
      in_key: the input key; the state key defaults to ``"recurrent_state"``.
      in_keys: ``[value, state]`` (optionally followed by ``"is_init"``).
      out_key: the output key; the state key defaults to
        ``("next", "recurrent_state")``.
      out_keys: ``[value, state]``.
      device: where a newly created ``nn.GRU`` lives.
      gru: a ``torch.nn.GRU`` (``batch_first=True``) to wrap instead of
        creating one; exclusive with the size arguments.
      default_recurrent_mode, full_hidden_states, time_buckets: as
        ``LSTMModule``'s.
    """

    DEFAULT_IN_KEYS: ClassVar[list] = ["recurrent_state"]
    DEFAULT_OUT_KEYS: ClassVar[list] = [("next", "recurrent_state")]

    def __init__(
        self,
        input_size: int | None = None,
        hidden_size: int | None = None,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = True,
        dropout: float = 0,
        bidirectional: bool = False,
        python_based: bool = False,
        recurrent_backend: str = "pad",
        recurrent_compute_dtype: torch.dtype = torch.float32,
        recurrent_recompute: str = "none",
        recurrent_matmul_precision: str = "auto",
        *,
        in_key: Any = None,
        in_keys: Sequence[Any] | None = None,
        out_key: Any = None,
        out_keys: Sequence[Any] | None = None,
        device: Any = None,
        gru: nn.GRU | None = None,
        default_recurrent_mode: bool | None = None,
        full_hidden_states: bool = False,
        time_buckets: TimeBuckets = "auto",
    ):
        super().__init__()
        _check_backend_options(recurrent_backend, recurrent_recompute, recurrent_matmul_precision)
        table = self._table
        if gru is not None:
            _check_given_rnn(gru, input_size, hidden_size, table)
            bidirectional = gru.bidirectional
        else:
            _check_new_rnn(hidden_size, batch_first, python_based, bidirectional, table)
        if gru is None:
            gru = nn.GRU(
                input_size=input_size,
                hidden_size=hidden_size,
                num_layers=num_layers,
                bias=bias,
                dropout=dropout,
                device=device,
                batch_first=True,
                bidirectional=bidirectional,
            )
        self._setup(
            gru,
            in_key=in_key,
            in_keys=in_keys,
            out_key=out_key,
            out_keys=out_keys,
            default_recurrent_mode=default_recurrent_mode,
            recurrent_backend=recurrent_backend,
            recurrent_compute_dtype=recurrent_compute_dtype,
            recurrent_recompute=recurrent_recompute,
            recurrent_matmul_precision=recurrent_matmul_precision,
            python_based=python_based,
            full_hidden_states=full_hidden_states,
            time_buckets=time_buckets,
        )


_TABLES = {
    "lstm": _Table(
        name="LSTMModule",
        cell="lstm",
        attr="lstm",
        torch_mode="LSTM",
        state_keys=("recurrent_state_h", "recurrent_state_c"),
        states_phrase="two hidden states",
        model=jaxlstm.LSTM,
        jax_cell=lambda rnn: jaxlstm.lstm_projected_cell(rnn.proj_size),
        state_widths=lambda rnn: (rnn.proj_size or rnn.hidden_size, rnn.hidden_size),
        model_kwargs=lambda rnn: {"proj_size": rnn.proj_size, "bidirectional": rnn.bidirectional},
    ),
    "gru": _Table(
        name="GRUModule",
        cell="gru",
        attr="gru",
        torch_mode="GRU",
        state_keys=("recurrent_state",),
        states_phrase="one hidden state",
        model=jaxlstm.GRU,
        jax_cell=lambda rnn: jaxlstm.GRU_CELL,
        state_widths=lambda rnn: (rnn.hidden_size,),
        model_kwargs=lambda rnn: {"bidirectional": rnn.bidirectional},
    ),
}
LSTMModule._table = _TABLES["lstm"]
GRUModule._table = _TABLES["gru"]
