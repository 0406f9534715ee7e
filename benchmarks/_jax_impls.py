"""The JAX implementations: ours (``jaxlstm``) and the Flax peers.

Every builder takes a workload, its data and torch-layout weights, and returns
a ``Bench`` whose ``run()`` does one jitted call and blocks on its result.
Inputs are passed as arguments (never closed over, which would bake them into
the program as constants).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxlstm

from ._common import Bench, NotAvailable
from ._workloads import Data, Workload

_JITTED: dict[tuple, Callable] = {}


def jitted(key: tuple, make: Callable[[], Callable]) -> Callable:
    """One ``jax.jit`` object per static configuration ``key``.

    Builders create closures; without this cache every build would compile
    again even for shapes already compiled (jit caches per function object).
    With it, workloads and sweep points of equal shapes share one program,
    which is also what a user gets: e.g. every reset rate runs the program
    compiled for the first.
    """
    fn = _JITTED.get(key)
    if fn is None:
        fn = _JITTED[key] = make()
    return fn


def compiled_programs(prefix: tuple) -> int:
    """How many programs the cached jit objects whose key starts with ``prefix`` compiled."""
    return sum(fn._cache_size() for key, fn in _JITTED.items() if key[: len(prefix)] == prefix)


def _grad_of(forward: Callable) -> Callable:
    """jit(grad) of ``sum(y * cotangent)`` with respect to the parameters."""

    def loss(p, *a):
        *inputs, cotangent = a
        y = forward(p, *inputs)
        return jnp.sum(y * cotangent)

    return jax.jit(jax.grad(loss))


def _train_runner(key: tuple, forward: Callable, params: Any, *args: Any) -> Callable[[], Any]:
    """Runs the cached jit(grad) of ``sum(forward(params, *inputs) * cotangent)``."""
    grad = jitted(("train",) + key, lambda: _grad_of(forward))

    def run():
        return jax.block_until_ready(grad(params, *args))

    return run


def _step_runner(
    key: tuple, step: Callable, params: Any, x: Any, state: Any, *extra: Any
) -> Callable:
    """jit of one step; the state is carried from call to call, as in a rollout."""
    step = jitted(("step",) + key, lambda: jax.jit(step))
    carry = [state]

    def run():
        y, carry[0] = step(params, x, carry[0], *extra)
        return jax.block_until_ready(y)

    return run


# --- ours ------------------------------------------------------------------


def build_jaxlstm(wl: Workload, data: Data, weights: dict, **scan_kwargs: Any) -> Bench:
    """``jaxlstm.LSTM`` as a user would call it, or ``lstm_scan`` with ``scan_kwargs``.

    With no ``scan_kwargs`` this is the module with its defaults (the row
    users get). With ``scan_kwargs`` (``input_projection``, ``unroll``,
    ``remat``) it calls ``jaxlstm.lstm_scan`` directly: the design levers.
    """
    params = jax.device_put(jaxlstm.params_from_torch_state_dict(weights))
    x = jnp.asarray(data.x)
    is_init = jnp.asarray(data.is_init)
    module = jaxlstm.LSTM(wl.hidden_size, num_layers=wl.num_layers, recurrent_mode=True)
    key = ("jaxlstm", wl.hidden_size, wl.num_layers, tuple(sorted(scan_kwargs.items())))
    if wl.kind == "step":
        step_module = module.set_recurrent_mode(False)
        state = step_module.initial_state((wl.batch,))
        if scan_kwargs:

            def step(p, x_t, s, ii):
                y, states = jaxlstm.lstm_scan(p, x_t[:, None], s, ii[:, None], **scan_kwargs)
                return y[:, 0], jax.tree.map(lambda a: a[:, 0], states)

        else:

            def step(p, x_t, s, ii):
                return step_module.apply(p, x_t, s, ii)

        return Bench(_step_runner(key, step, params, x, state, is_init))

    if scan_kwargs:

        def forward_all(p, x_, ii):
            return jaxlstm.lstm_scan(p, x_, None, ii, **scan_kwargs)

    else:

        def forward_all(p, x_, ii):
            return module.apply(p, x_, None, ii)

    if wl.kind == "train":
        fwd = lambda p, x_, ii: forward_all(p, x_, ii)[0]
        return Bench(_train_runner(key, fwd, params, x, is_init, jnp.asarray(data.cotangent)))

    def infer_fn(p, x_, ii):
        y, states = forward_all(p, x_, ii)
        return y, states.h[:, -1], states.c[:, -1]

    infer = jitted(("infer",) + key, lambda: jax.jit(infer_fn))

    return Bench(lambda: jax.block_until_ready(infer(params, x, is_init))[0])


# --- Flax peers --------------------------------------------------------------


def flax_cell_params(weights: dict, hidden_size: int) -> dict:
    """torch-layout layer-0 weights -> the parameters of Flax's (Optimized)LSTMCell."""
    h = hidden_size
    w_ih, w_hh = weights["weight_ih_l0"], weights["weight_hh_l0"]
    bias = weights["bias_ih_l0"] + weights["bias_hh_l0"]
    params = {}
    for k, gate in enumerate("ifgo"):  # torch's gate order is i, f, g, o
        rows = slice(k * h, (k + 1) * h)
        params["i" + gate] = {"kernel": jnp.asarray(w_ih[rows].T)}
        params["h" + gate] = {"kernel": jnp.asarray(w_hh[rows].T), "bias": jnp.asarray(bias[rows])}
    return params


