"""``bridge.LSTMModule`` against the real ``torchrl.modules.LSTMModule`` (torchrl 0.14).

Both modules hold the same weights (``load_state_dict``); every parity test runs
both on clones of one tensordict and compares the three out keys at 1e-5
(gradients at 1e-4).
"""

from __future__ import annotations

import ast
import copy
import io
import math
import pathlib
import sys

import jax
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.modules import LSTMModule as TorchRLLSTMModule
from torchrl.modules import set_recurrent_mode

import bridge
import jaxlstm
from bridge import LSTMModule

ATOL = 1e-5
GRAD_ATOL = 1e-4
INPUT_SIZE = 3
HIDDEN = 5
T = 6

FLAT_KEYS = {
    "in_keys": ["obs", "rs_h", "rs_c"],
    "out_keys": ["out", ("next", "rs_h"), ("next", "rs_c")],
}
NESTED_KEYS = {
    "in_keys": [("agent", "obs"), ("agent", "h"), ("agent", "c")],
    "out_keys": [("agent", "out"), ("next", "agent", "h"), ("next", "agent", "c")],
}


def make_pair(num_layers=1, bias=True, keys=FLAT_KEYS, seed=0, **kwargs):
    """A torchrl module with random weights and a bridge module loaded with them."""
    torch.manual_seed(seed)
    theirs = TorchRLLSTMModule(
        input_size=INPUT_SIZE,
        hidden_size=HIDDEN,
        num_layers=num_layers,
        bias=bias,
        **keys,
        **kwargs,
    )
    ours = LSTMModule(
        input_size=INPUT_SIZE,
        hidden_size=HIDDEN,
        num_layers=num_layers,
        bias=bias,
        **keys,
        **kwargs,
    )
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def make_td(
    batch_shape,
    num_layers=1,
    keys=FLAT_KEYS,
    *,
    hidden=True,
    recurrent=False,
    seed=1,
    reset_prob=0.3,
):
    """Random inputs, random stored states and random resets for ``batch_shape``."""
    gen = torch.Generator().manual_seed(seed)
    batch_shape = tuple(batch_shape)
    value_key, h_key, c_key = keys["in_keys"]
    td = TensorDict(
        {value_key: torch.randn(*batch_shape, INPUT_SIZE, generator=gen)}, batch_size=batch_shape
    )
    if hidden:
        td[h_key] = torch.randn(*batch_shape, num_layers, HIDDEN, generator=gen)
        td[c_key] = torch.randn(*batch_shape, num_layers, HIDDEN, generator=gen)
    is_init = torch.rand(*batch_shape, 1, generator=gen) < reset_prob
    if recurrent and batch_shape[-1] > 2:
        # several trajectories in (at least) the first row, one in another
        is_init.view(-1, batch_shape[-1], 1)[0, [2, 4]] = True
        if math.prod(batch_shape[:-1]) > 1:
            is_init.view(-1, batch_shape[-1], 1)[1, 1:] = False
    td["is_init"] = is_init
    return td


def out_keys_of(module):
    return list(module.out_keys)


def assert_same_outputs(expected: TensorDict, actual: TensorDict, keys, atol=ATOL):
    for key in keys:
        want, got = expected[key], actual[key]
        assert got.shape == want.shape, (key, got.shape, want.shape)
        assert got.dtype == want.dtype, (key, got.dtype, want.dtype)
        np.testing.assert_allclose(
            got.detach().numpy(), want.detach().numpy(), atol=atol, rtol=0, err_msg=str(key)
        )


# ----------------------------------------------------------------- parity


# Every batch shape meets every layer count, and bias on and off. (A full cross
# product would double the number of XLA compilations, which dominate the run time.)
LAYERS_AND_BIAS = [(1, True), (2, True), (3, False)]


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3), (2, 1, 3)])
@pytest.mark.parametrize("num_layers, bias", LAYERS_AND_BIAS)
def test_step_mode_matches_torchrl(batch_shape, num_layers, bias):
    theirs, ours = make_pair(num_layers, bias)
    td = make_td(batch_shape, num_layers)
    with torch.no_grad():
        assert_same_outputs(theirs(td.clone()), ours(td.clone()), out_keys_of(ours))


