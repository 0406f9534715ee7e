"""``jaxlstm.GRU`` / ``gru_scan``: torch ``nn.GRU``'s math on the shared loop.

Forward, final states and gradients are compared with ``torch.nn.GRU`` on the
same weights (float32, highest precision; conftest turns TF32 off). Resets on
the torch side are written the plain way: step by step, zeroing ``h`` before
a step where ``is_init`` is true, so torch's autograd gives the reference.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlstm
from jaxlstm import GRU, LSTMState

torch = pytest.importorskip("torch")

T = 5
INPUT_SIZE = 3
HIDDEN = 6


def make_torch_gru(num_layers, use_bias, seed=0):
    torch.manual_seed(seed)
    gru = torch.nn.GRU(INPUT_SIZE, HIDDEN, num_layers=num_layers, bias=use_bias, batch_first=True)
    if use_bias:
        # b_hn sits inside r * (W_hn h + b_hn): make every bias distinct, so a port
        # that folded b_hn into b_in (flax's GRUCell) or swapped b_ih/b_hh fails.
        with torch.no_grad():
            for k in range(num_layers):
                getattr(gru, f"bias_hh_l{k}").add_(0.3)
    return gru


def params_of(gru):
    return jaxlstm.params_from_torch_state_dict(gru.state_dict())


def reference(gru, x, h0, is_init):
    """torch's y ``[N, T, H]`` and the state after every step ``[N, T, L, H]``, stepwise."""
    n = x.shape[0]
    keep = torch.tensor(~is_init, dtype=x.dtype)  # [N, T]
    h = h0.transpose(0, 1)  # [L, N, H]
    ys, hs = [], []
    for t in range(x.shape[1]):
        h = h * keep[None, :, t, None]
        y, h = gru(x[:, t : t + 1], h)
        ys.append(y)
        hs.append(h.transpose(0, 1))
    del n
    return torch.cat(ys, dim=1), torch.stack(hs, dim=1)