def _flax_single_layer(wl: Workload) -> None:
    if wl.num_layers != 1:
        raise NotAvailable("the Flax peers are built for num_layers=1")


def build_flax_rnn(wl: Workload, data: Data, weights: dict) -> Bench:
    """``nn.RNN(nn.OptimizedLSTMCell)``: batch-major, no resets (it has no is_init)."""
    _flax_single_layer(wl)
    cell_params = flax_cell_params(weights, wl.hidden_size)
    x = jnp.asarray(data.x)
    if wl.kind == "step":
        cell = nn.OptimizedLSTMCell(wl.hidden_size)
        zeros = jnp.zeros((wl.batch, wl.hidden_size), jnp.float32)

        def step(p, x_t, carry):
            carry, y = cell.apply({"params": p}, carry, x_t)
            return y, carry

        return Bench(
            _step_runner(("flax_rnn", wl.hidden_size), step, cell_params, x, (zeros, zeros)),
            resets=False,
        )

    rnn = nn.RNN(nn.OptimizedLSTMCell(wl.hidden_size), return_carry=True)
    params = {"cell": cell_params}

    def forward_all(p, x_):
        return rnn.apply({"params": p}, x_)

    if wl.kind == "train":
        fwd = lambda p, x_: forward_all(p, x_)[1]
        return Bench(
            _train_runner(
                ("flax_rnn", wl.hidden_size), fwd, params, x, jnp.asarray(data.cotangent)
            ),
            resets=False,
        )
    infer = jitted(("infer", "flax_rnn", wl.hidden_size), lambda: jax.jit(forward_all))
    return Bench(lambda: jax.block_until_ready(infer(params, x))[1], resets=False)


class ScannedRNN(nn.Module):
    """purejaxrl's ``ScannedRNN`` with an LSTM cell: time-major, reset by ``jnp.where``."""

    hidden_size: int

    @functools.partial(
        nn.scan,
        variable_broadcast="params",
        in_axes=0,
        out_axes=0,
        split_rngs={"params": False},
    )
    @nn.compact
    def __call__(self, carry, inputs):
        x, resets = inputs  # [B, I], [B]
        c, h = carry  # Flax's LSTM carry is (c, h)
        c = jnp.where(resets[:, None], jnp.zeros_like(c), c)
        h = jnp.where(resets[:, None], jnp.zeros_like(h), h)
        carry, y = nn.LSTMCell(self.hidden_size, name="cell")((c, h), x)
        return carry, y


