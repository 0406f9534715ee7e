"""``bridge.LSTMModule`` inside real torch/torchrl pipelines, against torchrl 0.14's module.

torch.compile, torch.vmap (over inputs and over parameters), float64,
``canonicalize``, copies and pickles, functional parameter swaps, and a real
collector batch through ``tensordict_to_pytree`` and back.
"""

from __future__ import annotations

import copy
import io

import jax
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.modules import LSTMModule as TorchRLLSTMModule
from torchrl.modules import canonicalize_rnn_subset, set_recurrent_mode

import bridge
from bridge import LSTMModule

INPUT_SIZE = 3
HIDDEN = 4
KEYS = {"in_keys": ["obs", "rs_h", "rs_c"], "out_keys": ["out", ("next", "rs_h"), ("next", "rs_c")]}
OUT_KEYS = ["out", ("next", "rs_h"), ("next", "rs_c")]


def make_pair(num_layers=2, dtype=torch.float32, seed=0, **torchrl_kwargs):
    """torchrl's module (random weights) and ours holding the same weights."""
    torch.manual_seed(seed)
    theirs = TorchRLLSTMModule(
        input_size=INPUT_SIZE, hidden_size=HIDDEN, num_layers=num_layers, **KEYS, **torchrl_kwargs
    ).to(dtype)
    ours = LSTMModule(input_size=INPUT_SIZE, hidden_size=HIDDEN, num_layers=num_layers, **KEYS)
    ours = ours.to(dtype)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def make_td(shape, num_layers=2, dtype=torch.float32, seed=1, states=True):
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    td = TensorDict(
        {"obs": torch.randn(*shape, INPUT_SIZE, generator=gen, dtype=dtype)}, batch_size=shape
    )
    if states:
        td["rs_h"] = torch.randn(*shape, num_layers, HIDDEN, generator=gen, dtype=dtype)
        td["rs_c"] = torch.randn(*shape, num_layers, HIDDEN, generator=gen, dtype=dtype)
    is_init = torch.rand(*shape, 1, generator=gen) < 0.3
    if len(shape) >= 2 and shape[-1] > 4:
        is_init[..., 3, :] = True  # at least two trajectories per row
    td["is_init"] = is_init
    return td


def assert_outputs_close(expected, actual, atol=1e-5, keys=OUT_KEYS):
    for key in keys:
        want, got = expected[key], actual[key]
        assert got.shape == want.shape and got.dtype == want.dtype, (key, got.shape, want.shape)
        np.testing.assert_allclose(
            got.detach().numpy(), want.detach().numpy(), atol=atol, rtol=0, err_msg=str(key)
        )


def params_grads(module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters()}


# ------------------------------------------------------------ canonicalize


def test_canonical_keys_are_torchrls():
    theirs, ours = make_pair()
    assert ours.canonical_keys == theirs.canonical_keys
    assert ours.canonical_keys == ["obs", "rs_h", "rs_c", "is_init", *OUT_KEYS]


@pytest.mark.parametrize("inplace", [False, True])
def test_canonicalize_matches_torchrl(inplace):
    theirs, ours = make_pair()
    base = make_td((5, 6))
    # Non-canonical layouts: a transposed view, and an expanded (stride 0) state.
    base["obs"] = torch.randn(6, 5, INPUT_SIZE).transpose(0, 1)
    base["rs_h"] = torch.randn(1, 6, 2, HIDDEN).expand(5, 6, 2, HIDDEN)
    base["reward"] = torch.randn(6, 5, 1).transpose(0, 1)  # not ours: left alone
    results = {}
    for name, module in (("theirs", theirs), ("ours", ours)):
        td = base.clone(recurse=False)
        before = {key: td[key] for key in ("obs", "rs_h", "reward")}
        out = module.canonicalize(td, inplace=inplace)
        assert (out is td) == inplace
        for key in ("obs", "rs_h", "rs_c", "is_init"):
            assert out[key].is_contiguous(), (name, key)
            assert torch.equal(out[key], base[key])
        assert out["reward"] is before["reward"] and not out["reward"].is_contiguous()
        if not inplace:
            assert td["obs"] is before["obs"] and td["rs_h"] is before["rs_h"]
        # (keys(): iterating a TensorDict walks its batch dim)
        layout = {key: (out[key].stride(), out[key] is base[key]) for key in td.keys()}  # noqa: SIM118
        results[name] = layout
    assert results["ours"] == results["theirs"]


