"""``bridge.LSTMModule``: a stand-in for torchrl's ``LSTMModule`` computed by ``jaxlstm``.

The module keeps a real ``torch.nn.LSTM`` (``self.lstm``) for its parameters,
so its ``state_dict`` is torchrl's, and runs the math as one compiled JAX
program per input shape (``jaxlstm.lstm_scan``). A ``torch.autograd.Function``
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

__all__ = ["LSTMModule"]

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


def _lstm_apply(
    params: dict[str, jax.Array],
    x: jax.Array,
    h: jax.Array | None,
    c: jax.Array | None,
    is_init: jax.Array,
    seed: jax.Array | None,
    *,
    config: _Config,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """torchrl ``LSTMModule.forward``'s math on arrays shaped like the tensordict's entries.

    Args:
      params: ``torch.nn.LSTM``'s arrays by name (``weight_ih_l0 [4H, I]``, ...).
      x: step mode ``[*S, I]``; recurrent mode ``[*B, T, I]``.
      h, c: stored states, ``[*S, L, H]`` (step) or ``[*B, T, L, H]``
        (recurrent); None for zeros.
      is_init: bool ``[*S]``/``[*S, 1]`` or ``[*B, T]``/``[*B, T, 1]``.
      seed: uint32 ``[]`` dropout seed, or None without dropout.
      config: static options.

    Returns:
      ``(y, h_out, c_out)``: step mode ``[*S, H]``, ``[*S, L, H]`` x2;
      recurrent mode ``[*B, T, H]``, ``[*B, T, L, H]`` x2.
    """
    return jaxlstm.torchrl_apply(
        params,
        x,
        h,
        c,
        is_init,
        recurrent=config.recurrent,
        full_hidden_states=config.full_hidden_states,
        dropout_rate=config.dropout,
        dropout_rng=None if seed is None else jax.random.key(seed),
        precision=config.precision,
        remat=config.remat,
    )


class _Programs(NamedTuple):
    """The compiled programs of one static config (jax.jit caches per input shape)."""

    forward: Callable  # (params, x, h, c, is_init, seed) -> (y, h_out, c_out)
    forward_with_vjp: Callable  # same args -> ((y, h_out, c_out), pullback)
    recompute_vjp: Callable  # (same args, cotangents) -> (d_params, d_x, d_h, d_c)


@functools.cache
def _programs(config: _Config) -> _Programs:
    apply = functools.partial(_lstm_apply, config=config)

    def forward_with_vjp(params, x, h, c, is_init, seed):
        # The pullback (jax.vjp's VJP object) is a pytree of residuals: returned
        # from this jitted function and passed into `_apply_vjp`, the backward
        # pass reuses the forward's residuals instead of recomputing them.
        return jax.vjp(lambda p, x, h, c: apply(p, x, h, c, is_init, seed), params, x, h, c)

    def recompute_vjp(params, x, h, c, is_init, seed, cotangents):
        return forward_with_vjp(params, x, h, c, is_init, seed)[1](cotangents)

    return _Programs(jax.jit(apply), jax.jit(forward_with_vjp), jax.jit(recompute_vjp))


@jax.jit
def _apply_vjp(vjp_fn, cotangents):
    return vjp_fn(cotangents)


def _meta_outputs(programs, names, tensors, x, h, c, is_init):
    """The outputs' shapes, as ``meta`` tensors, from ``jax.eval_shape`` of the program."""

    def spec(t):
        return None if t is None else jax.ShapeDtypeStruct(tuple(t.shape), torch_dtype_to_jax(t.dtype))

    params = {name: spec(t) for name, t in zip(names, tensors)}
    shapes = jax.eval_shape(programs.forward, params, spec(x), spec(h), spec(c), spec(is_init), None)
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
    """Runs ``forward`` with JAX's x64 enabled when the LSTM's parameters are float64."""

    @functools.wraps(forward)
    def wrapper(self, tensordict, *args, **kwargs):
        weight = getattr(self.lstm, self._param_names[0])
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


