"""``bridge.GRUModule`` against the real ``torchrl.modules.GRUModule`` (torchrl 0.14.1).

Both modules hold the same weights; every parity test runs both on clones of
one tensordict (random stored states, several trajectories per row) and
compares the out keys at 1e-5 (gradients at 1e-4). A rollout in a real
``GymEnv("Pendulum-v1")`` checks the two policies action for action.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.modules import GRUModule as TorchRLGRUModule
from torchrl.modules import set_recurrent_mode

import jaxlstm
from bridge import GRUModule, LSTMModule

ATOL = 1e-5
GRAD_ATOL = 1e-4
INPUT_SIZE = 3
HIDDEN = 5
T = 6

FLAT_KEYS = {"in_keys": ["obs", "rs"], "out_keys": ["out", ("next", "rs")]}
NESTED_KEYS = {
    "in_keys": [("agent", "obs"), ("agent", "h")],
    "out_keys": [("agent", "out"), ("next", "agent", "h")],
}


def make_pair(num_layers=1, bias=True, keys=FLAT_KEYS, seed=0, **kwargs):
    """torchrl's GRUModule with random weights and ours loaded with them."""
    torch.manual_seed(seed)
    sizes = {"input_size": INPUT_SIZE, "hidden_size": HIDDEN, "num_layers": num_layers}
    theirs = TorchRLGRUModule(**sizes, bias=bias, **keys, **kwargs)
    if bias:
        with torch.no_grad():  # b_hn differs from every other bias
            theirs.gru.bias_hh_l0.add_(0.3)
    ours = GRUModule(**sizes, bias=bias, **keys, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def make_td(batch_shape, num_layers=1, keys=FLAT_KEYS, *, hidden=True, recurrent=False, seed=1):
    """Random inputs, random stored states and resets (several trajectories in row 0)."""
    gen = torch.Generator().manual_seed(seed)
    value_key, h_key = keys["in_keys"]
    td = TensorDict(
        {value_key: torch.randn(*batch_shape, INPUT_SIZE, generator=gen)}, batch_size=batch_shape
    )
    if hidden:
        td[h_key] = torch.randn(*batch_shape, num_layers, HIDDEN, generator=gen)
    is_init = torch.rand(*batch_shape, 1, generator=gen) < 0.3
    if recurrent:
        rows = is_init.view(-1, batch_shape[-1], 1)
        rows[0, [2, 4]] = True
        if math.prod(batch_shape[:-1]) > 1:
            rows[1, 1:] = False  # one trajectory in row 1
    td["is_init"] = is_init
    return td


def assert_same(expected, actual, keys, atol=ATOL):
    for key in keys:
        want, got = expected[key], actual[key]
        assert got.shape == want.shape and got.dtype == want.dtype, key
        np.testing.assert_allclose(
            got.detach().numpy(), want.detach().numpy(), atol=atol, rtol=0, err_msg=str(key)
        )


LAYERS_AND_BIAS = [(1, True), (2, True), (3, False)]


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
@pytest.mark.parametrize("num_layers, bias", LAYERS_AND_BIAS)
def test_step_mode_matches_torchrl(batch_shape, num_layers, bias):
    theirs, ours = make_pair(num_layers, bias)
    td = make_td(batch_shape, num_layers)
    with torch.no_grad():
        assert_same(theirs(td.clone()), ours(td.clone()), ours.out_keys)


@pytest.mark.parametrize("batch_shape", [(T,), (3, T), (2, 2, T)])
@pytest.mark.parametrize("num_layers, bias", LAYERS_AND_BIAS)
def test_recurrent_mode_matches_torchrl(batch_shape, num_layers, bias):
    # T = 6 is padded to the time bucket 8 on our side: the padding must not show.
    theirs, ours = make_pair(num_layers, bias)
    td = make_td(batch_shape, num_layers, recurrent=True)
    with torch.no_grad(), set_recurrent_mode(True):
        assert_same(theirs(td.clone()), ours(td.clone()), ours.out_keys)


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("hidden", [True, False])
def test_nested_keys_and_missing_state_match_torchrl(recurrent, hidden):
    theirs, ours = make_pair(2, keys=NESTED_KEYS)
    assert ours.in_keys == theirs.in_keys and ours.out_keys == theirs.out_keys
    td = make_td((3, T), 2, NESTED_KEYS, hidden=hidden, recurrent=recurrent)
    with torch.no_grad(), set_recurrent_mode(recurrent):
        assert_same(theirs(td.clone()), ours(td.clone()), ours.out_keys)


def test_default_keys_are_torchrls():
    theirs = TorchRLGRUModule(INPUT_SIZE, HIDDEN, in_key="x", out_key="y")
    ours = GRUModule(INPUT_SIZE, HIDDEN, in_key="x", out_key="y")
    assert ours.in_keys == theirs.in_keys == ["x", "recurrent_state", "is_init"]
    assert ours.out_keys == theirs.out_keys == ["y", ("next", "recurrent_state")]


def _grads(module, td, recurrent, weights):
    leaves = {key: td[key].clone().requires_grad_() for key in ("obs", "rs")}
    run = td.clone()
    run.update(leaves)
    with set_recurrent_mode(recurrent):
        out = module(run)
    sum((out[key] * w).sum() for key, w in zip(module.out_keys, weights)).backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    grads.update({key: leaf.grad for key, leaf in leaves.items()})
    return grads


@pytest.mark.parametrize(
    "recurrent, batch_shape, num_layers, bias",
    [(True, (3, T), 2, True), (True, (2, 2, T), 1, False), (False, (3,), 2, True)],
)
def test_gradients_match_torchrl(recurrent, batch_shape, num_layers, bias):
    theirs, ours = make_pair(num_layers, bias)
    td = make_td(batch_shape, num_layers, recurrent=recurrent)
    gen = torch.Generator().manual_seed(3)
    probe = td.clone()
    with torch.no_grad(), set_recurrent_mode(recurrent):
        theirs(probe)
    weights = [torch.randn(probe[key].shape, generator=gen) for key in ours.out_keys]
    expected = _grads(theirs, td, recurrent, weights)
    actual = _grads(ours, td, recurrent, weights)
    assert set(actual) == set(expected)
    for name in expected:
        np.testing.assert_allclose(
            actual[name].numpy(), expected[name].numpy(), atol=GRAD_ATOL, rtol=0, err_msg=name
        )


def test_make_tensordict_primer_matches_torchrl():
    theirs, ours = make_pair(2)
    ours_primer, theirs_primer = ours.make_tensordict_primer(), theirs.make_tensordict_primer()
    assert type(ours_primer) is type(theirs_primer)
    assert ours_primer.primers == theirs_primer.primers
    bad = GRUModule(INPUT_SIZE, HIDDEN, in_keys=["x", "h"], out_keys=["y", "h2"])
    with pytest.raises(RuntimeError, match="compatible names"):
        bad.make_tensordict_primer()


def test_state_dict_is_torchrls_and_loads_both_ways():
    theirs, ours = make_pair(3, seed=5)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(k.startswith("gru.") for k in ours.state_dict())
    fresh = TorchRLGRUModule(INPUT_SIZE, HIDDEN, num_layers=3, **FLAT_KEYS)
    fresh.load_state_dict(ours.state_dict())
    mine = GRUModule(INPUT_SIZE, HIDDEN, num_layers=3, **FLAT_KEYS)
    mine.load_state_dict(theirs.state_dict())
    td = make_td((2,), 3)
    with torch.no_grad():
        assert_same(fresh(td.clone()), ours(td.clone()), ours.out_keys)
        assert_same(theirs(td.clone()), mine(td.clone()), ours.out_keys)


def test_from_torch_to_jax_and_load_jax_params():
    theirs, _ = make_pair(2, keys=NESTED_KEYS, default_recurrent_mode=True)
    ours = GRUModule.from_torch(theirs)
    assert ours.gru is theirs.gru and ours.recurrent_mode
    assert ours.in_keys == theirs.in_keys
    with pytest.raises(TypeError, match="gru must be a torch.nn.GRU"):
        GRUModule.from_torch(torch.nn.LSTM(2, 2, batch_first=True))
    with pytest.raises(TypeError, match="torchrl GRUModule or a torch.nn.GRU"):
        GRUModule.from_torch(torch.nn.Linear(2, 2))
    plain = GRUModule.from_torch(theirs.gru, **FLAT_KEYS)
    model, params = plain.to_jax()
    assert isinstance(model, jaxlstm.GRU) and not model.recurrent_mode
    td = make_td((3,), 2)
    with torch.no_grad():
        expected = plain(td.clone())
    y, h = model.apply(params, td["obs"].numpy(), td["rs"].numpy(), td["is_init"].numpy())
    np.testing.assert_allclose(np.asarray(y), expected["out"].numpy(), atol=ATOL)
    np.testing.assert_allclose(np.asarray(h), expected["next", "rs"].numpy(), atol=ATOL)
    params = jax.tree.map(lambda p: p * 0.5, params)
    plain.load_jax_params(params)
    np.testing.assert_array_equal(
        plain.gru.bias_hh_l1.detach().numpy(), np.asarray(params["params"]["bias_hh_l1"])
    )


def test_set_recurrent_mode_copy_shares_the_gru():
    _, ours = make_pair(1)
    seq = ours.set_recurrent_mode(True)
    assert isinstance(seq, GRUModule) and seq.gru is ours.gru and seq.recurrent_mode
    assert not ours.recurrent_mode


def test_torch_vmap_over_inputs_equals_the_batched_call():
    # The torch.func path (jax.vmap under the autograd Function's vmap rule) with one state.
    _, ours = make_pair(2)
    td = make_td((4, 3), 2)

    def run(obs, rs, is_init):
        out = ours(TensorDict({"obs": obs, "rs": rs, "is_init": is_init}, [3]))
        return out["out"], out["next", "rs"]

    with torch.no_grad():
        y, h = torch.vmap(run)(td["obs"], td["rs"], td["is_init"])
        batched = ours(td.clone())
    np.testing.assert_allclose(y.numpy(), batched["out"].numpy(), atol=ATOL)
    np.testing.assert_allclose(h.numpy(), batched["next", "rs"].numpy(), atol=ATOL)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"in_keys": ["obs", "h", "c"], "out_keys": ["out", "h2"]}, ValueError, "2 inputs"),
        ({"in_keys": ["obs", "h"], "out_keys": ["out", "h2", "c2"]}, ValueError, "2 outputs"),
        ({**FLAT_KEYS, "batch_first": False}, ValueError, "batch_first"),
    ],
)
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        GRUModule(INPUT_SIZE, HIDDEN, **kwargs)
    with pytest.raises(TypeError, match="gru must be a torch.nn.GRU"):
        GRUModule(gru=torch.nn.LSTM(2, 2, batch_first=True), **FLAT_KEYS)
    with pytest.raises(TypeError, match="lstm must be a torch.nn.LSTM"):
        LSTMModule(
            lstm=torch.nn.GRU(2, 2, batch_first=True),
            in_keys=["a", "b", "c"],
            out_keys=["d", "e", "f"],
        )


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("missing value", KeyError, "'obs'"),
        ("state shape", ValueError, r"'rs'.*\(2, 6, 2, 5\).*Got \(2, 6, 1, 5\)"),
        ("value dtype", TypeError, r"'obs'.*float64.*GRU's"),
    ],
)
def test_bad_input_raises_and_leaves_the_tensordict_untouched(case, error, match):
    _, ours = make_pair(2)
    td = make_td((2, T), 2)
    if case == "missing value":
        del td["obs"]
    elif case == "state shape":
        td["rs"] = torch.zeros(2, T, 1, HIDDEN)
    else:
        td["obs"] = td["obs"].double()
    before = {k: (v, v.clone()) for k, v in td.items(include_nested=True, leaves_only=True)}
    with pytest.raises(error, match=match):
        ours(td)
    after = dict(td.items(include_nested=True, leaves_only=True))
    assert set(after) == set(before)
    for key, (tensor, values) in before.items():
        assert after[key] is tensor and torch.equal(tensor, values), key