def inputs(batch_shape, num_layers, seed=0, resets=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=batch_shape + (T, INPUT_SIZE)).astype(np.float32)
    h0 = rng.normal(size=batch_shape + (num_layers, HIDDEN)).astype(np.float32)
    is_init = rng.random(batch_shape + (T,)) < (0.3 if resets else 0.0)
    return x, h0, is_init


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("use_bias", [True, False])
def test_forward_and_final_state_match_torch(batch_shape, num_layers, use_bias):
    gru = make_torch_gru(num_layers, use_bias)
    x, h0, _ = inputs(batch_shape, num_layers)
    model = GRU(HIDDEN, num_layers=num_layers, use_bias=use_bias, recurrent_mode=True)
    y, states = model.apply(params_of(gru), x, h0)

    n = math.prod(batch_shape)
    y_t, h_t = gru(
        torch.tensor(x.reshape(n, T, INPUT_SIZE)),
        torch.tensor(h0.reshape(n, num_layers, HIDDEN)).transpose(0, 1).contiguous(),
    )
    assert y.shape == batch_shape + (T, HIDDEN)
    assert states.shape == batch_shape + (T, num_layers, HIDDEN)
    np.testing.assert_allclose(
        np.asarray(y).reshape(n, T, HIDDEN), y_t.detach().numpy(), atol=1e-5, rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(states[..., -1, :, :]).reshape(n, num_layers, HIDDEN),
        h_t.transpose(0, 1).detach().numpy(),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("backward", ["custom", "auto"])
def test_gradients_match_torch_with_resets(num_layers, use_bias, backward):
    gru = make_torch_gru(num_layers, use_bias)
    batch = (4,)
    x, h0, is_init = inputs(batch, num_layers, seed=1)
    is_init[0, 2] = True  # row 0 holds at least two trajectories
    rng = np.random.default_rng(2)
    cot_y = rng.normal(size=batch + (T, HIDDEN)).astype(np.float32)
    cot_h = rng.normal(size=batch + (T, num_layers, HIDDEN)).astype(np.float32)

    def loss(params, x, h0):
        y, states = jaxlstm.gru_scan(params, x, h0, is_init, backward=backward)
        return jnp.sum(y * cot_y) + jnp.sum(states * cot_h)

    params = params_of(gru)
    g_params, g_x, g_h0 = jax.grad(loss, argnums=(0, 1, 2))(params, x, h0)

    x_t = torch.tensor(x, requires_grad=True)
    h0_t = torch.tensor(h0, requires_grad=True)
    y_t, hs_t = reference(gru, x_t, h0_t, is_init)
    (torch.sum(y_t * torch.tensor(cot_y)) + torch.sum(hs_t * torch.tensor(cot_h))).backward()

    np.testing.assert_allclose(g_x, x_t.grad.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(g_h0, h0_t.grad.numpy(), atol=1e-4, rtol=1e-4)
    for name, p in gru.named_parameters():
        np.testing.assert_allclose(
            g_params["params"][name], p.grad.numpy(), atol=1e-4, rtol=1e-4, err_msg=name
        )


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("reset_kind", ["constant", "per_step"])
def test_custom_backward_equals_autodiff(remat, reset_kind):
    gru = make_torch_gru(2, True)
    batch = (3,)
    x, h0, is_init = inputs(batch, 2, seed=3)
    rng = np.random.default_rng(4)
    shape = batch + ((T,) if reset_kind == "per_step" else ()) + (2, HIDDEN)
    target = rng.normal(size=shape).astype(np.float32)

    def loss(backward, params, x, h0, target):
        y, states = jaxlstm.gru_scan(params, x, h0, is_init, target, remat=remat, backward=backward)
        return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.cos(states))

    args = (params_of(gru), x, h0, target)
    custom = jax.grad(lambda *a: loss("custom", *a), argnums=(0, 1, 2, 3))(*args)
    auto = jax.grad(lambda *a: loss("auto", *a), argnums=(0, 1, 2, 3))(*args)
    for c, a in zip(jax.tree.leaves(custom), jax.tree.leaves(auto)):
        np.testing.assert_allclose(c, a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_shape", [(3,), (2, 2)])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_step_loop_equals_recurrent_call_with_resets(batch_shape, num_layers):
    params = GRU(HIDDEN, num_layers=num_layers).init(
        jax.random.key(0), jnp.zeros(batch_shape + (INPUT_SIZE,))
    )
    x, h0, is_init = inputs(batch_shape, num_layers, seed=5)
    step = GRU(HIDDEN, num_layers=num_layers)
    h, ys = h0, []
    for t in range(T):
        y, h = step.apply(params, x[..., t, :], h, is_init[..., t])
        ys.append(y)
    y_seq, states = step.set_recurrent_mode(True).apply(params, x, h0, is_init)
    np.testing.assert_allclose(np.stack(ys, axis=-2), y_seq, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(h, states[..., -1, :, :], atol=1e-6, rtol=1e-6)


def test_reset_loads_reset_state():
    params = GRU(HIDDEN).init(jax.random.key(1), jnp.zeros((2, INPUT_SIZE)))
    x, h0, _ = inputs((2,), 1, seed=6)
    is_init = np.zeros((2, T), bool)
    is_init[1, 3] = True
    target = np.full((2, 1, HIDDEN), 0.5, np.float32)
    model = GRU(HIDDEN, recurrent_mode=True)
    _, states = model.apply(params, x, h0, is_init, reset_state=target)
    # The same as restarting row 1 at step 3 from the target.
    _, restart = model.apply(params, x[1:, 3:], target[1:])
    np.testing.assert_allclose(states[1:, 3:], restart, atol=1e-6, rtol=1e-6)
    # Row 0 never resets: equal to a run without is_init.
    _, plain = model.apply(params, x[:1], h0[:1])
    np.testing.assert_allclose(states[:1], plain, atol=1e-6, rtol=1e-6)


def test_init_follows_torch_table_and_bound():
    model = GRU(HIDDEN, num_layers=2)
    params = model.init(jax.random.key(0), jnp.zeros((INPUT_SIZE,)))["params"]
    expected = dict(jaxlstm.lstm_param_shapes(INPUT_SIZE, HIDDEN, 2, True, cell=jaxlstm.GRU_CELL))
    assert {k: v.shape for k, v in params.items()} == expected
    assert expected["weight_ih_l0"] == (3 * HIDDEN, INPUT_SIZE)
    assert expected["weight_ih_l1"] == (3 * HIDDEN, HIDDEN)
    bound = 1 / math.sqrt(HIDDEN)
    for v in params.values():
        assert float(jnp.max(jnp.abs(v))) <= bound
    state = model.initial_state((4,))
    assert isinstance(state, jax.Array) and state.shape == (4, 2, HIDDEN)


def test_state_dict_round_trip_is_bit_exact_and_recognised():
    gru = make_torch_gru(2, True)
    sd = {f"gru.{k}": v for k, v in gru.state_dict().items()}
    params = jaxlstm.params_from_torch_state_dict(sd)
    back = jaxlstm.params_to_torch_state_dict(params, prefix="gru.")
    assert set(back) == set(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v.numpy())
    # The converters told the GRU apart from an LSTM by the shapes: an LSTM with
    # the same names refuses the GRU's [3H, ...] arrays.
    with pytest.raises(ValueError, match="weight_ih_l0"):
        jaxlstm.lstm_scan(params, np.zeros((1, T, INPUT_SIZE), np.float32))


def test_stored_params_of_an_lstm_are_refused_naming_the_array():
    lstm = torch.nn.LSTM(INPUT_SIZE, HIDDEN, batch_first=True)
    params = jaxlstm.params_from_torch_state_dict(lstm.state_dict())
    with pytest.raises(ValueError, match=r"weight_ih_l0.*\(18, 3\)"):
        GRU(HIDDEN).apply(params, np.zeros((INPUT_SIZE,), np.float32))


def test_state_must_be_one_array_of_the_right_shape():
    model = GRU(HIDDEN, num_layers=2)
    params = model.init(jax.random.key(0), jnp.zeros((3, INPUT_SIZE)))
    x = np.zeros((3, INPUT_SIZE), np.float32)
    zeros = np.zeros((3, 2, HIDDEN), np.float32)
    with pytest.raises(TypeError, match="state must be one array"):
        model.apply(params, x, LSTMState(zeros, zeros))
    with pytest.raises(ValueError, match=r"state must have shape \[\*B, L, H\]=\(3, 2, 6\)"):
        model.apply(params, x, np.zeros((3, 1, HIDDEN), np.float32))
    with pytest.raises(ValueError, match="reset_state"):
        model.apply(params, x, zeros, np.zeros((3,), bool), reset_state=zeros[:, :1])


def test_bfloat16_close_to_float32():
    model = GRU(HIDDEN, num_layers=2, recurrent_mode=True)
    x, h0, is_init = inputs((4,), 2, seed=7)
    params = model.init(jax.random.key(0), x)
    y32, s32 = model.apply(params, x, h0, is_init)
    y16, s16 = model.clone(dtype=jnp.bfloat16).apply(params, x, h0, is_init)
    assert y16.dtype == jnp.bfloat16 and s16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=2e-2)
    np.testing.assert_allclose(s16, s32, atol=2e-2)


def test_gru_cell_is_one_step_of_gru_scan():
    gru = make_torch_gru(1, True)
    params = params_of(gru)["params"]
    w = jaxlstm.GRU_CELL.weights(
        {k[: -len("_l0")]: jnp.asarray(v) for k, v in params.items()}, True
    )
    x, h0, _ = inputs((3,), 1, seed=8)
    h1 = jaxlstm.gru_cell(w, x[:, 0], h0[:, 0])
    _, states = jaxlstm.gru_scan(params, x[:, :1], h0)
    np.testing.assert_allclose(h1, states[:, 0, 0], atol=1e-6, rtol=1e-6)


def test_public_surface_names_the_gru():
    for name in ["GRU", "GRU_CELL", "GRUWeights", "gru_cell", "gru_scan", "torchrl_gru_apply"]:
        assert hasattr(jaxlstm, name), name
