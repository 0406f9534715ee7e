"""Core behaviour of ``jaxlstm.LSTM``: resets, step vs recurrent mode, transforms, dropout, dtypes.

The oracle for the reset rule is ``reference_lstm``: a float64 numpy loop over time written
from the issue's text, independent of ``lstm_scan``. Parity with ``torch.nn.LSTM`` lives in
``test_torch_parity.py``; these tests run without torch.
"""

from __future__ import annotations

import functools
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlstm
from jaxlstm import LSTM, LSTMState

INPUT_SIZE = 4
HIDDEN = 5
T = 7
ATOL = 1e-5


def reference_lstm(params, x, state=None, is_init=None, reset_state=None):
    """torch.nn.LSTM's math with the reset rule, in float64 numpy, one step at a time.

    Shapes as in ``LSTM`` recurrent mode; ``reset_state`` may be ``[*B, L, H]`` or
    ``[*B, T, L, H]``. Returns ``(y [*B, T, H], h [*B, T, L, H], c [*B, T, L, H])``.
    """
    p = {k: np.asarray(v, np.float64) for k, v in params["params"].items()}
    num_layers = sum(k.startswith("weight_ih") for k in p)
    hidden = p["weight_hh_l0"].shape[1]
    x = np.asarray(x, np.float64)
    batch, steps = x.shape[:-2], x.shape[-2]
    n = int(np.prod(batch))
    x = x.reshape(n, steps, -1)
    if state is None:
        h = np.zeros((n, num_layers, hidden))
        c = np.zeros((n, num_layers, hidden))
    else:
        h = np.asarray(state.h, np.float64).reshape(n, num_layers, hidden).copy()
        c = np.asarray(state.c, np.float64).reshape(n, num_layers, hidden).copy()
    resets = np.zeros((n, steps), bool)
    if is_init is not None:
        resets = np.asarray(is_init).reshape(n, steps).astype(bool)
    per_step = reset_state is not None and np.ndim(reset_state.h) == len(batch) + 3

    def sigmoid(a):
        return 1.0 / (1.0 + np.exp(-a))

    ys, hs, cs = [], [], []
    for t in range(steps):
        for i in range(n):
            if resets[i, t]:
                if reset_state is None:
                    h[i], c[i] = 0.0, 0.0
                else:
                    rh = np.asarray(reset_state.h, np.float64)
                    rc = np.asarray(reset_state.c, np.float64)
                    if per_step:
                        rh = rh.reshape(n, steps, num_layers, hidden)[:, t]
                        rc = rc.reshape(n, steps, num_layers, hidden)[:, t]
                    else:
                        rh = rh.reshape(n, num_layers, hidden)
                        rc = rc.reshape(n, num_layers, hidden)
                    h[i], c[i] = rh[i], rc[i]
        layer_in = x[:, t]
        for k in range(num_layers):
            gates = layer_in @ p[f"weight_ih_l{k}"].T + h[:, k] @ p[f"weight_hh_l{k}"].T
            if f"bias_ih_l{k}" in p:
                gates = gates + p[f"bias_ih_l{k}"] + p[f"bias_hh_l{k}"]
            gi, gf, gg, go = np.split(gates, 4, axis=-1)
            c[:, k] = sigmoid(gf) * c[:, k] + sigmoid(gi) * np.tanh(gg)
            h[:, k] = sigmoid(go) * np.tanh(c[:, k])
            layer_in = h[:, k]
        ys.append(layer_in.copy())
        hs.append(h.copy())
        cs.append(c.copy())
    ys, hs, cs = np.stack(ys, 1), np.stack(hs, 1), np.stack(cs, 1)
    return (
        ys.reshape(batch + (steps, hidden)),
        hs.reshape(batch + (steps, num_layers, hidden)),
        cs.reshape(batch + (steps, num_layers, hidden)),
    )