@pytest.mark.parametrize("batch_shape", [(T,), (3, T), (2, 2, T)])
@pytest.mark.parametrize("num_layers, bias", LAYERS_AND_BIAS)
def test_recurrent_mode_matches_torchrl(batch_shape, num_layers, bias):
    theirs, ours = make_pair(num_layers, bias)
    td = make_td(batch_shape, num_layers, recurrent=True)
    with torch.no_grad(), set_recurrent_mode(True):
        assert_same_outputs(theirs(td.clone()), ours(td.clone()), out_keys_of(ours))


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("hidden", [True, False])
def test_nested_keys_and_missing_states_match_torchrl(recurrent, hidden):
    theirs, ours = make_pair(2, keys=NESTED_KEYS)
    td = make_td((3, T), 2, NESTED_KEYS, hidden=hidden, recurrent=recurrent)
    with torch.no_grad(), set_recurrent_mode(recurrent):
        assert_same_outputs(theirs(td.clone()), ours(td.clone()), out_keys_of(ours))


def test_recurrent_mode_writes_states_only_at_trajectory_ends():
    # A row [a a a | b b b]: torchrl's layout has the states at steps 2 and 5 only.
    theirs, ours = make_pair(2)
    td = make_td((3, T), 2, recurrent=True, reset_prob=0.0)
    td["is_init"][:] = False
    td["is_init"][:, 0] = True
    td["is_init"][0, 3] = True
    with torch.no_grad(), set_recurrent_mode(True):
        out = ours(td.clone())
        assert_same_outputs(theirs(td.clone()), out, out_keys_of(ours))
    for key in out_keys_of(ours)[1:]:
        h = out[key][0]
        assert torch.count_nonzero(h[[0, 1, 3, 4]]) == 0
        assert torch.count_nonzero(h[2]) > 0 and torch.count_nonzero(h[5]) > 0


def test_full_hidden_states_gives_the_state_after_every_step():
    theirs, _ = make_pair(2)
    ours = LSTMModule(lstm=theirs.lstm, **FLAT_KEYS, full_hidden_states=True)
    td = make_td((3, T), 2, recurrent=True)
    with torch.no_grad(), set_recurrent_mode(True):
        full = ours(td.clone())
        for t in range(T):
            # torchrl on the prefix [0, t] puts the state after step t at its last step.
            prefix = theirs(td[:, : t + 1].clone())
            for key in out_keys_of(ours)[1:]:
                np.testing.assert_allclose(
                    full[key][:, t].numpy(),
                    prefix[key][:, t].numpy(),
                    atol=ATOL,
                    err_msg=f"{key} t={t}",
                )


def test_non_contiguous_inputs_match_torchrl():
    theirs, ours = make_pair(2)
    td = make_td((3, T), 2, recurrent=True)
    td["obs"] = torch.randn(INPUT_SIZE, T, 3).permute(2, 1, 0)
    td["rs_h"] = torch.randn(3, T, HIDDEN, 2).transpose(-1, -2)
    assert not td["obs"].is_contiguous() and not td["rs_h"].is_contiguous()
    with torch.no_grad(), set_recurrent_mode(True):
        assert_same_outputs(theirs(td.clone()), ours(td.clone()), out_keys_of(ours))


def test_step_by_step_equals_recurrent_with_zero_stored_states():
    # In a rollout the stored state at a reset is the one the env primer wrote
    # (zeros), so step-mode zeroing and recurrent-mode restarts agree.
    _, ours = make_pair(2)
    td = make_td((3, T), 2, hidden=False, recurrent=True)
    with torch.no_grad():
        h = torch.zeros(3, 2, HIDDEN)
        c = torch.zeros(3, 2, HIDDEN)
        outs, hs = [], []
        for t in range(T):
            step = TensorDict(
                {"obs": td["obs"][:, t], "rs_h": h, "rs_c": c, "is_init": td["is_init"][:, t]}, [3]
            )
            step = ours(step)
            outs.append(step["out"])
            hs.append(h)
            h, c = step["next", "rs_h"], step["next", "rs_c"]
        td["rs_h"] = torch.stack(hs, 1)
        td["rs_c"] = torch.zeros(3, T, 2, HIDDEN)
        td["rs_c"][:, 1:] = torch.nan  # only used where a trajectory starts
        td["rs_c"][td["is_init"].squeeze(-1)] = 0.0
        td["rs_h"][td["is_init"].squeeze(-1)] = 0.0
        with set_recurrent_mode(True):
            seq = ours(td.clone())
    np.testing.assert_allclose(seq["out"].numpy(), torch.stack(outs, 1).numpy(), atol=ATOL)