class _LSTMFunction(torch.autograd.Function):
    """The compiled LSTM as a torch op; its backward is the JAX pullback.

    Two strategies, chosen per call: recurrent mode keeps the forward's
    residuals (training calls backward, and a long sequence is costly to
    recompute); step mode runs the plain forward and recomputes its single
    step in backward, so rollouts that run with grad enabled but never call
    backward pay nothing for residuals.
    """

    @staticmethod
    def forward(ctx, call: _Call, x, h, c, *params):
        cpu = call.cpu
        args = (
            call.jax_params,
            _jax_arg(x, cpu),
            _jax_arg(h, cpu),
            _jax_arg(c, cpu),
            call.is_init,
            call.seed,
        )
        if call.recompute:
            y, h_out, c_out = call.programs.forward(*args)
            ctx.args = args
        else:
            (y, h_out, c_out), ctx.vjp_fn = call.programs.forward_with_vjp(*args)
        ctx.call = call
        # Saved so that torch raises its usual error if any of them is modified
        # in place before backward: the numpy/JAX views above alias them.
        ctx.save_for_backward(x, h, c, *params)
        return _torch_out(y, cpu), _torch_out(h_out, cpu), _torch_out(c_out, cpu)

    @staticmethod
    @_x64_scope_for_tensors
    @once_differentiable
    def backward(ctx, grad_y, grad_h, grad_c):
        _ = ctx.saved_tensors  # raises if an input was modified in place since forward
        call = ctx.call
        cpu = call.cpu
        cotangents = tuple(_jax_arg(g, cpu) for g in (grad_y, grad_h, grad_c))
        if call.recompute:
            grads = call.programs.recompute_vjp(*ctx.args, cotangents)
        else:
            grads = _apply_vjp(ctx.vjp_fn, cotangents)
        d_params, d_x, d_h, d_c = grads
        needs = ctx.needs_input_grad
        out = [None]
        for i, d in enumerate((d_x, d_h, d_c), start=1):
            out.append(_torch_out(d, cpu) if needs[i] and d is not None else None)
        for i, name in enumerate(call.param_names, start=4):
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


# --------------------------------------------------------------------------
# torch.compile: dynamo cannot trace into JAX (DLPack capsules, numpy views of
# XLA buffers), so the module's forward is a graph break. Compiled code around
# it (heads, losses) stays compiled; the LSTM runs as its own XLA program.
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
    # One entry per torch.vmap level, innermost first:
    # ((axis of each parameter), x axis, h axis, c axis, is_init axis), None for unmapped.
    levels: tuple = ()


def _under_functorch(*tensors: torch.Tensor | None) -> bool:
    return any(
        t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors
    )


def _vmapped(fn: Callable, param_names: tuple[str, ...], levels: tuple) -> Callable:
    """``fn(params, x, h, c, is_init, seed, *rest)`` under one ``jax.vmap`` per level.

    A level is ``(param axes, x, h, c, is_init axes, *axes of rest)``; the first
    level is the innermost vmap. Outputs are batched on axis 0 at every level.
    """
    for param_axes, *axes in levels:
        in_axes = (dict(zip(param_names, param_axes)), *axes[:4], None, *axes[4:])
        fn = jax.vmap(fn, in_axes=in_axes)
    return fn


@functools.cache
def _transform_forward(config: _Config, param_names: tuple[str, ...], levels: tuple) -> Callable:
    apply = functools.partial(_lstm_apply, config=config)
    return jax.jit(_vmapped(apply, param_names, levels))