def make_inputs(batch_shape, num_layers, seed=0, steps=T):
    """Random x, a nonzero initial state and is_init with several trajectories per row."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=batch_shape + (steps, INPUT_SIZE)).astype(np.float32)
    state = LSTMState(
        h=rng.normal(size=batch_shape + (num_layers, HIDDEN)).astype(np.float32),
        c=rng.normal(size=batch_shape + (num_layers, HIDDEN)).astype(np.float32),
    )
    is_init = rng.random(batch_shape + (steps,)) < 0.25
    is_init[..., 3] = True  # every row holds at least two trajectories
    is_init[..., 4] = False
    return x, state, is_init


def random_state(shape, seed):
    rng = np.random.default_rng(seed)
    return LSTMState(
        h=rng.normal(size=shape).astype(np.float32), c=rng.normal(size=shape).astype(np.float32)
    )


def lstm_params(num_layers, use_bias=True, seed=0, input_size=INPUT_SIZE, hidden=HIDDEN):
    """torch-layout numpy parameters, uniform in ±1/sqrt(H) like torch (no ``LSTM.init`` call:
    numpy arrays go straight to ``apply``, and the tests skip compiling an init)."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(hidden)
    params = {}
    for k in range(num_layers):
        shapes = {
            "weight_ih": (4 * hidden, input_size if k == 0 else hidden),
            "weight_hh": (4 * hidden, hidden),
        }
        if use_bias:
            shapes.update(bias_ih=(4 * hidden,), bias_hh=(4 * hidden,))
        for kind, shape in shapes.items():
            params[f"{kind}_l{k}"] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return {"params": params}


@functools.cache
def jitted_apply(num_layers, use_bias=True, recurrent_mode=True, **fields):
    """One jitted ``LSTM.apply`` per configuration, shared by the tests (compiling dominates
    this suite's time on CPU)."""
    lstm = LSTM(
        HIDDEN, num_layers=num_layers, use_bias=use_bias, recurrent_mode=recurrent_mode, **fields
    )
    jitted = jax.jit(lstm.apply, static_argnames=("deterministic",))

    def call(*args, **kwargs):
        # Results come back as numpy: indexing a jax.Array in a test compiles a slice.
        return jax.device_get(jitted(*args, **kwargs))

    call.jit = jitted
    return call


def assert_close(actual, desired, atol=ATOL, err_msg=""):
    np.testing.assert_allclose(
        np.asarray(actual), np.asarray(desired), atol=atol, rtol=0, err_msg=err_msg
    )


def no_resets(shape):
    return np.zeros(shape, bool)


def zeros_state(shape):
    return LSTMState(h=np.zeros(shape, np.float32), c=np.zeros(shape, np.float32))


def max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# --------------------------------------------------------------------------------------------
# Step mode and recurrent mode are the same computation, and follow the reset rule.


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)], ids=str)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
def test_step_loop_equals_recurrent_call(batch_shape, num_layers, use_bias):
    """A Python loop of step-mode calls equals one recurrent call, at every step, with
    resets in the middle of each row; both equal the numpy reference."""
    params = lstm_params(num_layers, use_bias)
    x, state0, is_init = make_inputs(batch_shape, num_layers)

    y, states = jitted_apply(num_layers, use_bias, True)(params, x, state0, is_init)
    assert y.shape == batch_shape + (T, HIDDEN)
    assert states.h.shape == states.c.shape == batch_shape + (T, num_layers, HIDDEN)

    step = jitted_apply(num_layers, use_bias, False)
    state = state0
    for t in range(T):
        y_t, state = step(params, x[..., t, :], state, is_init[..., t])
        assert y_t.shape == batch_shape + (HIDDEN,)
        assert state.h.shape == state.c.shape == batch_shape + (num_layers, HIDDEN)
        assert_close(y[..., t, :], y_t, err_msg=f"y at t={t}")
        assert_close(states.h[..., t, :, :], state.h, err_msg=f"h at t={t}")
        assert_close(states.c[..., t, :, :], state.c, err_msg=f"c at t={t}")

    ref_y, ref_h, ref_c = reference_lstm(params, x, state0, is_init)
    assert_close(y, ref_y)
    assert_close(states.h, ref_h)
    assert_close(states.c, ref_c)