def build_scanned_rnn(wl: Workload, data: Data, weights: dict) -> Bench:
    """purejaxrl-style scan with resets; its native layout is time-major, prepared untimed."""
    _flax_single_layer(wl)
    params = {"cell": flax_cell_params(weights, wl.hidden_size)}
    model = ScannedRNN(wl.hidden_size)
    zeros = jnp.zeros((wl.batch, wl.hidden_size), jnp.float32)
    if wl.kind == "step":

        def step(p, x_t, carry, resets):
            carry, y = model.apply({"params": p}, carry, (x_t[None], resets[None]))
            return y[0], carry

        x = jnp.asarray(data.x)
        return Bench(
            _step_runner(
                ("scanned_rnn", wl.hidden_size),
                step,
                params,
                x,
                (zeros, zeros),
                jnp.asarray(data.is_init),
            )
        )

    x_tm = jnp.asarray(np.swapaxes(data.x, 0, 1))  # [T, B, I]
    resets_tm = jnp.asarray(np.swapaxes(data.is_init, 0, 1))  # [T, B]

    def forward_all(p, x_, r_):
        return model.apply({"params": p}, (zeros, zeros), (x_, r_))

    if wl.kind == "train":
        ct_tm = jnp.asarray(np.swapaxes(data.cotangent, 0, 1))
        fwd = lambda p, x_, r_: forward_all(p, x_, r_)[1]
        return Bench(
            _train_runner(("scanned_rnn", wl.hidden_size), fwd, params, x_tm, resets_tm, ct_tm)
        )
    infer = jitted(("infer", "scanned_rnn", wl.hidden_size), lambda: jax.jit(forward_all))
    return Bench(
        lambda: np.swapaxes(
            np.asarray(jax.block_until_ready(infer(params, x_tm, resets_tm))[1]), 0, 1
        )
    )


def xla_matmul(n: int) -> Callable[[], Any]:
    """One float32 ``[n, n] @ [n, n]`` under jit, for the peak matmul rate."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    b = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    mm = jax.jit(jnp.matmul)
    return lambda: jax.block_until_ready(mm(a, b))


def train_with_memory_stats(
    wl: Workload,
    data: Data,
    weights: dict,
    **scan_kwargs: Any,
) -> tuple[Bench, dict]:
    """Our train step (jit(grad) of ``lstm_scan`` with ``scan_kwargs``: ``backward``,
    ``remat``, ...) compiled ahead of time, and its memory.

    The memory is XLA's compiled memory analysis
    (``jit(f).lower(...).compile().memory_analysis()``): the sizes of the
    buffers XLA's buffer assignment planned for the program, known before it
    runs. ``temp`` is the scratch arena for intermediates (including the
    activations the backward pass keeps), ``argument``/``output`` the inputs
    and results. It is not a measured RSS. The returned ``Bench`` runs that
    same executable, so it is compiled once.
    """
    params = jax.device_put(jaxlstm.params_from_torch_state_dict(weights))
    x = jnp.asarray(data.x)
    is_init = jnp.asarray(data.is_init)
    ct = jnp.asarray(data.cotangent)

    def loss(p, x_, ii, ct_):
        y, _ = jaxlstm.lstm_scan(p, x_, None, ii, **scan_kwargs)
        return jnp.sum(y * ct_)

    compiled = jax.jit(jax.grad(loss)).lower(params, x, is_init, ct).compile()
    stats = compiled.memory_analysis()
    out = {}
    for field in (
        "temp_size_in_bytes",
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
    ):
        out[field] = int(getattr(stats, field, 0) or 0)
    out["total_bytes"] = (
        out["temp_size_in_bytes"]
        + out["argument_size_in_bytes"]
        + out["output_size_in_bytes"]
        - out["alias_size_in_bytes"]
    )
    # Scratch per time step and per (row, step): the figure that decides how far T and
    # L can grow (issue 11: 16.75 KB vs 6.25 KB per row-step with remat, before).
    out["temp_per_step_bytes"] = out["temp_size_in_bytes"] / wl.steps
    out["temp_per_row_step_bytes"] = out["temp_size_in_bytes"] / (wl.steps * wl.batch)
    return Bench(lambda: jax.block_until_ready(compiled(params, x, is_init, ct))), out