# -------------------------------------------------------------- gradients


def _grad_case(theirs_or_ours, td, recurrent, weights):
    leaves = {key: td[key].clone().requires_grad_() for key in ("obs", "rs_h", "rs_c")}
    run = td.clone()
    run.update(leaves)
    with set_recurrent_mode(recurrent):
        out = theirs_or_ours(run)
    loss = sum((out[key] * w).sum() for key, w in zip(out_keys_of(theirs_or_ours), weights))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in theirs_or_ours.named_parameters()}
    grads.update({key: leaf.grad for key, leaf in leaves.items()})
    return grads


@pytest.mark.parametrize(
    "recurrent, batch_shape, num_layers, bias, options",
    [
        (True, (3, T), 2, True, {}),
        # recurrent_recompute="full" is jax.checkpoint: the same gradients
        (True, (2, 2, T), 1, False, {"recurrent_backend": "scan", "recurrent_recompute": "full"}),
        (False, (3,), 2, True, {}),
    ],
)
def test_gradients_match_torchrl(recurrent, batch_shape, num_layers, bias, options):
    theirs, ours = make_pair(num_layers, bias)
    ours = LSTMModule(lstm=ours.lstm, **FLAT_KEYS, **options)
    td = make_td(batch_shape, num_layers, recurrent=recurrent)
    gen = torch.Generator().manual_seed(3)
    probe = td.clone()
    with torch.no_grad(), set_recurrent_mode(recurrent):
        theirs(probe)
    weights = [torch.randn(probe[key].shape, generator=gen) for key in out_keys_of(ours)]
    expected = _grad_case(theirs, td, recurrent, weights)
    actual = _grad_case(ours, td, recurrent, weights)
    assert set(actual) == set(expected)
    # every gradient is its own buffer: torch accumulates into .grad in place
    assert len({g.data_ptr() for g in actual.values()}) == len(actual)
    for name in expected:
        np.testing.assert_allclose(
            actual[name].numpy(), expected[name].numpy(), atol=GRAD_ATOL, rtol=0, err_msg=name
        )


def test_step_mode_backward_uses_the_is_init_seen_by_forward():
    # Step mode recomputes in backward; flipping is_init in between must not matter.
    theirs, ours = make_pair(2)
    td = make_td((3,), 2)
    grads = []
    for module in (theirs, ours):
        module.zero_grad()
        run = td.clone()
        out = module(run)
        run["is_init"].logical_not_()
        out["next", "rs_c"].sum().backward()
        grads.append(module.lstm.weight_hh_l0.grad.clone())
    np.testing.assert_allclose(grads[1].numpy(), grads[0].numpy(), atol=GRAD_ATOL)


def test_torch_optimizer_trains_it_like_torchrl():
    theirs, ours = make_pair(2)
    td = make_td((3, T), 2, recurrent=True)
    opts = [torch.optim.Adam(m.parameters(), lr=0.05) for m in (theirs, ours)]
    with set_recurrent_mode(True):
        for _ in range(3):
            for module, opt in zip((theirs, ours), opts):
                opt.zero_grad()
                module(td.clone())["out"].square().mean().backward()
                opt.step()  # in place: the cached JAX view of the weights must follow
        with torch.no_grad():
            assert_same_outputs(theirs(td.clone()), ours(td.clone()), out_keys_of(ours), atol=1e-4)


def test_in_place_modification_before_backward_is_an_error():
    _, ours = make_pair(2)
    for recurrent, shape in ((True, (3, T)), (False, (3,))):
        td = make_td(shape, 2, recurrent=recurrent)
        with set_recurrent_mode(recurrent):
            out = ours(td)
        with torch.no_grad():
            ours.lstm.weight_hh_l0.add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out["out"].sum().backward()


def test_no_grad_path_when_nothing_requires_grad():
    _, ours = make_pair(2)
    ours.requires_grad_(False)
    out = ours(make_td((3,), 2))
    assert out["out"].grad_fn is None
    ours.requires_grad_(True)
    assert ours(make_td((3,), 2))["out"].grad_fn is not None
    with torch.no_grad():
        assert ours(make_td((3,), 2))["out"].grad_fn is None


# ------------------------------------------------------------ compilation