def test_pendulum_rollout_matches_torchrl_action_for_action():
    from torchrl.envs import Compose, GymEnv, InitTracker, StepCounter, TransformedEnv

    def make_env():
        # StepCounter truncates every 10 steps: the rollout resets mid-way.
        env = TransformedEnv(GymEnv("Pendulum-v1"), Compose(InitTracker(), StepCounter(10)))
        env.set_seed(0)
        return env

    torch.manual_seed(0)
    env = make_env()
    obs_size = env.observation_spec["observation"].shape[-1]
    keys = {"in_keys": ["observation", "rs"], "out_keys": ["features", ("next", "rs")]}
    theirs_gru = TorchRLGRUModule(obs_size, 16, num_layers=2, **keys)
    head = TensorDictModule(torch.nn.Linear(16, 1), in_keys=["features"], out_keys=["action"])
    ours_gru = GRUModule(gru=theirs_gru.gru, **keys)

    rollouts = []
    for gru in (theirs_gru, ours_gru):
        policy = TensorDictSequential(gru, head)
        env = make_env().append_transform(gru.make_tensordict_primer())
        with torch.no_grad():
            # 25 steps: three trajectories (break_when_any_done=False resets).
            env.set_seed(0)
            rollouts.append(env.rollout(25, policy, break_when_any_done=False))
    theirs, ours = rollouts
    np.testing.assert_allclose(ours["action"].numpy(), theirs["action"].numpy(), atol=ATOL)
    np.testing.assert_allclose(ours["next", "rs"].numpy(), theirs["next", "rs"].numpy(), atol=ATOL)
    assert ours["is_init"].squeeze(-1).nonzero().squeeze(-1).tolist() == [0, 10, 20]
    assert torch.count_nonzero(ours["rs"][1:10]) > 0  # the primer threads the state
    assert torch.count_nonzero(ours["rs"][10]) == 0  # and zeroes it at a reset

    # Replaying the rollout as one sequence: torchrl and ours agree, and match the rollout.
    replay = ours.select("observation", "rs", "is_init").clone()
    with torch.no_grad(), set_recurrent_mode(True):
        seq_ours = ours_gru(replay.clone())
        seq_theirs = theirs_gru(replay.clone())
    assert_same(seq_theirs, seq_ours, ["features", ("next", "rs")])
    np.testing.assert_allclose(seq_ours["features"].numpy(), ours["features"].numpy(), atol=ATOL)