def test_canonicalize_skips_missing_keys_and_returns_data_when_nothing_to_do():
    _, ours = make_pair()
    td = TensorDict({"reward": torch.zeros(3, 1)}, [3])
    assert ours.canonicalize(td) is td
    td = make_td((3,), states=False)
    out = ours.canonicalize(td)
    assert "rs_h" not in out.keys() and torch.equal(out["obs"], td["obs"])  # noqa: SIM118


def test_torchrl_canonicalize_rnn_subset_reads_our_canonical_keys():
    actor = LSTMModule(INPUT_SIZE, HIDDEN, in_key="obs", out_key="actor_out")
    critic = LSTMModule(INPUT_SIZE, HIDDEN, in_keys=["obs2", "h2", "c2"], out_key="critic_out")
    td = TensorDict(
        {
            "obs": torch.randn(4, 2, INPUT_SIZE).transpose(0, 1),
            "obs2": torch.randn(4, 2, INPUT_SIZE).transpose(0, 1),
            "reward": torch.randn(4, 2).transpose(0, 1),
        },
        [2, 4],
    )
    out = canonicalize_rnn_subset(td, [actor, critic])
    assert out["obs"].is_contiguous() and out["obs2"].is_contiguous()
    assert out["reward"] is td["reward"]
    assert not td["obs"].is_contiguous()


# --------------------------------------------------------------- compile


@pytest.mark.parametrize("recurrent, shape", [(False, (5,)), (True, (3, 7))])
def test_compiled_policy_matches_eager_torchrl_without_steady_state_recompiles(recurrent, shape):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    theirs, ours = make_pair()
    torch.manual_seed(2)
    head = torch.nn.Linear(HIDDEN, 2)

    def policy(lstm):
        return TensorDictSequential(
            lstm, TensorDictModule(head, in_keys=["out"], out_keys=["action"])
        )

    eager_torchrl, compiled_ours = policy(theirs), torch.compile(policy(ours))
    graphs = []
    with set_recurrent_mode(recurrent):
        for seed in range(4):
            td = make_td(shape, seed=seed)
            expected = eager_torchrl(td.clone())
            actual = compiled_ours(td.clone())
            assert_outputs_close(expected, actual, keys=[*OUT_KEYS, "action"])
            graphs.append(counters["stats"]["unique_graphs"])
    # Compiled once (the head), then reused: new values of the same shape do
    # not recompile.
    assert graphs[0] >= 1 and graphs[-1] == graphs[0], graphs
    # The LSTM is a graph break (not a crash inside JAX).
    assert any("torch.compiler.disable" in reason for reason in counters["graph_break"])


def test_compiled_training_step_gives_torchrls_gradients():
    torch._dynamo.reset()
    theirs, ours = make_pair()
    torch.manual_seed(2)
    heads = {"theirs": torch.nn.Linear(HIDDEN, 1), "ours": torch.nn.Linear(HIDDEN, 1)}
    heads["ours"].load_state_dict(heads["theirs"].state_dict())

    def loss_fn(lstm, head):
        def loss(td):
            return head(lstm(td)["out"]).square().mean()

        return loss

    eager = loss_fn(theirs, heads["theirs"])
    compiled = torch.compile(loss_fn(ours, heads["ours"]))
    td = make_td((3, 6))
    with set_recurrent_mode(True):
        eager(td.clone()).backward()
        compiled(td.clone()).backward()
    for (name, want), (_, got) in zip(theirs.named_parameters(), ours.named_parameters()):
        np.testing.assert_allclose(got.grad.numpy(), want.grad.numpy(), atol=1e-5, err_msg=name)
    np.testing.assert_allclose(
        heads["ours"].weight.grad.numpy(), heads["theirs"].weight.grad.numpy(), atol=1e-5
    )


# ------------------------------------------------------------------ vmap


@pytest.mark.parametrize("recurrent", [False, True])
def test_vmap_over_inputs_matches_torchrl(recurrent):
    # torchrl's pad backend branches on data, which vmap refuses: scan.
    theirs, ours = make_pair(python_based=True, recurrent_backend="scan")
    td = make_td((2, 3, 6))
    td["obs"].requires_grad_(True)
    with set_recurrent_mode(recurrent):
        expected = torch.vmap(theirs)(td.clone())
        actual = torch.vmap(ours)(td.clone())
    assert_outputs_close(expected, actual)
    (want,) = torch.autograd.grad(expected["out"].square().sum(), td["obs"])
    (got,) = torch.autograd.grad(actual["out"].square().sum(), td["obs"])
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def _vmap_over_params(module, params, td):
    def call(p, td):
        with p.to_module(module):
            return module(td)

    return torch.vmap(call, (0, None))(params, td)