@pytest.mark.parametrize("grad", [False, True])
def test_steady_state_steps_do_not_recompile(grad, count_compiles):
    _, ours = make_pair(2)

    def rollout(steps):
        td = make_td((3,), 2)
        for _ in range(steps):
            td["obs"] = torch.randn(3, INPUT_SIZE)
            td["is_init"] = torch.rand(3, 1) < 0.5
            td = ours(td)
            td = td.update({"rs_h": td["next", "rs_h"], "rs_c": td["next", "rs_c"]})
        if grad:  # backward through all the chained steps
            td["out"].sum().backward()

    with torch.set_grad_enabled(grad):
        rollout(2)
        with count_compiles() as compiles:
            rollout(20)
    assert compiles[0] == 0


def test_training_steps_do_not_recompile(count_compiles):
    _, ours = make_pair(2)
    opt = torch.optim.SGD(ours.parameters(), lr=0.01)

    def train_step(seed):
        td = make_td((3, T), 2, recurrent=True, seed=seed)
        with set_recurrent_mode(True):
            loss = ours(td)["out"].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    train_step(0)
    train_step(1)
    with count_compiles() as compiles:
        for seed in range(2, 7):
            train_step(seed)
    assert compiles[0] == 0


# ------------------------------------------------------ state_dict, interop


def test_state_dict_keys_and_shapes_are_torchrls_and_load_both_ways():
    theirs, ours = make_pair(3, bias=True, seed=5)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    fresh = TorchRLLSTMModule(input_size=INPUT_SIZE, hidden_size=HIDDEN, num_layers=3, **FLAT_KEYS)
    fresh.load_state_dict(ours.state_dict())
    td = make_td((2,), 3)
    with torch.no_grad():
        assert_same_outputs(fresh(td.clone()), ours(td.clone()), out_keys_of(ours))


def test_load_state_dict_after_a_call_refreshes_the_weights():
    theirs, ours = make_pair(1, seed=0)
    other, _ = make_pair(1, seed=9)
    td = make_td((2,), 1)
    with torch.no_grad():
        ours(td.clone())
        ours.load_state_dict(other.state_dict())
        assert_same_outputs(other(td.clone()), ours(td.clone()), out_keys_of(ours))
        # replacing a parameter's storage is noticed too
        ours.lstm.weight_ih_l0.data = theirs.lstm.weight_ih_l0.data.clone()
        other.lstm.weight_ih_l0.data = theirs.lstm.weight_ih_l0.data.clone()
        assert_same_outputs(other(td.clone()), ours(td.clone()), out_keys_of(ours))


def test_cached_weights_follow_in_place_updates_when_xla_had_to_copy_them():
    # XLA copies a parameter whose memory is misaligned, so only the
    # (data_ptr, _version) key of the cache can notice an in-place update.
    theirs, ours = make_pair(1)
    weight = ours.lstm.weight_hh_l0
    misaligned = torch.empty(weight.numel() + 1)[1:].view_as(weight)
    misaligned.copy_(weight.detach())
    weight.data = misaligned
    assert bridge.torch_to_jax(misaligned).unsafe_buffer_pointer() != misaligned.data_ptr()
    td = make_td((3,), 1)
    with torch.no_grad():
        ours(td.clone())
        for module in (theirs, ours):
            module.lstm.weight_hh_l0.mul_(2.0)
        assert_same_outputs(theirs(td.clone()), ours(td.clone()), out_keys_of(ours))


def test_pickle_and_deepcopy_rebuild_the_weight_cache():
    theirs, ours = make_pair(2)
    td = make_td((3,), 2)
    with torch.no_grad():
        ours(td.clone())
        buffer = io.BytesIO()
        torch.save(ours, buffer)
        buffer.seek(0)
        for clone in (torch.load(buffer, weights_only=False), copy.deepcopy(ours)):
            assert clone.lstm.weight_ih_l0.data_ptr() != ours.lstm.weight_ih_l0.data_ptr()
            clone.lstm.weight_ih_l0.mul_(0.5)
            theirs.lstm.weight_ih_l0.copy_(clone.lstm.weight_ih_l0)
            assert_same_outputs(theirs(td.clone()), clone(td.clone()), out_keys_of(ours))


