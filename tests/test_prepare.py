"""Prepare once, compile once: checks run once per trace, un-jitted calls hit a cache,
params of another configuration raise our errors, and bad dtypes/sizes are clear errors."""

from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlstm
from jaxlstm import LSTM, LSTMState, _checks, _params

H, I, L = 5, 3, 2


def params_for(input_size=I, hidden=H, layers=L, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    shapes = jaxlstm.lstm_param_shapes(input_size, hidden, layers, bias)
    return {"params": {k: rng.uniform(-0.4, 0.4, s).astype(np.float32) for k, s in shapes.items()}}


# --------------------------------------------------------------------------------------------
# Every check runs once per trace.


@pytest.fixture
def check_counts(monkeypatch):
    counts = collections.Counter()
    for module, name in [
        (_checks, "normalize_is_init"),
        (_checks, "check_state"),
        (_checks, "check_input"),
        (_params, "check_params"),
    ]:
        original = getattr(module, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return counts


# Distinct batch sizes per case, so that each call traces afresh (no compile-cache hit).
@pytest.mark.parametrize(
    "case", ["module_step", "module_recurrent", "lstm_scan", "torchrl_step", "torchrl_recurrent"]
)
def test_each_check_runs_once_per_call(case, check_counts):
    rng = np.random.default_rng(0)
    batch = 11 + [
        "module_step",
        "module_recurrent",
        "lstm_scan",
        "torchrl_step",
        "torchrl_recurrent",
    ].index(case)
    params = params_for()
    steps = 4
    states = LSTMState(*(rng.normal(size=(batch, steps, L, H)).astype(np.float32) for _ in "hc"))
    x_seq = rng.normal(size=(batch, steps, I)).astype(np.float32)
    init_seq = rng.random((batch, steps, 1)) < 0.3
    if case == "module_step":
        state = jax.tree.map(lambda a: a[:, 0], states)
        LSTM(H, num_layers=L).apply(params, x_seq[:, 0], state, init_seq[:, 0], reset_state=state)
    elif case == "module_recurrent":
        LSTM(H, num_layers=L, recurrent_mode=True).apply(
            params, x_seq, jax.tree.map(lambda a: a[:, 0], states), init_seq, reset_state=states
        )
    elif case == "lstm_scan":
        jaxlstm.lstm_scan(params, x_seq, jax.tree.map(lambda a: a[:, 0], states), init_seq, states)
    elif case == "torchrl_step":
        jaxlstm.torchrl_apply(
            params, x_seq[:, 0], states.h[:, 0], states.c[:, 0], init_seq[:, 0], recurrent=False
        )
    else:
        jaxlstm.torchrl_apply(params, x_seq, states.h, states.c, init_seq, recurrent=True)
    assert check_counts["normalize_is_init"] == 1
    assert check_counts["check_params"] == 1
    assert check_counts["check_input"] == 1
    assert check_counts["check_state"] == (2 if case != "torchrl_recurrent" else 1) - (
        case == "torchrl_step"
    )


def test_check_count_fixture_sees_a_second_check(check_counts):
    """The counting is real: two traces count two."""
    params = params_for()
    x = np.zeros((23, 2, I), np.float32)
    jaxlstm.lstm_scan(params, x, None, np.zeros((23, 2), bool))
    jaxlstm.lstm_scan(params, x[:22], None, np.zeros((22, 2), bool))
    assert check_counts["normalize_is_init"] == 2


# --------------------------------------------------------------------------------------------
# Un-jitted apply hits a compile cache.


def test_unjitted_apply_compiles_once():
    lstm = LSTM(H, num_layers=L, recurrent_mode=True)
    params = params_for()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 17, I)).astype(np.float32)
    is_init = rng.random((3, 17)) < 0.2
    lstm.apply(params, x, None, is_init)  # the first call compiles
    with jax.log_compiles():
        import logging

        records = []

        class Grab(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())

        handler = Grab()
        logger = logging.getLogger("jax")
        logger.addHandler(handler)
        try:
            outs = [lstm.apply(params, x + k, None, is_init)[0] for k in range(5)]
        finally:
            logger.removeHandler(handler)
    compiles = [r for r in records if "Compiling" in r]
    assert compiles == [], compiles
    # The calls did run with the new values.
    assert float(jnp.abs(outs[0] - outs[1]).max()) > 1e-4


def test_core_cache_grows_once_per_shape():
    from jaxlstm._scan import core

    lstm = LSTM(H, num_layers=L, recurrent_mode=True)
    params = params_for()
    before = core._cache_size()
    for _ in range(3):
        for steps in (5, 6):
            lstm.apply(params, np.ones((2, steps, I), np.float32))
    assert core._cache_size() - before == 2


# --------------------------------------------------------------------------------------------
# Params of another configuration.


