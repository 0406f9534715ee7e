"""Parameters in torch's names and layout: init, and exchange with torch state dicts.

The tests that need torch skip without it; the ``.npz`` test runs the JAX side in a fresh
interpreter where ``import torch`` fails.
"""

from __future__ import annotations

import functools
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlstm
from jaxlstm import LSTM

INPUT_SIZE, HIDDEN = 3, 6


def _torch():
    return pytest.importorskip("torch")


def torch_lstm(num_layers=2, bias=True, seed=0, **kwargs):
    torch = _torch()
    torch.manual_seed(seed)
    return torch.nn.LSTM(
        INPUT_SIZE, HIDDEN, num_layers=num_layers, bias=bias, batch_first=True, **kwargs
    )


def numpy_state_dict(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@functools.cache
def jax_init(use_bias=True, num_layers=3):
    """``LSTM.init``'s parameters (cached: the tests below share one init)."""
    lstm = LSTM(HIDDEN, num_layers=num_layers, use_bias=use_bias)
    return lstm.init(jax.random.key(0), jnp.zeros((INPUT_SIZE,)))


def assert_bit_exact(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_round_trip_torch_jax_torch_is_bit_exact(num_layers, bias):
    torch = _torch()
    source = torch_lstm(num_layers, bias)
    params = jaxlstm.params_from_torch_state_dict(source.state_dict())
    assert set(params) == {"params"}
    assert set(params["params"]) == set(source.state_dict())

    back = jaxlstm.params_to_torch_state_dict(params)
    target = torch_lstm(num_layers, bias, seed=1)
    target.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
        assert_bit_exact(back[name], tensor.numpy())


def test_round_trip_from_jax_init_is_bit_exact():
    """LSTM.init -> torch names -> back, bit for bit, and the arrays load into nn.LSTM."""
    params = jax_init()
    state_dict = jaxlstm.params_to_torch_state_dict(params, prefix="lstm.")
    assert all(k.startswith("lstm.") for k in state_dict)
    again = jaxlstm.params_from_torch_state_dict(state_dict)
    jax.tree.map(assert_bit_exact, again, jax.device_get(params))
    # The inner dict is accepted as well.
    assert (
        jaxlstm.params_to_torch_state_dict(params["params"]).keys()
        == jaxlstm.params_to_torch_state_dict(params).keys()
    )

    torch = _torch()
    target = torch_lstm(3)
    target.load_state_dict(
        {k[len("lstm.") :]: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
        strict=True,
    )


def test_other_dtypes_keep_their_bits():
    rng = np.random.default_rng(0)
    params = jax.eval_shape(LSTM(HIDDEN).init, jax.random.key(0), jnp.zeros((INPUT_SIZE,)))
    params = params["params"]
    for dtype in [np.float64, jnp.bfloat16, np.float16]:
        state_dict = {k: rng.normal(size=np.shape(v)).astype(dtype) for k, v in params.items()}
        converted = jaxlstm.params_from_torch_state_dict(state_dict)["params"]
        for name, value in state_dict.items():
            assert_bit_exact(converted[name], value)
            assert_bit_exact(jaxlstm.params_to_torch_state_dict(converted)[name], value)


def test_prefix_given_or_found_and_other_keys_ignored():
    torch = _torch()
    policy = torch.nn.ModuleDict(
        {
            "encoder": torch.nn.Linear(4, INPUT_SIZE),
            "lstm": torch_lstm(2),
            "head": torch.nn.Sequential(torch.nn.Linear(HIDDEN, 8), torch.nn.Linear(8, 1)),
        }
    )
    state_dict = numpy_state_dict(policy)
    state_dict["step_count"] = np.array(3)  # a buffer that is no LSTM array
    expected = numpy_state_dict(policy["lstm"])

    for prefix in [None, "lstm."]:
        params = jaxlstm.params_from_torch_state_dict(state_dict, prefix=prefix)["params"]
        assert set(params) == set(expected)
        for name, value in expected.items():
            assert_bit_exact(params[name], value)
    back = jaxlstm.params_to_torch_state_dict({"params": params}, prefix="lstm.")
    assert set(back) == {k for k in state_dict if k.startswith("lstm.")}

    with pytest.raises(ValueError, match=r"no torch\.nn\.LSTM arrays.*under prefix 'rnn\.'"):
        jaxlstm.params_from_torch_state_dict(state_dict, prefix="rnn.")
    with pytest.raises(ValueError, match=r"no torch\.nn\.LSTM arrays"):
        jaxlstm.params_from_torch_state_dict(numpy_state_dict(policy["head"]))


def test_torch_tensors_that_require_grad_are_accepted():
    source = torch_lstm(1)
    tensors = dict(source.named_parameters())  # requires_grad=True: np.asarray would refuse
    params = jaxlstm.params_from_torch_state_dict(tensors)["params"]
    for name, value in numpy_state_dict(source).items():
        assert_bit_exact(params[name], value)


def test_several_lstms_need_a_prefix():
    torch = _torch()
    two = torch.nn.ModuleDict({"actor": torch_lstm(1, seed=0), "critic": torch_lstm(2, seed=1)})
    state_dict = numpy_state_dict(two)
    with pytest.raises(ValueError, match=r"several LSTMs.*\['actor\.', 'critic\.'\].*prefix="):
        jaxlstm.params_from_torch_state_dict(state_dict)
    critic = jaxlstm.params_from_torch_state_dict(state_dict, prefix="critic.")["params"]
    assert_bit_exact(critic["weight_hh_l1"], state_dict["critic.weight_hh_l1"])
    assert "weight_ih_l2" not in critic


@pytest.mark.parametrize("kwargs", [{"bidirectional": True}, {"proj_size": 2}])
def test_reverse_and_projection_arrays_convert_bit_exact(kwargs):
    state_dict = numpy_state_dict(torch_lstm(2, **kwargs))
    params = jaxlstm.params_from_torch_state_dict(state_dict)["params"]
    assert set(params) == set(state_dict)
    back = jaxlstm.params_to_torch_state_dict(params)
    for name, value in state_dict.items():
        assert_bit_exact(back[name], value)


def test_inconsistent_state_dict_raises():
    state_dict = numpy_state_dict(torch_lstm(2))
    del state_dict["bias_hh_l1"]
    with pytest.raises(ValueError, match=r"bias_hh_l1"):
        jaxlstm.params_from_torch_state_dict(state_dict)


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
def test_init_is_torch_like(use_bias):
    """Same names, shapes and dtype as nn.LSTM's state dict, uniform in ±1/sqrt(H)."""
    num_layers = 3
    params = jax_init(use_bias, num_layers)["params"]
    bound = 1.0 / np.sqrt(HIDDEN)
    for name, value in params.items():
        value = np.asarray(value)
        assert value.dtype == np.float32, name
        assert np.abs(value).max() <= bound, name
        # Spread over the whole interval, not a narrower or constant init.
        assert np.abs(value).max() > 0.8 * bound and value.std() > 0.4 * bound, name
    assert len({float(np.asarray(v).ravel()[0]) for v in params.values()}) == len(params)

    try:
        import torch  # noqa: F401
    except ImportError:
        return
    reference = numpy_state_dict(torch_lstm(num_layers, use_bias))
    assert {k: v.shape for k, v in params.items()} == {k: v.shape for k, v in reference.items()}


_NO_TORCH_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any `import torch` from here on raises ImportError
    import jax, numpy as np
    import jaxlstm

    weights = np.load(sys.argv[1])  # a state dict saved from torch, as numpy arrays
    data = np.load(sys.argv[2])
    params = jaxlstm.params_from_torch_state_dict(weights)  # prefix found automatically
    lstm = jaxlstm.LSTM(int(data["hidden_size"]), num_layers=int(data["num_layers"]),
                        recurrent_mode=True)
    state = jaxlstm.LSTMState(h=data["h0"], c=data["c0"])
    y, states = lstm.apply(params, data["x"], state)
    np.testing.assert_allclose(np.asarray(y), data["y"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(states.h[:, -1]), data["h_n"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(states.c[:, -1]), data["c_n"], atol=1e-5)
    assert sys.modules["torch"] is None
    print("ok")
    """
)


def test_npz_weights_load_without_torch(tmp_path, run_python):
    """Weights saved from torch as .npz load and run in an interpreter that cannot import torch."""
    torch = _torch()
    num_layers = 2
    module = torch.nn.ModuleDict({"lstm": torch_lstm(num_layers), "head": torch.nn.Linear(6, 1)})
    np.savez(tmp_path / "weights.npz", **numpy_state_dict(module))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, INPUT_SIZE)).astype(np.float32)
    h0 = rng.normal(size=(3, num_layers, HIDDEN)).astype(np.float32)
    c0 = rng.normal(size=(3, num_layers, HIDDEN)).astype(np.float32)
    with torch.no_grad():
        y, (h_n, c_n) = module["lstm"](
            torch.from_numpy(x),
            (
                torch.from_numpy(h0).transpose(0, 1).contiguous(),
                torch.from_numpy(c0).transpose(0, 1).contiguous(),
            ),
        )
    np.savez(
        tmp_path / "data.npz",
        x=x,
        h0=h0,
        c0=c0,
        y=y.numpy(),
        h_n=h_n.transpose(0, 1).numpy(),
        c_n=c_n.transpose(0, 1).numpy(),
        hidden_size=HIDDEN,
        num_layers=num_layers,
    )

    result = run_python("-c", _NO_TORCH_SCRIPT, tmp_path / "weights.npz", tmp_path / "data.npz")
    assert result.stdout.strip() == "ok"