def test_from_torch_takes_torchrl_keys_mode_and_weights():
    theirs, _ = make_pair(2, keys=NESTED_KEYS, default_recurrent_mode=True)
    ours = LSTMModule.from_torch(theirs)
    assert ours.in_keys == theirs.in_keys and ours.out_keys == theirs.out_keys
    assert ours.recurrent_mode
    td = make_td((2, T), 2, NESTED_KEYS, recurrent=True)
    with torch.no_grad():
        assert_same_outputs(theirs(td.clone()), ours(td.clone()), out_keys_of(ours))
    plain = LSTMModule.from_torch(theirs.lstm, **FLAT_KEYS)
    assert plain.lstm is theirs.lstm and not plain.recurrent_mode
    with pytest.raises(TypeError, match="LSTMModule or a torch.nn.LSTM"):
        LSTMModule.from_torch(torch.nn.Linear(2, 2))


def test_to_jax_and_load_jax_params_round_trip():
    theirs, ours = make_pair(2)
    model, params = ours.to_jax()
    assert isinstance(model, jaxlstm.LSTM)
    td = make_td((3,), 2, hidden=True)
    with torch.no_grad():
        expected = theirs(td.clone())
    state = jaxlstm.LSTMState(h=td["rs_h"].numpy(), c=td["rs_c"].numpy())
    y, new_state = model.apply(params, td["obs"].numpy(), state, td["is_init"].numpy())
    np.testing.assert_allclose(np.asarray(y), expected["out"].numpy(), atol=ATOL)
    np.testing.assert_allclose(np.asarray(new_state.c), expected["next", "rs_c"].numpy(), atol=ATOL)
    # JAX-side update, loaded back into torch
    params = jax.tree.map(lambda p: p * 0.5, params)
    ours.load_jax_params(params)
    np.testing.assert_array_equal(
        ours.lstm.weight_hh_l1.detach().numpy(), np.asarray(params["params"]["weight_hh_l1"])
    )
    with torch.no_grad():
        y2 = ours(td.clone())["out"]
    y_jax, _ = model.apply(params, td["obs"].numpy(), state, td["is_init"].numpy())
    np.testing.assert_allclose(y2.numpy(), np.asarray(y_jax), atol=ATOL)
    with pytest.raises(ValueError, match="must hold exactly"):
        ours.load_jax_params(
            {"weight_ih_l0": np.zeros((16, INPUT_SIZE)), "weight_hh_l0": np.zeros((16, 4))}
        )


# ------------------------------------------------------------------ modes


def test_recurrent_mode_sources():
    _, ours = make_pair(1)
    assert ours.recurrent_mode is False
    with set_recurrent_mode(True):
        assert ours.recurrent_mode is True
    seq = LSTMModule(
        input_size=2, hidden_size=3, in_key="x", out_key="y", default_recurrent_mode=True
    )
    assert seq.recurrent_mode is True
    with set_recurrent_mode(False):
        assert seq.recurrent_mode is False
    with pytest.raises(RuntimeError, match="cannot be changed in-place"):
        ours.recurrent_mode = True


def test_set_recurrent_mode_method_returns_a_copy_sharing_parameters():
    _, ours = make_pair(1)
    training = ours.set_recurrent_mode(True)
    assert training is not ours and training.recurrent_mode and not ours.recurrent_mode
    assert training.lstm is ours.lstm
    assert training.set_recurrent_mode(True) is training
    assert ours.set_recurrent_mode(False) is ours
    with torch.no_grad():
        ours.lstm.bias_hh_l0.add_(1.0)
    assert torch.equal(training.lstm.bias_hh_l0, ours.lstm.bias_hh_l0)


# ------------------------------------------------------------ constructor