def test_float64_module_matches_torchrl_in_float64():
    # The shared x64 scope reads the wrapped RNN through the table (self.gru here).
    theirs, ours = make_pair(2)
    theirs.double()
    ours.double()
    td = make_td((2, T), 2, recurrent=True).apply(
        lambda t: t.double() if t.is_floating_point() else t
    )
    with torch.no_grad(), set_recurrent_mode(True):
        expected, actual = theirs(td.clone()), ours(td.clone())
    assert actual["out"].dtype == torch.float64
    assert_same(expected, actual, ours.out_keys, atol=1e-12)


def test_torch_compile_breaks_the_graph_at_the_gru_and_matches_torchrl():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    theirs, ours = make_pair(2)
    head = torch.nn.Linear(HIDDEN, 2)

    def policy(module):
        return TensorDictSequential(
            module, TensorDictModule(head, in_keys=["out"], out_keys=["action"])
        )

    # backend="eager": dynamo's tracing and graph breaks without inductor's compile time.
    compiled = torch.compile(policy(ours), backend="eager")
    with torch.no_grad():
        for seed in range(2):
            td = make_td((3,), 2, seed=seed)
            assert_same(
                policy(theirs)(td.clone()), compiled(td.clone()), [*ours.out_keys, "action"]
            )
    assert any("torch.compiler.disable" in reason for reason in counters["graph_break"])