@pytest.mark.parametrize("reset_kind", ["constant", "per_step"])
def test_reset_state_matches_reference(reset_kind):
    """reset_state [*B, L, H] (constant) or [*B, T, L, H] (per step) is what a reset loads,
    in recurrent mode and in a loop of steps given reset_state[..., t, :, :]."""
    batch_shape, num_layers = (2, 3), 2
    params = lstm_params(num_layers)
    x, state0, is_init = make_inputs(batch_shape, num_layers, seed=1)
    if reset_kind == "constant":
        reset_state = random_state(batch_shape + (num_layers, HIDDEN), seed=2)
    else:
        reset_state = random_state(batch_shape + (T, num_layers, HIDDEN), seed=3)

    y, states = jitted_apply(num_layers)(params, x, state0, is_init, reset_state=reset_state)
    ref_y, ref_h, ref_c = reference_lstm(params, x, state0, is_init, reset_state)
    assert_close(y, ref_y)
    assert_close(states.h, ref_h)
    assert_close(states.c, ref_c)
    # The resets matter: loading zeros instead gives other numbers.
    y_zeros, _ = jitted_apply(num_layers)(params, x, state0, is_init)
    assert max_diff(y, y_zeros) > 1e-3

    step = jitted_apply(num_layers, True, False)
    state = state0
    for t in range(T):
        reset_t = reset_state
        if reset_kind == "per_step":
            reset_t = jax.tree.map(lambda a, t=t: a[..., t, :, :], reset_state)
        y_t, state = step(params, x[..., t, :], state, is_init[..., t], reset_state=reset_t)
        assert_close(y[..., t, :], y_t, err_msg=f"y at t={t}")
        assert_close(states.c[..., t, :, :], state.c, err_msg=f"c at t={t}")


def test_per_step_reset_state_is_honoured():
    """After a reset at t a row continues exactly as a fresh run from reset_state[t];
    reset_state at steps without a reset is ignored."""
    num_layers, t_reset = 2, 2  # not T // 2: a time-reversed reset_state would pass
    params = lstm_params(num_layers)
    x, state0, _ = make_inputs((2,), num_layers, seed=4)
    is_init = no_resets((2, T))
    is_init[:, t_reset] = True
    reset_state = random_state((2, T, num_layers, HIDDEN), seed=5)
    run = jitted_apply(num_layers)
    _, states = run(params, x, state0, is_init, reset_state=reset_state)

    start = jax.tree.map(lambda a: a[:, t_reset], reset_state)
    _, alone = run(params, x[:, t_reset:], start, no_resets((2, T - t_reset)))
    assert_close(states.h[:, t_reset:], alone.h)
    assert_close(states.c[:, t_reset:], alone.c)

    other = LSTMState(h=reset_state.h.copy(), c=reset_state.c.copy())
    other.h[0, t_reset - 1] += 1.0
    other.c[1, t_reset + 1] += 1.0
    _, states_other = run(params, x, state0, is_init, reset_state=other)
    np.testing.assert_array_equal(states_other.h, states.h)
    np.testing.assert_array_equal(states_other.c, states.c)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_row_with_two_trajectories(num_layers):
    """A row holding trajectory A then B: over B, outputs and the final state equal running B
    alone from zeros; without the reset flag they differ."""
    split = 3
    params = lstm_params(num_layers, seed=6)
    x, state0, _ = make_inputs((), num_layers, seed=6)
    is_init = no_resets(T)
    is_init[split] = True
    run = jitted_apply(num_layers)

    y, states = run(params, x, state0, is_init)
    y_b, states_b = run(params, x[split:])  # state=None: B alone, from zeros
    assert_close(y[split:], y_b)
    assert_close(states.h[split:], states_b.h)
    # The final state is B's true final state, even with two trajectories in the row.
    assert_close(states.h[-1], states_b.h[-1])
    assert_close(states.c[-1], states_b.c[-1])

    y_no_reset, states_no_reset = run(params, x, state0, no_resets(T))
    assert max_diff(y_no_reset[split:], y_b) > 1e-3
    assert max_diff(states_no_reset.c[-1], states_b.c[-1]) > 1e-3