@pytest.mark.parametrize(
    "kwargs",
    [
        {
            "input_size": 3,
            "hidden_size": 4,
            "in_key": "x",
            "in_keys": ["x", "h", "c"],
            "out_key": "y",
        },
        {"input_size": 3, "hidden_size": 4, "out_key": "y"},
        {"input_size": 3, "hidden_size": 4, "in_key": "x"},
        {"input_size": 3, "hidden_size": 4, "in_keys": ["x", "h"], "out_key": "y"},
        {"input_size": 3, "hidden_size": 4, "in_key": "x", "out_keys": ["y", "h"]},
        {"input_size": 3, "in_key": "x", "out_key": "y"},
        {"input_size": 3, "hidden_size": 4, "batch_first": False, "in_key": "x", "out_key": "y"},
        {
            "input_size": 3,
            "hidden_size": 4,
            "recurrent_backend": "cudnn",
            "in_key": "x",
            "out_key": "y",
        },
        {
            "input_size": 3,
            "hidden_size": 4,
            "recurrent_recompute": "some",
            "in_key": "x",
            "out_key": "y",
        },
        {
            "input_size": 3,
            "hidden_size": 4,
            "recurrent_recompute": "full",
            "in_key": "x",
            "out_key": "y",
        },
        {
            "input_size": 3,
            "hidden_size": 4,
            "recurrent_matmul_precision": "fp8",
            "in_key": "x",
            "out_key": "y",
        },
        {
            "input_size": 3,
            "hidden_size": 4,
            "python_based": True,
            "bidirectional": True,
            "in_key": "x",
            "out_key": "y",
        },
        {
            "input_size": 3,
            "lstm": torch.nn.LSTM(3, 4, batch_first=True),
            "in_key": "x",
            "out_key": "y",
        },
        {"lstm": torch.nn.LSTM(3, 4), "in_key": "x", "out_key": "y"},
    ],
)
def test_constructor_raises_torchrls_value_errors(kwargs):
    with pytest.raises(ValueError) as theirs:
        TorchRLLSTMModule(**kwargs)
    with pytest.raises(ValueError) as ours:
        LSTMModule(**kwargs)
    assert str(ours.value) == str(theirs.value)


def test_constructor_defaults_and_backend_only_arguments():
    kwargs = {"input_size": 3, "hidden_size": 4, "in_key": "x", "out_key": "y"}
    theirs, ours = TorchRLLSTMModule(**kwargs), LSTMModule(**kwargs)
    assert (
        ours.in_keys == theirs.in_keys == ["x", "recurrent_state_h", "recurrent_state_c", "is_init"]
    )
    assert ours.out_keys == theirs.out_keys
    for extra in (
        {"python_based": True},
        {"recurrent_backend": "scan"},
        {"recurrent_backend": "auto"},
        {"recurrent_compute_dtype": torch.bfloat16},
        {"recurrent_backend": "scan", "recurrent_recompute": "full"},
        {"recurrent_matmul_precision": "tf32x3"},
        {"dropout": 0.5, "num_layers": 2},
    ):
        module = LSTMModule(**kwargs, **extra)
        assert module.lstm.hidden_size == 4
    wrapped = torch.nn.LSTM(3, 4, batch_first=True)
    assert LSTMModule(lstm=wrapped, in_key="x", out_key="y").lstm is wrapped  # as torchrl


