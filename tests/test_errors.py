"""Bad input raises at trace time, naming the argument, what was expected and what was got.

Every case runs eagerly and under ``jax.jit``: the checks read static shapes and dtypes, so
they fire while tracing instead of returning silently wrong numbers.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

import jaxlstm
from jaxlstm import LSTM, LSTMState

B, T, I, L, H = 3, 7, 4, 2, 5


def _params():
    rng = np.random.default_rng(0)
    shapes = jaxlstm.lstm_param_shapes(I, H, L, True)
    return {"params": {k: rng.uniform(-0.4, 0.4, s).astype(np.float32) for k, s in shapes.items()}}


PARAMS = _params()


def _x(*shape):
    return np.zeros(shape, np.float32)


def _state(*shape):
    return LSTMState(h=np.zeros(shape, np.float32), c=np.zeros(shape, np.float32))


GOOD_STATE = _state(B, L, H)

# (id, recurrent_mode, x, state, is_init, reset_state, error, regex that the message matches)
CASES = [
    # The feature size differs from the parameters'.
    (
        "features_recurrent",
        True,
        _x(B, T, I + 1),
        None,
        None,
        None,
        ValueError,
        r"x has 5 features but the parameters expect input_size=4\. Got x\.shape=\(3, 7, 5\)",
    ),
    (
        "features_step",
        False,
        _x(B, I - 1),
        None,
        None,
        None,
        ValueError,
        r"x has 3 features but the parameters expect input_size=4\. Got x\.shape=\(3, 3\)",
    ),
    # A recurrent call with no time axis, and T = 0.
    (
        "no_time_axis",
        True,
        _x(I),
        None,
        None,
        None,
        ValueError,
        r"x must have shape \[\*B, T, I\].*time axis.*Got x\.shape=\(4,\)",
    ),
    (
        "zero_steps",
        True,
        _x(B, 0, I),
        None,
        None,
        None,
        ValueError,
        r"x must hold at least one time step \(T >= 1\)\. Got x\.shape=\(3, 0, 4\), T=0",
    ),
    (
        "scalar_step_input",
        False,
        _x(),
        None,
        None,
        None,
        ValueError,
        r"x must have shape \[\*B, I\]\. Got x\.shape=\(\)",
    ),
    # States not [*B, L, H].
    (
        "state_torch_layout",
        True,
        _x(B, T, I),
        _state(L, B, H),
        None,
        None,
        ValueError,
        r"state\.h must have shape \[\*B, L, H\]=\(3, 2, 5\).*Got \(2, 3, 5\)",
    ),
    (
        "state_wrong_layers",
        False,
        _x(B, I),
        _state(B, 1, H),
        None,
        None,
        ValueError,
        (
            r"state\.h must have shape \[\*B, L, H\]=\(3, 2, 5\) \(num_layers=2, hidden_size=5\)\. "
            r"Got \(3, 1, 5\)"
        ),
    ),
    (
        "state_wrong_hidden",
        True,
        _x(B, T, I),
        _state(B, L, H + 1),
        None,
        None,
        ValueError,
        r"state\.h must have shape .*=\(3, 2, 5\).*Got \(3, 2, 6\)",
    ),
    (
        "state_wrong_batch",
        True,
        _x(B, T, I),
        _state(B + 1, L, H),
        None,
        None,
        ValueError,
        r"state\.h must have shape .*=\(3, 2, 5\).*Got \(4, 2, 5\)",
    ),
    (
        "state_per_step_in_recurrent_mode",
        True,
        _x(B, T, I),
        _state(B, T, L, H),
        None,
        None,
        ValueError,
        r"state\.h must have shape .*=\(3, 2, 5\).*Got \(3, 7, 2, 5\)",
    ),
    (
        "state_c_only",
        False,
        _x(B, I),
        LSTMState(h=GOOD_STATE.h, c=np.zeros((B, H), np.float32)),
        None,
        None,
        ValueError,
        r"state\.c must have shape .*=\(3, 2, 5\).*Got \(3, 5\)",
    ),
    (
        "state_plain_tuple",
        False,
        _x(B, I),
        (GOOD_STATE.h, GOOD_STATE.c),
        None,
        None,
        TypeError,
        r"state must be a jaxlstm\.LSTMState\(h=\.\.\., c=\.\.\.\)\. Got tuple",
    ),
    (
        "reset_state_step",
        False,
        _x(B, I),
        GOOD_STATE,
        np.ones(B, bool),
        _state(B, T, L, H),
        ValueError,
        r"reset_state\.h must have shape .*=\(3, 2, 5\).*Got \(3, 7, 2, 5\)",
    ),
    (
        "reset_state_recurrent_wrong_steps",
        True,
        _x(B, T, I),
        GOOD_STATE,
        np.ones((B, T), bool),
        _state(B, T + 1, L, H),
        ValueError,
        r"reset_state\.h must have shape .*=\(3, 7, 2, 5\).*Got \(3, 8, 2, 5\)",
    ),
    # is_init whose shape fits neither [*B, T] nor [*B, T, 1] (recurrent), [*B] nor [*B, 1].
    (
        "is_init_missing_time",
        True,
        _x(B, T, I),
        None,
        np.zeros(B, bool),
        None,
        ValueError,
        r"is_init must have shape \(3, 7\) or \(3, 7, 1\)\. Got is_init\.shape=\(3,\)",
    ),
    (
        "is_init_trailing_two",
        True,
        _x(B, T, I),
        None,
        np.zeros((B, T, 2), bool),
        None,
        ValueError,
        r"is_init must have shape \(3, 7\) or \(3, 7, 1\)\. Got is_init\.shape=\(3, 7, 2\)",
    ),
    (
        "is_init_time_major",
        True,
        _x(B, T, I),
        None,
        np.zeros((T, B), bool),
        None,
        ValueError,
        r"is_init must have shape \(3, 7\) or \(3, 7, 1\)\. Got is_init\.shape=\(7, 3\)",
    ),
    (
        "is_init_step_with_time",
        False,
        _x(B, I),
        None,
        np.zeros((B, T), bool),
        None,
        ValueError,
        r"is_init must have shape \(3,\) or \(3, 1\)\. Got is_init\.shape=\(3, 7\)",
    ),
    # A float is_init: 0.5 would be neither a reset nor not one (a dtype error: TypeError).
    (
        "is_init_float",
        True,
        _x(B, T, I),
        None,
        np.zeros((B, T), np.float32),
        None,
        TypeError,
        r"is_init must be bool \(or integer 0/1\)\. Got dtype=float32",
    ),
    (
        "is_init_float_step",
        False,
        _x(B, I),
        None,
        np.zeros(B, np.float32),
        None,
        TypeError,
        r"is_init must be bool \(or integer 0/1\)\. Got dtype=float32",
    ),
]


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
    "recurrent_mode, x, state, is_init, reset_state, error, message",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_raises(recurrent_mode, x, state, is_init, reset_state, error, message, use_jit):
    lstm = LSTM(H, num_layers=L, recurrent_mode=recurrent_mode)

    def apply(x, state, is_init, reset_state):
        return lstm.apply(PARAMS, x, state, is_init, reset_state=reset_state)

    if use_jit:
        apply = jax.jit(apply)
    with pytest.raises(error, match=message):
        apply(x, state, is_init, reset_state)


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_lstm_scan_checks_its_inputs(use_jit):
    """The functional core checks the same things (the bridge calls it directly)."""
    scan = (
        jax.jit(jaxlstm.lstm_scan, static_argnames=("input_projection",))
        if use_jit
        else jaxlstm.lstm_scan
    )
    with pytest.raises(ValueError, match=r"x has 5 features .* input_size=4"):
        scan(PARAMS, _x(B, T, I + 1))
    with pytest.raises(ValueError, match=r"T=0"):
        scan(PARAMS, _x(B, 0, I))
    with pytest.raises(ValueError, match=r"is_init must have shape \(3, 7\) or \(3, 7, 1\)"):
        scan(PARAMS, _x(B, T, I), None, np.zeros(B, bool))
    with pytest.raises(ValueError, match=r"state\.c must have shape"):
        scan(PARAMS, _x(B, T, I), LSTMState(h=GOOD_STATE.h, c=GOOD_STATE.c[:, :1]))
    with pytest.raises(ValueError, match=r"input_projection must be .*Got 'sideways'"):
        scan(PARAMS, _x(B, T, I), input_projection="sideways")


def test_params_with_missing_or_misshapen_arrays():
    inner = dict(PARAMS["params"])
    del inner["bias_hh_l1"]
    with pytest.raises(ValueError, match=r"params must hold exactly .*bias_hh_l1.*Got keys"):
        jaxlstm.lstm_scan(inner, _x(B, T, I))
    inner = dict(PARAMS["params"], weight_hh_l1=np.zeros((4 * H, H + 1), np.float32))
    with pytest.raises(
        ValueError, match=re.escape("params['weight_hh_l1'] must have shape (20, 5)")
    ):
        jaxlstm.lstm_scan(inner, _x(B, T, I))
    with pytest.raises(ValueError, match=r"weight_ih_l0.*Got keys"):
        jaxlstm.lstm_scan({"dense": np.zeros(3)}, _x(B, T, I))