def test_step_mode_reset():
    """Step mode: is_init true loads zeros (or reset_state) before the cell; false keeps the
    state."""
    num_layers = 2
    params = lstm_params(num_layers)
    x = np.random.default_rng(7).normal(size=(3, INPUT_SIZE)).astype(np.float32)
    state = random_state((3, num_layers, HIDDEN), seed=8)
    reset_state = random_state((3, num_layers, HIDDEN), seed=9)
    is_init = np.array([True, False, True])
    reset, kept = np.array([0, 2]), np.array([1])
    step = jitted_apply(num_layers, True, False)

    y, new = step(params, x, state, is_init)
    y_zero, new_zero = step(params, x, zeros_state(state.h.shape), no_resets(3))
    y_keep, _ = step(params, x, state, no_resets(3))
    assert_close(y[reset], y_zero[reset])
    assert_close(new.h[reset], new_zero.h[reset])
    assert_close(new.c[reset], new_zero.c[reset])
    assert_close(y[kept], y_keep[kept])
    assert max_diff(y_zero[kept], y_keep[kept]) > 1e-3

    y_rs, _ = step(params, x, state, is_init, reset_state=reset_state)
    y_from_rs, _ = step(params, x, reset_state, no_resets(3), reset_state=reset_state)
    assert_close(y_rs[reset], y_from_rs[reset])
    assert_close(y_rs[kept], y_keep[kept])


@pytest.mark.parametrize(
    "recurrent_mode, form",
    [
        (True, "int32"),
        (True, "trailing_one"),
        (False, "trailing_one_int8"),
    ],
)
def test_is_init_forms_accepted(recurrent_mode, form):
    """Integer 0/1 is_init is bool; [*B, T, 1] (recurrent) / [*B, 1] (step) mean [*B, T] / [*B]
    (torchrl stores is_init with a trailing singleton)."""
    num_layers = 2
    params = lstm_params(num_layers)
    x, state, is_init = make_inputs((3,), num_layers, seed=10)
    if not recurrent_mode:
        x, is_init = x[..., 0, :], np.array([True, False, True])
    converted = {
        "int32": is_init.astype(np.int32),
        "trailing_one": is_init[..., None],
        "trailing_one_int8": is_init[..., None].astype(np.int8),
    }[form]
    run = jitted_apply(num_layers, True, recurrent_mode)
    y_bool, s_bool = run(params, x, state, is_init)
    y, s = run(params, x, state, converted)
    np.testing.assert_array_equal(y, y_bool)
    np.testing.assert_array_equal(s.c, s_bool.c)
    # The form changes nothing, but the flags do.
    assert max_diff(y, run(params, x, state, np.zeros_like(converted))[0]) > 1e-3


def test_initial_state_needs_no_params_or_rng():
    lstm = LSTM(HIDDEN, num_layers=3)  # never initialised
    state = lstm.initial_state((2, 4))
    assert isinstance(state, LSTMState)
    assert state.h.shape == state.c.shape == (2, 4, 3, HIDDEN)
    assert state.h.dtype == state.c.dtype == jnp.float32
    assert not np.any(np.asarray(state.h)) and not np.any(np.asarray(state.c))
    assert lstm.initial_state(6).h.shape == (6, 3, HIDDEN)
    assert lstm.initial_state(6, dtype=jnp.bfloat16).c.dtype == jnp.bfloat16