@pytest.mark.parametrize("kwargs", [{"bidirectional": True}, {"proj_size": 2}])
def test_projected_and_bidirectional_lstms_are_built_as_torchrl_builds_them(kwargs):
    # Their numbers are checked against torchrl in tests/test_family_parity.py.
    ours = LSTMModule(input_size=3, hidden_size=4, in_key="x", out_key="y", **kwargs)
    theirs = TorchRLLSTMModule(input_size=3, hidden_size=4, in_key="x", out_key="y", **kwargs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


def test_matmul_precision_maps_to_jax_precision():
    kwargs = {"input_size": 3, "hidden_size": 4, "in_key": "x", "out_key": "y"}
    assert (
        LSTMModule(**kwargs, recurrent_matmul_precision="ieee")._precision()
        == jax.lax.Precision.HIGHEST
    )
    assert (
        LSTMModule(**kwargs, recurrent_matmul_precision="tf32")._precision()
        == jax.lax.Precision.DEFAULT
    )
    auto = LSTMModule(**kwargs)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert auto._precision() == jax.lax.Precision.HIGH
    finally:
        torch.set_float32_matmul_precision(previous)


def test_dropout_applies_in_training_mode_only():
    theirs, _ = make_pair(2)
    ours = LSTMModule(
        input_size=INPUT_SIZE, hidden_size=HIDDEN, num_layers=2, dropout=0.5, **FLAT_KEYS
    )
    ours.load_state_dict(theirs.state_dict())
    td = make_td((3, T), 2, recurrent=True)
    with torch.no_grad(), set_recurrent_mode(True):
        torch.manual_seed(0)
        a = ours(td.clone())["out"]
        torch.manual_seed(0)
        b = ours(td.clone())["out"]
        c = ours(td.clone())["out"]
        ours.eval()
        evaluated = ours(td.clone())
        assert_same_outputs(theirs(td.clone()), evaluated, out_keys_of(ours))
    assert torch.equal(a, b) and not torch.equal(a, c)  # masks follow torch's RNG
    assert not np.allclose(a.numpy(), evaluated["out"].numpy())


# ---------------------------------------------------------------- primer


def test_make_tensordict_primer_matches_torchrl():
    theirs, ours = make_pair(2)
    ours_primer, theirs_primer = ours.make_tensordict_primer(), theirs.make_tensordict_primer()
    assert type(ours_primer) is type(theirs_primer)
    assert ours_primer.primers == theirs_primer.primers
    bad = LSTMModule(
        input_size=3, hidden_size=4, in_keys=["x", "h", "c"], out_keys=["y", "h2", "c2"]
    )
    with pytest.raises(RuntimeError, match="compatible names"):
        bad.make_tensordict_primer()


def test_make_tensordict_primer_without_torchrl_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchrl.envs.transforms.transforms", None)
    _, ours = make_pair(1)
    with pytest.raises(ImportError, match="needs torchrl"):
        ours.make_tensordict_primer()


def test_bridge_imports_torchrl_only_inside_make_tensordict_primer():
    # bridge works without torchrl; only the primer (a torchrl object) needs it.
    # Checked on the source: a fresh interpreter costs more than this suite can afford.
    for path in pathlib.Path(bridge.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [alias.name for alias in node.names]
                )
                if any(name.split(".")[0] == "torchrl" for name in names):
                    assert path.name == "_module.py" and node.col_offset > 0, (path, node.lineno)


# ---------------------------------------------------------------- errors


def _snapshot(td: TensorDict) -> dict:
    return {
        key: (value, value.clone())
        for key, value in td.items(include_nested=True, leaves_only=True)
    }


def _assert_untouched(td: TensorDict, snapshot: dict) -> None:
    now = dict(td.items(include_nested=True, leaves_only=True))
    assert set(now) == set(snapshot)
    for key, (tensor, values) in snapshot.items():
        assert now[key] is tensor and torch.equal(tensor, values), key


def _bad_inputs(case: str):
    recurrent = False
    td = make_td((2, T), 2)
    if case == "missing value":
        del td["obs"]
        return td, recurrent, KeyError, r"'obs'"
    if case == "missing is_init":
        del td["is_init"]
        return td, recurrent, KeyError, r"'is_init'"
    if case == "one state missing":
        del td["rs_c"]
        return td, recurrent, KeyError, r"'rs_c'"
    if case == "feature size":
        td["obs"] = torch.zeros(2, T, INPUT_SIZE + 1)
        return td, recurrent, ValueError, r"'obs'.*\(2, 6, 3\).*Got \(2, 6, 4\)"
    if case == "0-d in recurrent mode":
        return td[0, 0], True, ValueError, "0-d tensordict"
    if case == "state shape":
        td["rs_h"] = torch.zeros(2, T, 1, HIDDEN)
        return td, recurrent, ValueError, r"'rs_h'.*\(2, 6, 2, 5\).*Got \(2, 6, 1, 5\)"
    if case == "is_init shape":
        td["is_init"] = torch.zeros(2, T, 2, dtype=torch.bool)
        return td, recurrent, ValueError, r"'is_init'.*\(2, 6, 1\)"
    if case == "value dtype":
        td["obs"] = td["obs"].double()
        return td, recurrent, TypeError, r"'obs'.*float64"
    raise ValueError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing value",
        "missing is_init",
        "one state missing",
        "feature size",
        "0-d in recurrent mode",
        "state shape",
        "is_init shape",
        "value dtype",
    ],
)
def test_bad_input_raises_and_leaves_the_tensordict_untouched(case):
    _, ours = make_pair(2)
    td, recurrent, error, match = _bad_inputs(case)
    snapshot = _snapshot(td)
    with set_recurrent_mode(recurrent), pytest.raises(error, match=match):
        ours(td)
    _assert_untouched(td, snapshot)


def test_public_api():
    assert {
        "LSTMModule",
        "torch_to_jax",
        "jax_to_torch",
        "tensordict_to_pytree",
        "pytree_to_tensordict",
    } <= set(dir(bridge))
    assert isinstance(
        LSTMModule(input_size=2, hidden_size=2, in_key="x", out_key="y"), torch.nn.Module
    )