@pytest.mark.parametrize("recurrent", [False, True])
def test_vmap_over_parameters_with_gradients_matches_torchrl(recurrent):
    theirs, ours = make_pair(python_based=True)
    # Two different parameter sets stacked on a leading dim.
    scale = torch.tensor([0.5, 1.5])
    stacked = TensorDict.from_module(theirs).expand(2)
    stacked = stacked.apply(lambda t: (t * scale.view(2, *[1] * (t.ndim - 1))).detach())
    params = {"theirs": stacked.clone(), "ours": stacked.clone()}
    for p in params.values():
        p.apply_(lambda t: t.requires_grad_(True))
    td = make_td((3, 6))
    with set_recurrent_mode(recurrent):
        expected = _vmap_over_params(theirs, params["theirs"], td.clone())
        actual = _vmap_over_params(ours, params["ours"], td.clone())
    assert actual["out"].shape == (2, 3, 6, HIDDEN)
    assert_outputs_close(expected, actual)
    # The two parameter sets really give two different results.
    assert not torch.allclose(actual["out"][0], actual["out"][1])
    expected["out"].square().sum().backward()
    actual["out"].square().sum().backward()
    for key in params["theirs"].keys(include_nested=True, leaves_only=True):
        np.testing.assert_allclose(
            params["ours"].grad[key].numpy(), params["theirs"].grad[key].numpy(), atol=1e-5
        )


def test_nested_vmap_over_parameters_and_inputs_matches_torchrl():
    theirs, ours = make_pair(python_based=True)
    stacked = TensorDict.from_module(theirs).expand(2)
    stacked = stacked.apply(lambda t: t * torch.tensor([0.5, 1.5]).view(2, *[1] * (t.ndim - 1)))
    td = make_td((4, 3))

    def run(module):
        def call(p, td):
            with p.to_module(module):
                return module(td)["out"]

        return torch.vmap(torch.vmap(call, (None, 0)), (0, None))(stacked, td)

    expected, actual = run(theirs), run(ours)
    assert actual.shape == (2, 4, 3, HIDDEN)
    np.testing.assert_allclose(actual.detach().numpy(), expected.detach().numpy(), atol=1e-5)


# --------------------------------------------------------------- float64


@pytest.mark.parametrize("recurrent", [False, True])
def test_float64_matches_torchrl_at_1e_10_without_global_x64(recurrent):
    assert not jax.config.jax_enable_x64
    theirs, ours = make_pair(dtype=torch.float64)
    td = make_td((3, 8), dtype=torch.float64)
    td["obs"].requires_grad_(True)
    with set_recurrent_mode(recurrent):
        expected, actual = theirs(td.clone()), ours(td.clone())
    assert actual["out"].dtype == torch.float64
    assert_outputs_close(expected, actual, atol=1e-10)
    for module, out in ((theirs, expected), (ours, actual)):
        module.zero_grad()
        out["out"].square().sum().backward()
    for name, want in params_grads(theirs).items():
        np.testing.assert_allclose(
            params_grads(ours)[name].numpy(), want.numpy(), atol=1e-10, err_msg=name
        )
    # x64 was enabled for the module's own computation only.
    assert not jax.config.jax_enable_x64
    assert jax.numpy.ones(1).dtype == np.float32
    # and float32 modules in the same process are unaffected.
    theirs32, ours32 = make_pair()
    td32 = make_td((3, 8))
    with set_recurrent_mode(recurrent):
        assert_outputs_close(theirs32(td32.clone()), ours32(td32.clone()))