@pytest.mark.parametrize(
    "module_kwargs, params, message",
    [
        (
            {"num_layers": 1},
            params_for(layers=2),
            r"num_layers: the module has num_layers=1 but the params hold 2",
        ),
        (
            {"num_layers": 3},
            params_for(layers=2),
            r"num_layers: the module has num_layers=3 but the params hold 2",
        ),
        (
            {"use_bias": False},
            params_for(),
            r"use_bias: the module has use_bias=False but the params hold biases",
        ),
        (
            {},
            params_for(bias=False),
            r"use_bias: the module has use_bias=True but the params hold no biases",
        ),
        (
            {"hidden_size": H + 1},
            params_for(),
            r"hidden_size: the module has hidden_size=6 but the params have hidden_size=5",
        ),
        (
            {},
            params_for(input_size=I + 1),
            r"x has 3 features but the parameters expect input_size=4",
        ),
    ],
    ids=["fewer_layers", "more_layers", "extra_bias", "missing_bias", "hidden", "input"],
)
def test_params_of_another_config_raise_naming_the_field(module_kwargs, params, message):
    kwargs = {"hidden_size": H, "num_layers": L, **module_kwargs}
    lstm = LSTM(recurrent_mode=True, **kwargs)
    x = np.zeros((2, 3, I), np.float32)
    for apply in (lstm.apply, jax.jit(lstm.apply)):
        with pytest.raises(ValueError, match=message):
            apply(params, x)


def test_params_with_a_misshapen_layer_raise_naming_the_array():
    params = params_for()
    params["params"]["weight_hh_l1"] = np.zeros((4 * H, H + 2), np.float32)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "params['weight_hh_l1']: the module (input_size=3, hidden_size=5) expects shape (20, 5). Got (20, 7)"
        ),
    ):
        LSTM(H, num_layers=L).apply(params, np.zeros((2, I), np.float32))
    params = params_for()
    del params["params"]["bias_hh_l1"]
    with pytest.raises(ValueError, match=r"expects exactly .*bias_hh_l1.*Got"):
        LSTM(H, num_layers=L).apply(params, np.zeros((2, I), np.float32))


# --------------------------------------------------------------------------------------------
# Dtypes and sizes.


@pytest.mark.parametrize("hidden_size", [0, -4])
def test_nonpositive_hidden_size(hidden_size):
    lstm = LSTM(hidden_size)
    with pytest.raises(
        ValueError, match=rf"hidden_size must be a positive integer\. Got hidden_size={hidden_size}"
    ):
        lstm.init(jax.random.key(0), np.zeros((2, I), np.float32))
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        lstm.initial_state(2)


def test_complex_weights_are_a_type_error():
    params = params_for()
    params["params"]["weight_hh_l0"] = params["params"]["weight_hh_l0"].astype(np.complex64)
    with pytest.raises(
        TypeError, match=r"params\['weight_hh_l0'\] must have a real floating dtype.*complex64"
    ):
        jaxlstm.lstm_scan(params, np.zeros((2, 3, I), np.float32))


def test_zero_hidden_and_zero_d_weights():
    params = {
        "params": {
            "weight_ih_l0": np.zeros((0, I), np.float32),
            "weight_hh_l0": np.zeros((0, 0), np.float32),
        }
    }
    with pytest.raises(ValueError, match=r"hidden_size=0.*hidden_size must be >= 1"):
        jaxlstm.lstm_scan(params, np.zeros((2, 3, I), np.float32))
    params = params_for()
    params["params"]["bias_ih_l0"] = np.float32(0.0)
    with pytest.raises(
        ValueError, match=r"params\['bias_ih_l0'\] must be an array .* Got a 0-d value"
    ):
        jaxlstm.lstm_scan(params, np.zeros((2, 3, I), np.float32))


@pytest.mark.parametrize("dtype", [np.int32, np.bool_])
def test_integer_state_is_a_type_error(dtype):
    state = LSTMState(np.zeros((2, L, H), dtype), np.zeros((2, L, H), dtype))
    with pytest.raises(
        TypeError, match=rf"state\.h must have a real floating dtype .*Got dtype={np.dtype(dtype)}"
    ):
        LSTM(H, num_layers=L).apply(params_for(), np.zeros((2, I), np.float32), state)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.bool_])
def test_integer_x_is_a_type_error_not_a_silent_cast(dtype):
    """Deliberate (issue 9): torch.nn.LSTM refuses integer inputs, and an integer
    observation is usually a mistake (ids meant for an embedding); cast explicitly."""
    with pytest.raises(TypeError, match=r"x must have a real floating dtype.*cast them yourself"):
        LSTM(H, num_layers=L, recurrent_mode=True).apply(params_for(), np.zeros((2, 3, I), dtype))