@functools.cache
def _transform_vjp(
    config: _Config, param_names: tuple[str, ...], levels: tuple, vjp_levels: tuple
) -> Callable:
    """The pullback of ``_transform_forward(levels)``, itself vmapped over ``vjp_levels``.

    ``vjp_levels`` appear when the backward pass runs under vmap (per-sample
    gradients: ``torch.vmap(torch.func.grad(f))``).
    """
    apply = _vmapped(functools.partial(_lstm_apply, config=config), param_names, levels)

    def vjp(params, x, h, c, is_init, seed, grad_y, grad_h, grad_c):
        _, pullback = jax.vjp(lambda p, x, h, c: apply(p, x, h, c, is_init, seed), params, x, h, c)
        return pullback((grad_y, grad_h, grad_c))

    return jax.jit(_vmapped(vjp, param_names, vjp_levels))


class _TransformFunction(torch.autograd.Function):
    """The LSTM as a torch op that torch.func transforms (vmap, grad) can see through.

    Inputs: ``(spec, x, h, c, is_init, *params)`` with ``h``/``c`` possibly None.
    The backward is another such op (``_TransformVJP``), which recomputes the
    forward inside ``jax.vjp``, so that ``torch.func.grad`` and
    ``torch.vmap(torch.func.grad(...))`` can see through it as well.
    """

    @staticmethod
    def forward(spec: _TransformSpec, x, h, c, is_init, *params):
        forward = _transform_forward(spec.config, spec.param_names, spec.levels)
        with _x64_scope(x.dtype in _WIDE):
            outputs = forward(*_transform_args(spec, x, h, c, is_init, params))
            return tuple(_torch_out(a, spec.cpu) for a in outputs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec, x, h, c, is_init, *params = inputs
        ctx.spec = spec
        ctx.has_state = h is not None
        ctx.save_for_backward(x, h, c, is_init, *params)

    @staticmethod
    def backward(ctx, grad_y, grad_h, grad_c):
        x, h, c, is_init, *params = ctx.saved_tensors
        if not ctx.has_state:
            h = c = None
        grads = list(
            _TransformVJP.apply((ctx.spec, ()), x, h, c, is_init, grad_y, grad_h, grad_c, *params)
        )
        d_x = grads.pop(0)
        d_h, d_c = (grads.pop(0), grads.pop(0)) if ctx.has_state else (None, None)
        return (None, d_x, d_h, d_c, None, *grads)

    @staticmethod
    def vmap(info, in_dims, spec: _TransformSpec, x, h, c, is_init, *params):
        _, x_axis, h_axis, c_axis, init_axis, *param_axes = in_dims
        level = (tuple(param_axes), x_axis, h_axis, c_axis, init_axis)
        spec = spec._replace(levels=spec.levels + (level,))
        outputs = _TransformFunction.apply(spec, x, h, c, is_init, *params)
        return outputs, (0, 0, 0)


class _TransformVJP(torch.autograd.Function):
    """The backward of ``_TransformFunction``, as a torch op with its own vmap rule.

    Inputs: ``((spec, vjp_levels), x, h, c, is_init, grad_y, grad_h, grad_c,
    *params)``. Returns ``(d_x, d_h, d_c, *d_params)``, without ``d_h, d_c``
    when the forward had no states. Not differentiable again.
    """

    @staticmethod
    def forward(specs, x, h, c, is_init, grad_y, grad_h, grad_c, *params):
        spec, vjp_levels = specs
        vjp = _transform_vjp(spec.config, spec.param_names, spec.levels, vjp_levels)
        cpu = spec.cpu
        with _x64_scope(x.dtype in _WIDE):
            cotangents = tuple(_jax_arg(g.contiguous(), cpu) for g in (grad_y, grad_h, grad_c))
            d_params, d_x, d_h, d_c = vjp(
                *_transform_args(spec, x, h, c, is_init, params), *cotangents
            )
            out = [d_x] + ([d_h, d_c] if h is not None else [])
            out += [d_params[name] for name in spec.param_names]
            return tuple(_torch_out(d, cpu) for d in out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(
            "bridge.LSTMModule supports first-order gradients only (no double backward)."
        )

    @staticmethod
    def vmap(info, in_dims, specs, x, h, c, is_init, grad_y, grad_h, grad_c, *params):
        spec, vjp_levels = specs
        _, x_axis, h_axis, c_axis, init_axis, gy_axis, gh_axis, gc_axis, *param_axes = in_dims
        level = (tuple(param_axes), x_axis, h_axis, c_axis, init_axis, gy_axis, gh_axis, gc_axis)
        outputs = _TransformVJP.apply(
            (spec, vjp_levels + (level,)), x, h, c, is_init, grad_y, grad_h, grad_c, *params
        )
        return outputs, (0,) * len(outputs)


def _transform_args(spec: _TransformSpec, x, h, c, is_init, params) -> tuple:
    cpu = spec.cpu
    jax_params = {name: _jax_arg(p.contiguous(), cpu) for name, p in zip(spec.param_names, params)}
    return (
        jax_params,
        _jax_arg(x, cpu),
        _jax_arg(h, cpu),
        _jax_arg(c, cpu),
        _jax_arg(is_init, cpu),
        spec.seed,
    )


class LSTMModule(TensorDictModuleBase):
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
      proj_size: only 0 is supported (NotImplementedError otherwise).
      bidirectional: only False is supported (NotImplementedError otherwise).
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
      NotImplementedError: ``proj_size > 0`` or ``bidirectional=True``.
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
        # The same checks, in the same order and with the same messages, as
        # torchrl 0.14's constructor.
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
        if lstm is not None:
            if not lstm.batch_first:
                raise ValueError("The input lstm must have batch_first=True.")
            if input_size is not None or hidden_size is not None:
                raise ValueError("An LSTM instance cannot be passed along with class argument.")
            if getattr(lstm, "mode", None) != "LSTM":
                raise TypeError(f"lstm must be a torch.nn.LSTM. Got {type(lstm).__name__}.")
            proj_size = lstm.proj_size
            bidirectional = lstm.bidirectional
        else:
            if not batch_first:
                raise ValueError("The input lstm must have batch_first=True.")
            if not hidden_size:
                # torchrl's message, plus the value when one was given.
                got = "" if hidden_size is None else f" Got hidden_size={hidden_size!r}."
                raise ValueError(f"hidden_size must be passed.{got}")
            if hidden_size < 0:
                # torch.nn.LSTM's message, plus the value.
                raise ValueError(f"hidden_size must be greater than zero. Got {hidden_size}.")
            if python_based and bidirectional:
                raise ValueError("python_based=True does not support bidirectional LSTMs.")
        if proj_size:
            raise NotImplementedError(
                f"proj_size={proj_size}: LSTMs with projections are not supported yet."
            )
        if bidirectional:
            raise NotImplementedError(
                "bidirectional=True: bidirectional LSTMs are not supported yet."
            )
        if lstm is None:
            lstm = nn.LSTM(
                input_size=input_size,
                hidden_size=hidden_size,
                num_layers=num_layers,
                bias=bias,
                dropout=dropout,
                device=device,
                batch_first=True,
            )

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
        if not isinstance(in_keys, (tuple, list)) or (
            len(in_keys) != 3 and not (len(in_keys) == 4 and in_keys[-1] == "is_init")
        ):
            raise ValueError(
                "LSTMModule expects 3 inputs: a value, and two hidden states (and potentially "
                f"an 'is_init' marker). Got in_keys {in_keys} instead."
            )
        if not isinstance(out_keys, (tuple, list)) or len(out_keys) != 3:
            raise ValueError(
                "LSTMModule expects 3 outputs: a value, and two hidden states. "
                f"Got out_keys {out_keys} instead."
            )

        self.lstm = lstm
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
            jaxlstm.lstm_param_shapes(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias)
        )
        self._param_views = ParamViews(self._param_names)

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

    def set_recurrent_mode(self, mode: bool = True) -> LSTMModule:
        """Returns a copy in the given mode that shares this module's ``nn.LSTM``.

        The behaviour of the ``set_recurrent_mode`` method that torchrl's
        documentation shows (torchrl 0.14.1's method raises a RuntimeError,
        saying it was removed in v0.8): one set of parameters, used step by
        step in one policy and over sequences in another. The copy is ``self``
        when the mode does not change. torchrl's ``set_recurrent_mode`` context
        manager still overrides the copy's mode while it is active.

        Args:
          mode: True for recurrent mode, False for step mode.

        Returns:
          An ``LSTMModule`` with ``default_recurrent_mode=mode``.
        """
        mode = bool(mode)
        if mode == bool(self._recurrent_mode):
            return self
        return self._wrap(
            self.lstm,
            in_keys=list(self.in_keys),
            out_keys=list(self.out_keys),
            default_recurrent_mode=mode,
        )

    def _wrap(self, lstm: nn.Module, **overrides: Any) -> LSTMModule:
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
        out = type(self)(lstm=lstm, **kwargs)
        out.train(self.training)
        return out

    @property
    def temporal_mode(self):
        raise RuntimeError("temporal_mode is deprecated, use recurrent_mode instead.")

    def make_python_based(self) -> LSTMModule:
        """Returns self: there is a single (JAX) implementation. For torchrl compatibility."""
        return self

    def make_cudnn_based(self) -> LSTMModule:
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
    ) -> LSTMModule:
        """Builds an ``LSTMModule`` from a torchrl ``LSTMModule`` or a ``torch.nn.LSTM``.

        From a torchrl module the keys, default mode and backend options are
        taken over (keyword arguments given here win). The new module wraps
        the same ``nn.LSTM``, so the two share parameters, like torchrl's
        ``lstm=`` argument; ``copy.deepcopy(module)`` first for independent
        weights.

        Args:
          module: a torchrl ``LSTMModule`` or a ``torch.nn.LSTM``
            (``batch_first=True``).
          in_key, in_keys, out_key, out_keys: the keys, as in the constructor;
            required for an ``nn.LSTM``.
          default_recurrent_mode: the default mode (torchrl module: its own).
          full_hidden_states, time_buckets: see the constructor.

        Returns:
          A ``bridge.LSTMModule``.
        """
        keys = {"in_key": in_key, "in_keys": in_keys, "out_key": out_key, "out_keys": out_keys}
        if isinstance(module, nn.RNNBase):
            return cls(
                lstm=module,
                default_recurrent_mode=default_recurrent_mode,
                full_hidden_states=full_hidden_states,
                time_buckets=time_buckets,
                **keys,
            )
        lstm = getattr(module, "lstm", None)
        if not isinstance(lstm, nn.RNNBase):
            raise TypeError(
                "from_torch expects a torchrl LSTMModule or a torch.nn.LSTM. "
                f"Got {type(module).__name__}."
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
            lstm=lstm,
            default_recurrent_mode=default_recurrent_mode,
            full_hidden_states=full_hidden_states,
            time_buckets=time_buckets,
            **options,
            **keys,
        )
        out.train(module.training)
        return out

    def to_jax(self) -> tuple[jaxlstm.LSTM, dict[str, dict[str, jax.Array]]]:
        """Returns the Flax model and a copy of the parameters, for JAX-side training.

        ``model.apply(params, x, state, is_init)`` computes what this module
        computes, with ``jaxlstm.LSTM``'s conventions (its recurrent mode
        returns the state after every step). Load trained parameters back with
        ``load_jax_params``.

        Returns:
          ``(model, {"params": {"weight_ih_l0": [4H, I], ...}})``; the arrays
          are copies, so torch-side updates do not reach them.
        """
        lstm = self.lstm
        model = jaxlstm.LSTM(
            hidden_size=lstm.hidden_size,
            num_layers=lstm.num_layers,
            use_bias=lstm.bias,
            dropout=float(lstm.dropout),
            recurrent_mode=self.recurrent_mode,
            remat=self.recurrent_recompute == "full",
            precision=self._precision(),
        )
        params = {name: torch_to_jax(getattr(lstm, name), copy=True) for name in self._param_names}
        return model, {"params": params}

    @torch.no_grad()
    def load_jax_params(self, params: Any) -> None:
        """Copies ``jaxlstm`` parameters into ``self.lstm``'s parameters, in place.

        Args:
          params: ``{"params": {...}}`` or the inner dict, with torch's names
            and shapes (as returned by ``to_jax`` or ``jaxlstm.LSTM.init``).

        Raises:
          ValueError: names or shapes that differ from this module's.
        """
        arrays = jaxlstm.params_to_torch_state_dict(params)
        if set(arrays) != set(self._param_names):
            raise ValueError(
                f"params must hold exactly {sorted(self._param_names)}. Got {sorted(arrays)}."
            )
        for name in self._param_names:
            target = getattr(self.lstm, name)
            value = np.asarray(arrays[name])
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"params[{name!r}] must have shape {tuple(target.shape)}. "
                    f"Got {tuple(value.shape)}."
                )
        for name in self._param_names:
            getattr(self.lstm, name).copy_(torch.from_numpy(np.array(arrays[name])))

    def make_tensordict_primer(self):
        """Makes torchrl's ``TensorDictPrimer`` for the recurrent states, as torchrl's method.

        Needs torchrl. The out state keys must be ``("next", <in state key>)``.

        Returns:
          ``torchrl.envs.TensorDictPrimer`` with ``Unbounded`` specs of shape
          ``[L, H]`` for both state keys.

        Raises:
          ImportError: torchrl is not installed.
          RuntimeError: the in and out state keys do not match.
        """
        try:
            from torchrl.data.tensor_specs import Unbounded
            from torchrl.envs.transforms.transforms import TensorDictPrimer
        except ImportError as err:
            raise ImportError(
                "LSTMModule.make_tensordict_primer() builds a torchrl TensorDictPrimer and "
                "needs torchrl: pip install torchrl."
            ) from err

        def make_tuple(key):
            return key if isinstance(key, tuple) else (key,)

        out_key1, out_key2 = make_tuple(self.out_keys[1]), make_tuple(self.out_keys[2])
        in_key1, in_key2 = make_tuple(self.in_keys[1]), make_tuple(self.in_keys[2])
        if out_key1 != ("next", *in_key1) or out_key2 != ("next", *in_key2):
            raise RuntimeError(
                "make_tensordict_primer is supposed to work with in_keys/out_keys that "
                "have compatible names, ie. the out_keys should be named after ('next', "
                f"<in_key>). Got in_keys={self.in_keys} and out_keys={self.out_keys} instead."
            )
        shape = (self.lstm.num_layers, self.lstm.hidden_size)
        return TensorDictPrimer(
            {in_key1: Unbounded(shape=shape), in_key2: Unbounded(shape=shape)}, expand_specs=True
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
                "LSTMModule(recurrent_mode=True) requires the input tensordict to have at "
                "least one batch dim (time). Got a 0-d tensordict."
            )
        value_key, h_key, c_key, init_key = self.in_keys[:4]
        value = tensordict.get(value_key, None)
        h = tensordict.get(h_key, None)
        c = tensordict.get(c_key, None)
        is_init = tensordict.get(init_key, None)
        missing = [k for k, v in ((value_key, value), (init_key, is_init)) if v is None]
        if (h is None) != (c is None):
            missing.append(h_key if h is None else c_key)
        if missing:
            raise KeyError(
                f"LSTMModule: key(s) {missing} not found in the tensordict (in_keys="
                f"{self.in_keys}; the two state keys may both be absent, meaning zeros)."
            )

        lstm = self.lstm
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
                f"{value_key!r} has dtype {value.dtype} but the LSTM's parameters are "
                f"{weight.dtype}."
            )
        if value.device != weight.device:
            raise ValueError(
                f"{value_key!r} is on {value.device} but the LSTM's parameters are on "
                f"{weight.device}."
            )
        if h is not None:
            state_shape = shape + (lstm.num_layers, lstm.hidden_size)
            for key, state in ((h_key, h), (c_key, c)):
                if not isinstance(state, torch.Tensor):
                    raise TypeError(f"{key!r} must be a tensor. Got {type(state).__name__}.")
                if tuple(state.shape) != state_shape:
                    raise ValueError(
                        f"{key!r} must have shape [*batch, num_layers, hidden_size]="
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
        return value, h, c, is_init

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
        lstm = self.lstm
        tensors = [getattr(lstm, name) for name in self._param_names]
        x, h, c, is_init = self._read_inputs(tensordict, recurrent, tensors[0])
        steps = padded = None
        if recurrent and self._time_bucket is not None:
            # One program per bucket, not per T (see bridge._buckets).
            time_dim = tensordict.batch_dims - 1
            steps = tensordict.batch_size[-1]
            padded = padded_length(self._time_bucket, steps) if steps else steps
            x, h, c = pad_time(x, -2, padded), pad_time(h, -3, padded), pad_time(c, -3, padded)
            is_init = pad_time(is_init, time_dim, padded, value=True)

        dropout = float(lstm.dropout) if self.training and lstm.num_layers > 1 else 0.0
        config = _Config(
            recurrent=recurrent,
            full_hidden_states=self.full_hidden_states,
            precision=self._precision(),
            remat=self.recurrent_recompute == "full",
            dropout=dropout,
        )
        programs = _programs(config)
        seed = None
        if dropout > 0.0:
            seed = np.uint32(torch.randint(0, 2**31 - 1, ()).item())
        cpu = x.device.type == "cpu"
        if x.device.type == "meta":
            # No data: shapes only, as torch's own modules do on "meta".
            y, h_out, c_out = _meta_outputs(programs, self._param_names, tensors, x, h, c, is_init)
        elif _under_functorch(x, h, c, is_init, *tensors):
            # torch.vmap / torch.func: the tensors are functorch wrappers with no
            # memory of their own; see _TransformFunction.
            spec = _TransformSpec(config, self._param_names, seed, cpu, ())
            y, h_out, c_out = _TransformFunction.apply(spec, x, h, c, is_init, *tensors)
        else:
            y, h_out, c_out = self._compute(
                programs, tensors, x, h, c, is_init, seed, cpu, recurrent
            )
        if padded != steps:
            y, h_out, c_out = y[..., :steps, :], h_out[..., :steps, :, :], c_out[..., :steps, :, :]
        out_keys = self.out_keys
        tensordict.set(out_keys[0], y)
        tensordict.set(out_keys[1], h_out)
        tensordict.set(out_keys[2], c_out)
        return tensordict

    def _compute(self, programs, tensors, x, h, c, is_init, seed, cpu, recurrent):
        """Runs the compiled program, through autograd when a gradient can flow."""
        params = self._param_views(tensors, cpu)
        jax_init = _jax_arg(is_init, cpu)

        if torch.is_grad_enabled() and (
            x.requires_grad
            or (h is not None and (h.requires_grad or c.requires_grad))
            or any(t.requires_grad for t in tensors)
        ):
            if not recurrent:
                jax_init = jax_init.copy()  # backward recomputes from it
            call = _Call(programs, not recurrent, params, jax_init, seed, cpu, self._param_names)
            return _LSTMFunction.apply(call, x, h, c, *tensors)
        return tuple(
            _torch_out(a, cpu)
            for a in programs.forward(
                params, _jax_arg(x, cpu), _jax_arg(h, cpu), _jax_arg(c, cpu), jax_init, seed
            )
        )