def test_set_recurrent_mode_shares_params():
    step = LSTM(HIDDEN, num_layers=2)
    seq = step.set_recurrent_mode(True)
    assert seq.recurrent_mode and not step.recurrent_mode
    assert seq.set_recurrent_mode(False) == step
    assert seq == LSTM(HIDDEN, num_layers=2, recurrent_mode=True)
    key = jax.random.key(0)
    shapes_step = jax.eval_shape(step.init, key, jnp.zeros((3, INPUT_SIZE)))
    shapes_seq = jax.eval_shape(seq.init, key, jnp.zeros((3, T, INPUT_SIZE)))
    assert shapes_step == shapes_seq


# --------------------------------------------------------------------------------------------
# JAX transformations.


def _loss(params, x, state, is_init):
    y, states = jitted_apply(2).jit(params, x, state, is_init)
    return jnp.sum(y**2) + jnp.sum(states.c[..., -1, :, :])


def test_jit_grad_vmap_compose():
    params = lstm_params(2)
    x, state, is_init = make_inputs((3,), 2, seed=11)
    grad = jax.jit(jax.grad(_loss, argnums=(0, 1, 2)))
    grads = jax.device_get(grad(params, x, state, is_init))
    assert all(np.all(np.isfinite(g)) and np.any(g) for g in jax.tree.leaves(grads))

    # vmap(grad): per-example gradients. The loss is a sum over rows, so each row's gradient
    # w.r.t. its own inputs and state is the batch gradient's row, and the per-example
    # parameter gradients sum to the batch one.
    per_example = jax.jit(jax.vmap(jax.grad(_loss, argnums=(0, 1, 2)), in_axes=(None, 0, 0, 0)))(
        params, x, state, is_init
    )
    per_example = jax.device_get(per_example)
    assert_close(per_example[1], grads[1])
    jax.tree.map(assert_close, per_example[2], grads[2])
    jax.tree.map(lambda a, b: assert_close(a.sum(0), b, atol=1e-4), per_example[0], grads[0])
    # The rows differ, so the check above is not vacuous.
    assert (
        max_diff(
            per_example[0]["params"]["weight_hh_l1"][0], per_example[0]["params"]["weight_hh_l1"][1]
        )
        > 1e-3
    )


@pytest.mark.parametrize("recurrent_mode", [False, True])
def test_vmap_over_leading_axis_equals_batched_call(recurrent_mode):
    num_layers = 2
    params = lstm_params(num_layers)
    x, state, is_init = make_inputs((2, 3), num_layers, seed=12)
    reset_state = random_state((2, 3, num_layers, HIDDEN), seed=13)
    if not recurrent_mode:
        x, is_init = x[..., 0, :], is_init[..., 0]
    run = jitted_apply(num_layers, True, recurrent_mode)

    def apply(x, state, is_init, reset_state):
        return run.jit(params, x, state, is_init, reset_state=reset_state)

    y, states = jax.device_get(apply(x, state, is_init, reset_state))
    y_vmap, states_vmap = jax.device_get(jax.jit(jax.vmap(apply))(x, state, is_init, reset_state))
    assert_close(y_vmap, y)
    assert_close(states_vmap.h, states.h)
    assert_close(states_vmap.c, states.c)


def test_no_retracing_when_only_values_change():
    lstm = LSTM(HIDDEN, num_layers=2, recurrent_mode=True)
    traces = 0

    @jax.jit
    def run(params, x, state, is_init):
        nonlocal traces
        traces += 1  # a Python side effect: runs once per trace, never on a cache hit
        return lstm.apply(params, x, state, is_init)

    outputs = []
    for seed in range(4):
        x, state, is_init = make_inputs((3,), 2, seed=20 + seed)
        if seed == 1:
            is_init[:] = False  # no resets at all
        if seed == 2:
            is_init[:] = True  # a reset at every step
        outputs.append(np.asarray(run(lstm_params(2, seed=seed), x, state, is_init)[0]))
    assert traces == 1
    assert all(max_diff(a, outputs[0]) > 1e-3 for a in outputs[1:])