@pytest.mark.parametrize("shifted", [False, True])
def test_recurrent_gae_in_float64_matches_torchrl(shifted):
    """torchrl's GAE with a recurrent value network, in float64 (as torchrl's own tests)."""
    from torchrl.objectives.value import GAE

    # shifted=False runs the value network under torch.vmap: torchrl needs scan there.
    theirs, ours = make_pair(dtype=torch.float64, python_based=True, recurrent_backend="scan")
    torch.manual_seed(3)
    head = torch.nn.Linear(HIDDEN, 1).double()
    td = make_td((3, 8), dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    td["next", "obs"] = torch.randn(3, 8, INPUT_SIZE, generator=gen, dtype=torch.float64)
    td["next", "rs_h"] = torch.randn(3, 8, 2, HIDDEN, generator=gen, dtype=torch.float64)
    td["next", "rs_c"] = torch.randn(3, 8, 2, HIDDEN, generator=gen, dtype=torch.float64)
    td["next", "reward"] = torch.randn(3, 8, 1, generator=gen, dtype=torch.float64)
    done = torch.zeros(3, 8, 1, dtype=torch.bool)
    done[:, 2] = True
    td["is_init"] = torch.zeros(3, 8, 1, dtype=torch.bool)
    td["is_init"][:, 0] = td["is_init"][:, 3] = True
    td["next", "done"] = td["next", "terminated"] = done
    td["next", "is_init"] = torch.zeros(3, 8, 1, dtype=torch.bool)
    advantages = []
    for lstm in (theirs, ours):
        value_net = TensorDictSequential(
            lstm, TensorDictModule(head, in_keys=["out"], out_keys=["state_value"])
        )
        gae = GAE(gamma=0.9, lmbda=0.95, value_network=value_net, shifted=shifted)
        with set_recurrent_mode(True):
            advantages.append(gae(td.clone())["advantage"])
    assert advantages[1].dtype == torch.float64
    np.testing.assert_allclose(
        advantages[1].detach().numpy(), advantages[0].detach().numpy(), atol=1e-10, rtol=0
    )
    assert not jax.config.jax_enable_x64


# ------------------------------------------------- copies and parameter swaps


def test_deepcopy_is_independent():
    _, ours = make_pair()
    td = make_td((4,))
    before = ours(td.clone())["out"]
    twin = copy.deepcopy(ours)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(1.0)
    assert torch.equal(twin(td.clone())["out"], before)
    assert not torch.allclose(ours(td.clone())["out"], before)
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
    assert not torch.allclose(ours(td.clone())["out"], twin(td.clone())["out"])


def test_torch_save_and_load_of_the_whole_module():
    theirs, ours = make_pair()
    td = make_td((3, 6))
    ours(td.clone())  # a called module (with its JAX parameter views) pickles too
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is LSTMModule and loaded.in_keys == ours.in_keys
    with set_recurrent_mode(True):
        assert_outputs_close(theirs(td.clone()), loaded(td.clone()))
    with torch.no_grad():
        next(loaded.parameters()).add_(1.0)
    with set_recurrent_mode(True):
        assert_outputs_close(theirs(td.clone()), ours(td.clone()))


def test_functional_call_swaps_parameters_like_torchrl():
    theirs, ours = make_pair()
    td = make_td((3, 6))
    other = {name: torch.randn_like(p) for name, p in theirs.named_parameters()}
    own_before = ours(td.clone())["out"]
    expected = torch.func.functional_call(theirs, other, (td.clone(),))
    actual = torch.func.functional_call(ours, other, (td.clone(),))
    assert_outputs_close(expected, actual)
    assert not torch.allclose(actual["out"], own_before)
    # Back to its own parameters afterwards (no stale cached weights).
    assert torch.equal(ours(td.clone())["out"], own_before)


def test_tensordict_to_module_swaps_parameters_with_gradients():
    theirs, ours = make_pair()
    td = make_td((3, 6))
    swapped = TensorDict.from_module(theirs).apply(lambda t: (t * 0.7).detach())
    grads = {}
    for name, module in (("theirs", theirs), ("ours", ours)):
        params = swapped.clone().apply_(lambda t: t.requires_grad_(True))
        with set_recurrent_mode(True), params.to_module(module):
            out = module(td.clone())
        out["out"].sum().backward()
        grads[name] = (out, params.grad)
    assert_outputs_close(grads["theirs"][0], grads["ours"][0])
    for key, want in grads["theirs"][1].items(include_nested=True, leaves_only=True):
        np.testing.assert_allclose(grads["ours"][1][key].detach(), want.detach(), atol=1e-5)


# ------------------------------------------------------------ error parity


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
def test_dtype_mismatch_is_a_value_error_as_in_torchrl_and_a_type_error(dtype):
    theirs, ours = make_pair()
    td = make_td((3, 6), states=False)
    td["obs"] = td["obs"].to(dtype)
    td["is_init"].zero_()  # torchrl's pad path raises a RuntimeError before its check
    with set_recurrent_mode(True):
        with pytest.raises(ValueError):
            theirs(td.clone())
        with pytest.raises(ValueError, match=r"'obs'.*" + str(dtype).split(".")[1]):
            ours(td.clone())
        with pytest.raises(TypeError):
            ours(td.clone())
    with pytest.raises(bridge.DtypeError):
        ours(td.clone())


def test_state_dtype_mismatch_is_a_dtype_error_naming_the_key():
    _, ours = make_pair()
    td = make_td((3,))
    td["rs_c"] = td["rs_c"].to(torch.int32)
    with pytest.raises(bridge.DtypeError, match=r"'rs_c'.*torch.int32"):
        ours(td)


@pytest.mark.parametrize("recurrent", [False, True])
def test_float_is_init_is_accepted_as_torchrl_does(recurrent):
    theirs, ours = make_pair()
    # Where torchrl 0.14.1 accepts float markers: recurrent mode with resets at
    # t=0 only (a mid-row float reset is an IndexError in its pad path), and
    # step mode without stored states (with states it needs bool).
    td = make_td((3, 6), states=recurrent)
    td["is_init"] = torch.tensor([1.0, 0.0, 2.0]).view(3, 1, 1).expand(3, 6, 1).clone()
    if recurrent:
        td["is_init"][:, 1:] = 0.0
    with set_recurrent_mode(recurrent):
        assert_outputs_close(theirs(td.clone()), ours(td.clone()))


@pytest.mark.parametrize("recurrent", [False, True])
def test_float_is_init_reads_any_non_zero_value_as_a_reset(recurrent):
    _, ours = make_pair()
    markers = torch.tensor([0.0, 1.0, 0.5, 2.0, 0.0, -1.0]).expand(3, 6).unsqueeze(-1)
    as_float = make_td((3, 6))
    as_float["is_init"] = markers.clone()
    as_bool = as_float.clone()
    as_bool["is_init"] = markers != 0
    with set_recurrent_mode(recurrent):
        assert_outputs_close(ours(as_bool), ours(as_float), atol=0)


@pytest.mark.parametrize("states", [True, False])
def test_recurrent_mode_with_no_time_steps_is_a_value_error_naming_the_key(states):
    theirs, ours = make_pair()
    td = make_td((2, 0), states=states)
    with set_recurrent_mode(True):
        with pytest.raises(IndexError):  # torchrl's
            theirs(td.clone())
        with pytest.raises(ValueError, match=r"'obs'.*at least one time step.*T=0"):
            ours(td.clone())


@pytest.mark.parametrize("hidden_size, message", [(0, "must be passed"), (-4, "greater than zero")])
def test_bad_hidden_size_is_torchrls_value_error_with_the_value(hidden_size, message):
    with pytest.raises(ValueError, match=message):
        TorchRLLSTMModule(INPUT_SIZE, hidden_size, in_key="x", out_key="y")
    with pytest.raises(ValueError, match=rf"{message}\. Got .*{hidden_size}"):
        LSTMModule(INPUT_SIZE, hidden_size, in_key="x", out_key="y")


def test_documented_shape_readings_match_torchrl():
    # Deliberate (torchrl does the same): a 1-d tensordict in recurrent mode is
    # one sequence; step mode on a [B, T] tensordict runs B*T independent steps.
    theirs, ours = make_pair()
    for recurrent, shape in ((True, (8,)), (False, (4, 5))):
        td = make_td(shape)
        with set_recurrent_mode(recurrent):
            assert_outputs_close(theirs(td.clone()), ours(td.clone()))


# ------------------------------------------- collector batches as pytrees


@pytest.fixture(scope="module")
def collector_batch() -> TensorDict:
    from torchrl.collectors import Collector
    from torchrl.envs import GymEnv, InitTracker, StepCounter, TransformedEnv

    env = TransformedEnv(GymEnv("CartPole-v1"), StepCounter())
    env.append_transform(InitTracker())
    env.set_seed(0)
    collector = Collector(env, None, frames_per_batch=64, total_frames=64)
    try:
        batch = next(iter(collector))
    finally:
        collector.shutdown()
    return batch


def test_collector_batch_round_trips_value_for_value(collector_batch):
    batch = collector_batch
    int64_keys = [
        key
        for key, value in batch.items(include_nested=True, leaves_only=True)
        if value.dtype == torch.int64
    ]
    assert {"step_count", ("collector", "traj_ids")} <= set(int64_keys)
    tree = bridge.tensordict_to_pytree(batch)
    assert tree["collector"]["traj_ids"].dtype == np.int32
    assert tree["next"]["reward"].dtype == np.float32
    # JAX computes on the narrowed counters.
    assert int(jax.numpy.max(tree["next"]["step_count"])) == int(batch["next", "step_count"].max())
    back = bridge.pytree_to_tensordict(tree, batch.batch_size, dtypes=batch)
    assert set(back.keys(True, True)) == set(batch.keys(True, True))
    for key, value in batch.items(include_nested=True, leaves_only=True):
        assert back[key].dtype == value.dtype, key
        assert torch.equal(back[key], value), key
    # Without dtypes the narrowed leaves stay int32.
    plain = bridge.pytree_to_tensordict(tree, batch.batch_size)
    assert plain["step_count"].dtype == torch.int32
    # A mapping works as well as a TensorDict.
    mapped = bridge.pytree_to_tensordict(
        tree, batch.batch_size, dtypes={("collector", "traj_ids"): torch.int64}
    )
    assert mapped["collector", "traj_ids"].dtype == torch.int64
    assert mapped["step_count"].dtype == torch.int32


@pytest.mark.parametrize(
    "dtype, value, shown",
    [
        (torch.int64, 2**31, r"\[0, 2147483648\]"),
        (torch.int64, -(2**31) - 1, r"\[-2147483649, 0\]"),
        (torch.uint64, 2**32, "values >= 2\\*\\*32"),
    ],
)
def test_int64_that_does_not_fit_raises_naming_the_key(dtype, value, shown):
    td = TensorDict({"ids": TensorDict({"traj": torch.zeros(3, dtype=dtype)}, [3])}, [3])
    td["ids", "traj"][1] = value
    with pytest.raises(OverflowError, match=r"\('ids', 'traj'\).*" + shown):
        bridge.tensordict_to_pytree(td)
    td["ids", "traj"][1] = 7
    tree = bridge.tensordict_to_pytree(td)
    assert tree["ids"]["traj"].tolist() == [0, 7, 0]


def test_narrowing_can_be_refused_and_float64_is_never_narrowed():
    td = TensorDict({"count": torch.arange(3), "x": torch.zeros(3, dtype=torch.float64)}, [3])
    with pytest.raises(TypeError, match="'x'.*x64"):
        bridge.tensordict_to_pytree(td)
    with pytest.raises(TypeError, match="'count'.*x64"):
        bridge.tensordict_to_pytree(td.exclude("x"), narrow_int64=False)


# ------------------------------------------------------------- torch.func


def _functional_loss(module, params, obs):
    td = TensorDict(
        {
            "obs": obs,
            "rs_h": torch.ones(*obs.shape[:-1], 2, HIDDEN),
            "rs_c": torch.ones(*obs.shape[:-1], 2, HIDDEN),
            "is_init": torch.zeros(*obs.shape[:-1], 1, dtype=torch.bool),
        },
        batch_size=obs.shape[:-1],
    )
    return torch.func.functional_call(module, params, (td,))["out"].square().sum()


@pytest.mark.parametrize("recurrent", [False, True])
def test_torch_func_grad_and_per_sample_gradients_match_torchrl(recurrent):
    theirs, ours = make_pair(python_based=True)
    obs = torch.randn(4, 6, INPUT_SIZE)
    grads = {}
    with set_recurrent_mode(recurrent):
        for name, module in (("theirs", theirs), ("ours", ours)):
            params = dict(module.named_parameters())
            loss = torch.func.grad(lambda p, x, m=module: _functional_loss(m, p, x))
            whole = loss(params, obs)
            per_sample = torch.vmap(loss, (None, 0))(params, obs)
            grads[name] = whole, per_sample
    for key, want in grads["theirs"][0].items():
        np.testing.assert_allclose(grads["ours"][0][key].detach(), want.detach(), atol=1e-5)
    for key, want in grads["theirs"][1].items():
        assert grads["ours"][1][key].shape == (4, *want.shape[1:])
        np.testing.assert_allclose(grads["ours"][1][key].detach(), want.detach(), atol=1e-5)
    # Per-sample gradients sum to the batch gradient (the loss is a sum).
    for key, whole in grads["ours"][0].items():
        np.testing.assert_allclose(grads["ours"][1][key].sum(0).detach(), whole.detach(), atol=1e-5)
