"""The rest of torch's recurrent options against torch and torchrl: LSTM ``proj_size``, bidirectional.

Core (``jaxlstm``) against ``torch.nn.LSTM(proj_size=P)`` on the same weights,
forward, states and gradients, with resets; the bridge against torchrl 0.14.1's
``LSTMModule(proj_size=P)`` in recurrent mode, and against ``nn.LSTM`` in step
mode, where torchrl's own module crashes.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.modules import GRUModule as TorchRLGRUModule
from torchrl.modules import LSTMModule as TorchRLLSTMModule
from torchrl.modules import set_recurrent_mode

import bridge
import jaxlstm
from jaxlstm import LSTM, LSTMState

# torch warns on every call that oneDNN has no projected LSTM.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections")

T = 5
INPUT_SIZE = 3
HIDDEN = 6
PROJ = 2


def torch_lstmp(num_layers, bias, seed=0):
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(
        INPUT_SIZE, HIDDEN, num_layers=num_layers, bias=bias, proj_size=PROJ, batch_first=True
    )
    if bias:
        with torch.no_grad():
            for k in range(num_layers):
                getattr(lstm, f"bias_hh_l{k}").add_(0.1)
    return lstm


def inputs(batch, num_layers, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, T, INPUT_SIZE)).astype(np.float32)
    h0 = rng.normal(size=(batch, num_layers, PROJ)).astype(np.float32)
    c0 = rng.normal(size=(batch, num_layers, HIDDEN)).astype(np.float32)
    is_init = rng.random((batch, T)) < 0.3
    is_init[0, 2] = True
    return x, h0, c0, is_init


def torch_stepwise(lstm, x, h0, c0, is_init):
    """torch's outputs and per-step states ``[N, T, L, W]``, zeroing both states at resets."""
    keep = torch.tensor(~is_init, dtype=x.dtype)
    h, c = h0.transpose(0, 1), c0.transpose(0, 1)
    ys, hs, cs = [], [], []
    for t in range(x.shape[1]):
        mask = keep[None, :, t, None]
        y, (h, c) = lstm(x[:, t : t + 1], (h * mask, c * mask))
        ys.append(y)
        hs.append(h.transpose(0, 1))
        cs.append(c.transpose(0, 1))
    return torch.cat(ys, 1), torch.stack(hs, 1), torch.stack(cs, 1)