_TWO_DEVICE_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxlstm

    assert len(jax.devices()) == 2, jax.devices()
    rng = np.random.default_rng(0)
    lstm = jaxlstm.LSTM(5, num_layers=2, recurrent_mode=True)
    params = jax.eval_shape(lstm.init, jax.random.key(0), np.zeros((6, 3), np.float32))
    params = jax.tree.map(lambda a: rng.uniform(-0.4, 0.4, a.shape).astype(a.dtype), params)
    x = rng.normal(size=(4, 6, 3)).astype(np.float32)
    is_init = rng.random((4, 6)) < 0.3
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    x_s, is_init_s = jax.device_put((x, is_init), NamedSharding(mesh, P("batch")))
    run = jax.jit(lstm.apply)
    y_s, states_s = run(params, x_s, None, is_init_s)
    assert y_s.sharding.device_set == set(jax.devices()), y_s.sharding
    y, states = run(params, x, None, is_init)
    np.testing.assert_allclose(np.asarray(y_s), np.asarray(y), atol=1e-5)
    np.testing.assert_allclose(np.asarray(states_s.c), np.asarray(states.c), atol=1e-5)
    print("ok")
    """
)


def test_sharded_inputs_two_host_devices(run_python):
    """The batch axis split over two (forced host) devices gives the unsharded numbers.

    A subprocess, because the device count is fixed when JAX starts."""
    result = run_python(
        "-c", _TWO_DEVICE_SCRIPT, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    )
    assert result.stdout.strip() == "ok"


# --------------------------------------------------------------------------------------------
# Options: unroll / remat reach the scan, dropout, dtype.


def _scans(jaxpr) -> list:
    """Every scan equation in ``jaxpr``, nested ones (pjit, custom_vjp, remat) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            found.append(eqn)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found.extend(_scans(inner))
    return found


def _primitives(jaxpr) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= _primitives(inner)
    return names


@pytest.mark.parametrize("backward", ["custom", "auto"])
@pytest.mark.parametrize("unroll, remat", [(1, False), (3, False), (1, True)])
def test_unroll_and_remat_reach_the_scan(unroll, remat, backward):
    """The module passes unroll and remat to the forward and backward scans (their numbers
    are checked against torch, through lstm_scan, in test_torch_parity.py)."""
    lstm = LSTM(HIDDEN, recurrent_mode=True, unroll=unroll, remat=remat, backward=backward)
    params = lstm_params(1)
    x = jnp.ones((2, T, INPUT_SIZE))
    loss = lambda p: jnp.sum(lstm.apply(p, x)[0])  # noqa: E731
    jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
    scans = _scans(jaxpr)
    assert len(scans) == 2  # forward and backward
    assert all(scan.params["unroll"] == unroll for scan in scans)
    if backward == "auto":
        bodies = [_primitives(scan.params["jaxpr"].jaxpr) for scan in scans]
        assert any(any(p.startswith(("checkpoint", "remat")) for p in b) for b in bodies) == remat
    else:
        # The hand-written backward's reverse scan recomputes the gates (a sigmoid) with
        # remat, and reads the saved ones without.
        (reverse,) = [scan for scan in scans if scan.params["reverse"]]
        assert ("logistic" in _primitives(reverse.params["jaxpr"].jaxpr)) == remat


DROPOUT = {"dropout": 0.5}


def test_dropout_deterministic_is_dropout_free():
    params = lstm_params(2)
    x, state, is_init = make_inputs((3,), 2, seed=40)
    # deterministic=True (the default) needs no 'dropout' rng and matches dropout=0.
    y, _ = jitted_apply(2, **DROPOUT)(params, x, state, is_init)
    y_no_dropout, _ = jitted_apply(2)(params, x, state, is_init)
    np.testing.assert_array_equal(y, y_no_dropout)


@pytest.mark.parametrize("recurrent_mode", [False, True])
def test_dropout_between_layers_only(recurrent_mode):
    params = lstm_params(2)
    x, state, is_init = make_inputs((3,), 2, seed=41)
    if not recurrent_mode:
        x, is_init = x[..., 0, :], is_init[..., 0]
    apply = jitted_apply(2, True, recurrent_mode, **DROPOUT)

    def run(seed=None):
        if seed is None:
            return apply(params, x, state, is_init)
        return apply(
            params, x, state, is_init, deterministic=False, rngs={"dropout": jax.random.key(seed)}
        )

    y_det, s_det = run()
    y_a, s_a = run(0)
    y_a2, s_a2 = run(0)
    y_b, _ = run(1)
    # Reproducible with the same rng; another rng, or none, gives other numbers.
    np.testing.assert_array_equal(y_a, y_a2)
    np.testing.assert_array_equal(s_a.c, s_a2.c)
    assert max_diff(y_a, y_b) > 1e-3
    assert max_diff(y_a, y_det) > 1e-3
    # Between layers only, as in torch: layer 0 (fed by x and its own undropped h) is
    # untouched, and the output is the last layer's h itself (no dropout after the last).
    assert_close(s_a.h[..., 0, :], s_det.h[..., 0, :])
    assert_close(s_a.c[..., 0, :], s_det.c[..., 0, :])
    np.testing.assert_array_equal(y_a, s_a.h[..., -1, :])


def test_dropout_single_layer_is_a_no_op():
    """torch applies no dropout to a 1-layer LSTM (there is no next layer)."""
    params = lstm_params(1)
    x, state, is_init = make_inputs((3,), 1, seed=42)
    apply = jitted_apply(1, **DROPOUT)
    y, states = apply(params, x, state, is_init)
    y_drop, states_drop = apply(
        params, x, state, is_init, deterministic=False, rngs={"dropout": jax.random.key(0)}
    )
    np.testing.assert_array_equal(y_drop, y)
    np.testing.assert_array_equal(states_drop.c, states.c)


# The stated tolerance of a bfloat16 ``dtype`` run against float32; the LSTM docstring
# (``dtype``) states the same. Measured here: max |dy| 6e-4, |dh| 1e-3, |dc| 2e-3; up to 3e-3
# (y) and 5e-3 (c) for H <= 256, T <= 256, I = 64.
BF16_ATOL = 1e-2


def test_bfloat16_dtype_close_to_float32():
    hidden, steps = 32, 32
    lstm = LSTM(hidden, num_layers=2, recurrent_mode=True)
    params = lstm_params(2, hidden=hidden, seed=50)
    rng = np.random.default_rng(50)
    x = rng.normal(size=(8, steps, INPUT_SIZE)).astype(np.float32)
    is_init = rng.random((8, steps)) < 0.1
    y32, s32 = jax.device_get(jax.jit(lstm.apply)(params, x, None, is_init))
    y16, s16 = jax.device_get(
        jax.jit(lstm.clone(dtype=jnp.bfloat16).apply)(params, x, None, is_init)
    )
    assert y16.dtype == jnp.bfloat16
    # Only the matmuls run in bfloat16: the carried state stays float32.
    assert s16.h.dtype == s16.c.dtype == jnp.float32
    y16 = y16.astype(np.float32)
    assert_close(y16, y32, atol=BF16_ATOL)
    assert_close(s16.h, s32.h, atol=BF16_ATOL)
    assert_close(s16.c, s32.c, atol=BF16_ATOL)
    # ... and it really ran in bfloat16.
    assert max_diff(y16, y32) > 1e-4


# --------------------------------------------------------------------------------------------
# Import hygiene.


def test_import_jaxlstm_does_not_import_torch(run_python):
    code = (
        "import sys, jaxlstm; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    assert run_python("-c", code).stdout.strip() == "[]"


def test_public_surface():
    for name in [
        "LSTM",
        "LSTMState",
        "lstm_cell",
        "lstm_scan",
        "LayerWeights",
        "params_from_torch_state_dict",
        "params_to_torch_state_dict",
    ]:
        assert hasattr(jaxlstm, name), name