def test_converters_keep_weight_hr_bit_exact():
    lstm = torch_lstmp(2, True)
    params = jaxlstm.params_from_torch_state_dict(lstm.state_dict())["params"]
    assert params["weight_hr_l1"].shape == (PROJ, HIDDEN)
    assert params["weight_ih_l1"].shape == (4 * HIDDEN, PROJ)
    back = jaxlstm.params_to_torch_state_dict({"params": params})
    for name, value in lstm.state_dict().items():
        np.testing.assert_array_equal(back[name], value.numpy())


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_projected_lstm_forward_matches_torch(num_layers, bias):
    lstm = torch_lstmp(num_layers, bias)
    x, h0, c0, _ = inputs(3, num_layers)
    model = LSTM(HIDDEN, num_layers=num_layers, use_bias=bias, proj_size=PROJ, recurrent_mode=True)
    y, states = model.apply(
        jaxlstm.params_from_torch_state_dict(lstm.state_dict()), x, LSTMState(h0, c0)
    )
    y_t, (h_t, c_t) = lstm(
        torch.tensor(x),
        (
            torch.tensor(h0).transpose(0, 1).contiguous(),
            torch.tensor(c0).transpose(0, 1).contiguous(),
        ),
    )
    assert y.shape == (3, T, PROJ) and states.h.shape == (3, T, num_layers, PROJ)
    assert states.c.shape == (3, T, num_layers, HIDDEN)
    np.testing.assert_allclose(y, y_t.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(states.h[:, -1], h_t.transpose(0, 1).detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(states.c[:, -1], c_t.transpose(0, 1).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("backward", ["custom", "auto"])
@pytest.mark.parametrize("num_layers, bias", [(1, True), (2, False)])
def test_projected_lstm_gradients_match_torch_with_resets(backward, num_layers, bias):
    lstm = torch_lstmp(num_layers, bias)
    x, h0, c0, is_init = inputs(3, num_layers, seed=1)
    rng = np.random.default_rng(2)
    cot = [
        rng.normal(size=s).astype(np.float32)
        for s in [(3, T, PROJ), (3, T, num_layers, PROJ), (3, T, num_layers, HIDDEN)]
    ]

    def loss(params, x, h0, c0):
        y, s = jaxlstm.lstm_scan(params, x, LSTMState(h0, c0), is_init, backward=backward)
        return sum(jnp.sum(a * w) for a, w in zip((y, s.h, s.c), cot))

    params = jaxlstm.params_from_torch_state_dict(lstm.state_dict())
    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(params, x, h0, c0)

    leaves = [torch.tensor(a, requires_grad=True) for a in (x, h0, c0)]
    outs = torch_stepwise(lstm, *leaves, is_init)
    sum((o * torch.tensor(w)).sum() for o, w in zip(outs, cot)).backward()
    for got, leaf in zip(grads[1:], leaves):
        np.testing.assert_allclose(got, leaf.grad.numpy(), atol=1e-4)
    for name, p in lstm.named_parameters():
        np.testing.assert_allclose(
            grads[0]["params"][name], p.grad.numpy(), atol=1e-4, err_msg=name
        )


def test_projected_step_loop_equals_recurrent_call():
    model = LSTM(HIDDEN, num_layers=2, proj_size=PROJ)
    x, h0, c0, is_init = inputs(3, 2, seed=3)
    params = model.init(jax.random.key(0), x[:, 0])
    state, ys = LSTMState(h0, c0), []
    for t in range(T):
        y, state = model.apply(params, x[:, t], state, is_init[:, t])
        ys.append(y)
    y_seq, states = model.set_recurrent_mode(True).apply(params, x, LSTMState(h0, c0), is_init)
    np.testing.assert_allclose(np.stack(ys, 1), y_seq, atol=1e-6)
    np.testing.assert_allclose(state.c, states.c[:, -1], atol=1e-6)


def test_projected_state_shapes_are_checked():
    model = LSTM(HIDDEN, proj_size=PROJ)
    params = model.init(jax.random.key(0), jnp.zeros((2, INPUT_SIZE)))
    assert jax.tree.map(jnp.shape, model.initial_state(2)) == LSTMState(
        (2, 1, PROJ), (2, 1, HIDDEN)
    )
    wrong = LSTMState(jnp.zeros((2, 1, HIDDEN)), jnp.zeros((2, 1, HIDDEN)))
    with pytest.raises(ValueError, match=r"state.h .*\(2, 1, 2\).*proj_size=2"):
        model.apply(params, jnp.zeros((2, INPUT_SIZE)), wrong)
    with pytest.raises(ValueError, match="proj_size must be smaller than hidden_size"):
        LSTM(HIDDEN, proj_size=HIDDEN).init(jax.random.key(0), jnp.zeros((INPUT_SIZE,)))


# ------------------------------------------------------------------ bridge

KEYS = {"in_keys": ["obs", "h", "c"], "out_keys": ["out", ("next", "h"), ("next", "c")]}


def bridge_pair(num_layers=2):
    torch.manual_seed(0)
    theirs = TorchRLLSTMModule(INPUT_SIZE, HIDDEN, num_layers=num_layers, proj_size=PROJ, **KEYS)
    ours = bridge.LSTMModule(INPUT_SIZE, HIDDEN, num_layers=num_layers, proj_size=PROJ, **KEYS)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def bridge_td(batch_shape, num_layers=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    td = TensorDict(
        {
            "obs": torch.randn(*batch_shape, INPUT_SIZE, generator=gen),
            "h": torch.randn(*batch_shape, num_layers, PROJ, generator=gen),
            "c": torch.randn(*batch_shape, num_layers, HIDDEN, generator=gen),
            "is_init": torch.rand(*batch_shape, 1, generator=gen) < 0.3,
        },
        batch_shape,
    )
    return td


def test_bridge_projected_recurrent_mode_matches_torchrl_with_gradients():
    theirs, ours = bridge_pair()
    td = bridge_td((3, T))
    td["is_init"][0, 2] = True
    results = []
    for module in (theirs, ours):
        run = td.clone()
        x = run["obs"].requires_grad_()
        with set_recurrent_mode(True):
            out = module(run)
        (out["out"].sum() + out["next", "h"].square().sum() + out["next", "c"].sum()).backward()
        results.append((out, x.grad, {n: p.grad for n, p in module.named_parameters()}))
    (want, want_dx, want_dp), (got, got_dx, got_dp) = results
    for key in ("out", ("next", "h"), ("next", "c")):
        np.testing.assert_allclose(got[key].detach().numpy(), want[key].detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(got_dx.numpy(), want_dx.numpy(), atol=1e-4)
    for name in want_dp:
        np.testing.assert_allclose(got_dp[name].numpy(), want_dp[name].numpy(), atol=1e-4)
    assert ours.make_tensordict_primer().primers == theirs.make_tensordict_primer().primers


def test_bridge_projected_step_mode_matches_nn_lstm_where_torchrl_crashes():
    theirs, ours = bridge_pair()
    td = bridge_td((4,))
    td["is_init"][1] = True
    with torch.no_grad():
        # torchrl 0.14.1 zeroes c with h's shape: a shape error. If this stops
        # raising, the README's "difference" line is out of date.
        with pytest.raises(RuntimeError, match="must match the size"):
            theirs(td.clone())
        out = ours(td.clone())
        keep = (~td["is_init"]).float()[:, :, None]  # [N, 1, 1]
        h = (td["h"] * keep).transpose(0, 1).contiguous()
        c = (td["c"] * keep).transpose(0, 1).contiguous()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y, (h1, c1) = ours.lstm(td["obs"][:, None], (h, c))
    np.testing.assert_allclose(out["out"].numpy(), y[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(out["next", "h"].numpy(), h1.transpose(0, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(out["next", "c"].numpy(), c1.transpose(0, 1).numpy(), atol=1e-5)
    model, params = ours.to_jax()
    assert model.proj_size == PROJ
    y_jax, _ = model.apply(
        params,
        td["obs"].numpy(),
        LSTMState(td["h"].numpy(), td["c"].numpy()),
        td["is_init"].numpy(),
    )
    np.testing.assert_allclose(np.asarray(y_jax), out["out"].numpy(), atol=1e-5)


# ------------------------------------------------------------ bidirectional


def torch_rnn(kind, num_layers, bias=True, seed=0):
    torch.manual_seed(seed)
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    return cls(
        INPUT_SIZE, HIDDEN, num_layers=num_layers, bias=bias, batch_first=True, bidirectional=True
    )


def core_model(kind, num_layers, bias=True):
    cls = LSTM if kind == "lstm" else jaxlstm.GRU
    return cls(
        HIDDEN, num_layers=num_layers, use_bias=bias, bidirectional=True, recurrent_mode=True
    )


def as_state(kind, h, c):
    return LSTMState(h, c) if kind == "lstm" else h


def torch_state(kind, h, c):
    h = torch.tensor(h).transpose(0, 1).contiguous()
    if kind == "lstm":
        return (h, torch.tensor(c).transpose(0, 1).contiguous())
    return h


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers, bias", [(1, True), (2, False)])
def test_bidirectional_forward_matches_torch(kind, num_layers, bias):
    rnn = torch_rnn(kind, num_layers, bias)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, T, INPUT_SIZE)).astype(np.float32)
    h0, c0 = (rng.normal(size=(3, 2 * num_layers, HIDDEN)).astype(np.float32) for _ in range(2))
    params = jaxlstm.params_from_torch_state_dict(rnn.state_dict())
    assert "weight_hh_l0_reverse" in params["params"]
    y, states = core_model(kind, num_layers, bias).apply(params, x, as_state(kind, h0, c0))
    y_t, out_t = rnn(torch.tensor(x), torch_state(kind, h0, c0))
    np.testing.assert_allclose(y, y_t.detach().numpy(), atol=1e-5)
    h_n = (out_t[0] if kind == "lstm" else out_t).transpose(0, 1).detach().numpy()
    h = states.h if kind == "lstm" else states
    # Forward slots: the state after the last step; reverse slots: after step 0.
    np.testing.assert_allclose(h[:, -1, 0::2], h_n[:, 0::2], atol=1e-5)
    np.testing.assert_allclose(h[:, 0, 1::2], h_n[:, 1::2], atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("reset_kind", ["constant", "per_step"])
def test_bidirectional_trajectories_run_on_their_own(kind, reset_kind):
    # Each trajectory of a row equals torch's bidirectional RNN run on it alone,
    # from the state its forward direction starts from.
    rnn = torch_rnn(kind, 2)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, T, INPUT_SIZE)).astype(np.float32)
    h0, c0 = (rng.normal(size=(2, 4, HIDDEN)).astype(np.float32) for _ in range(2))
    shape = (2,) + ((T,) if reset_kind == "per_step" else ()) + (4, HIDDEN)
    rh, rc = (rng.normal(size=shape).astype(np.float32) for _ in range(2))
    is_init = np.zeros((2, T), bool)
    is_init[0, [2, 3]] = True  # row 0: [0 1 | 2 | 3 4]; row 1: one trajectory
    params = jaxlstm.params_from_torch_state_dict(rnn.state_dict())
    y, _ = core_model(kind, 2).apply(
        params, x, as_state(kind, h0, c0), is_init, reset_state=as_state(kind, rh, rc)
    )
    for row, start, stop in [(0, 0, 2), (0, 2, 3), (0, 3, T), (1, 0, T)]:
        if start == 0:
            h, c = h0[row], c0[row]
        elif reset_kind == "per_step":
            h, c = rh[row, start], rc[row, start]
        else:
            h, c = rh[row], rc[row]
        y_t, _ = rnn(
            torch.tensor(x[row : row + 1, start:stop]), torch_state(kind, h[None], c[None])
        )
        np.testing.assert_allclose(
            y[row, start:stop], y_t[0].detach().numpy(), atol=1e-5, err_msg=f"{row} {start}"
        )


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bidirectional_custom_backward_equals_autodiff(kind):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, T, INPUT_SIZE)).astype(np.float32)
    h0, c0 = (rng.normal(size=(2, 4, HIDDEN)).astype(np.float32) for _ in range(2))
    is_init = np.zeros((2, T), bool)
    is_init[0, 2] = True
    params = jaxlstm.params_from_torch_state_dict(torch_rnn(kind, 2).state_dict())

    def loss(backward, params, x, h0, c0):
        model = core_model(kind, 2).clone(backward=backward)
        y, s = model.apply(params, x, as_state(kind, h0, c0), is_init)
        return jnp.sum(jnp.sin(y)) + sum(jnp.sum(jnp.cos(a)) for a in jax.tree.leaves(s))

    args = (params, x, h0, c0)
    custom = jax.grad(lambda *a: loss("custom", *a), argnums=(0, 1, 2, 3))(*args)
    auto = jax.grad(lambda *a: loss("auto", *a), argnums=(0, 1, 2, 3))(*args)
    for a, b in zip(jax.tree.leaves(custom), jax.tree.leaves(auto)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _bidir_pair(kind, num_layers=2):
    torch.manual_seed(0)
    if kind == "lstm":
        keys = KEYS
        theirs = TorchRLLSTMModule(
            INPUT_SIZE, HIDDEN, num_layers=num_layers, bidirectional=True, **keys
        )
        ours = bridge.LSTMModule(lstm=theirs.lstm, **keys)
    else:
        keys = {"in_keys": ["obs", "h"], "out_keys": ["out", ("next", "h")]}
        theirs = TorchRLGRUModule(
            INPUT_SIZE, HIDDEN, num_layers=num_layers, bidirectional=True, **keys
        )
        ours = bridge.GRUModule(gru=theirs.gru, **keys)
    return theirs, ours


def _bidir_td(kind, batch_shape, num_layers=2):
    gen = torch.Generator().manual_seed(1)
    td = TensorDict(
        {
            "obs": torch.randn(*batch_shape, INPUT_SIZE, generator=gen),
            "h": torch.randn(*batch_shape, 2 * num_layers, HIDDEN, generator=gen),
            "is_init": torch.rand(*batch_shape, 1, generator=gen) < 0.3,
        },
        batch_shape,
    )
    if kind == "lstm":
        td["c"] = torch.randn(*batch_shape, 2 * num_layers, HIDDEN, generator=gen)
    return td


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("recurrent", [False, True])
def test_bridge_bidirectional_matches_torchrl_with_gradients(kind, recurrent):
    theirs, ours = _bidir_pair(kind)
    td = _bidir_td(kind, (3, T) if recurrent else (4,))
    if recurrent:
        td["is_init"][0, [2, 3]] = True
        td["is_init"][1] = False
    results = []
    for module in (theirs, ours):
        module.zero_grad()
        run = td.clone()
        x = run["obs"].requires_grad_()
        with set_recurrent_mode(recurrent):
            out = module(run)
        loss = out["out"].sum() + sum(out[k].square().sum() for k in module.out_keys[1:])
        loss.backward()
        results.append((out, x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}))
    (want, want_dx, want_dp), (got, got_dx, got_dp) = results
    for key in ours.out_keys:
        np.testing.assert_allclose(
            got[key].detach().numpy(), want[key].detach().numpy(), atol=1e-5, err_msg=str(key)
        )
    np.testing.assert_allclose(got_dx.numpy(), want_dx.numpy(), atol=1e-4)
    for name in want_dp:
        np.testing.assert_allclose(got_dp[name].numpy(), want_dp[name].numpy(), atol=1e-4)
    assert ours.make_tensordict_primer().primers == theirs.make_tensordict_primer().primers


def test_bridge_bidirectional_projected_lstm_matches_torchrl():
    torch.manual_seed(0)
    theirs = TorchRLLSTMModule(
        INPUT_SIZE, HIDDEN, num_layers=2, proj_size=PROJ, bidirectional=True, **KEYS
    )
    ours = bridge.LSTMModule.from_torch(theirs)
    gen = torch.Generator().manual_seed(4)
    td = TensorDict(
        {
            "obs": torch.randn(3, T, INPUT_SIZE, generator=gen),
            "h": torch.randn(3, T, 4, PROJ, generator=gen),
            "c": torch.randn(3, T, 4, HIDDEN, generator=gen),
            "is_init": torch.rand(3, T, 1, generator=gen) < 0.3,
        },
        [3, T],
    )
    td["is_init"][0, 2] = True
    with torch.no_grad(), set_recurrent_mode(True):
        want, got = theirs(td.clone()), ours(td.clone())
    assert got["out"].shape == (3, T, 2 * PROJ)
    for key in ours.out_keys:
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-5, err_msg=str(key))


def test_bidirectional_dropout_applies_between_layers_in_training_mode_only():
    theirs, _ = _bidir_pair("gru")
    gru = torch.nn.GRU(
        INPUT_SIZE, HIDDEN, num_layers=2, dropout=0.5, bidirectional=True, batch_first=True
    )
    ours = bridge.GRUModule(gru=gru, in_keys=["obs", "h"], out_keys=["out", ("next", "h")])
    ours.gru.load_state_dict(theirs.gru.state_dict())
    td = _bidir_td("gru", (3, T))
    with torch.no_grad(), set_recurrent_mode(True):
        ours.eval()
        np.testing.assert_allclose(
            ours(td.clone())["out"].numpy(), theirs(td.clone())["out"].numpy(), atol=1e-5
        )
        ours.train()
        dropped = ours(td.clone())["out"]
        plain = theirs(td.clone())["out"]
    assert dropped.shape == (3, T, 2 * HIDDEN)
    assert not np.allclose(dropped.numpy(), plain.numpy(), atol=1e-3)
