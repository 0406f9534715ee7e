"""``jaxlstm.lstm_burn_in`` and ``jaxlstm.split_chunks``: equal to one unsplit pass, cut gradients.

The oracle is one plain ``lstm_scan`` over the whole sequence. torchrl's layout of
stored states is checked against torchrl's own ``LSTMModule`` in recurrent mode.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlstm
from jaxlstm import LSTMState

I, H, T = 3, 5, 9
ATOL = 1e-5


def _params(num_layers=1, seed=0):
    lstm = jaxlstm.LSTM(H, num_layers=num_layers, recurrent_mode=True)
    return lstm.init(jax.random.key(seed), jnp.zeros((1, 2, I)))


def _data(batch, num_layers=1, seed=1, resets=(3, 7)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=batch + (T, I)).astype(np.float32)
    is_init = np.zeros(batch + (T,), bool)
    for t in resets:
        is_init[..., t] = True
    # A different reset pattern in every row.
    flat = is_init.reshape(-1, T)
    for row in range(flat.shape[0]):
        flat[row, (row + 1) % T] ^= True
    state = LSTMState(
        *(rng.normal(size=batch + (num_layers, H)).astype(np.float32) for _ in range(2))
    )
    return jnp.asarray(x), jnp.asarray(is_init), state


@pytest.mark.parametrize("batch", [(2,), (2, 3)])
@pytest.mark.parametrize("num_layers", [2])
@pytest.mark.parametrize("burn_in", [0, 4, T - 1])
def test_burn_in_outputs_equal_one_unsplit_pass(batch, num_layers, burn_in):
    params = _params(num_layers)
    x, is_init, state = _data(batch, num_layers)
    y_ref, states_ref = jaxlstm.lstm_scan(params, x, state, is_init)
    y, states = jax.jit(jaxlstm.lstm_burn_in, static_argnames="burn_in")(
        params, x, state, is_init, burn_in=burn_in
    )
    assert y.shape == batch + (T, H) and states.h.shape == batch + (T, num_layers, H)
    np.testing.assert_allclose(y, y_ref, atol=ATOL)
    np.testing.assert_allclose(states.h, states_ref.h, atol=ATOL)
    np.testing.assert_allclose(states.c, states_ref.c, atol=ATOL)


@pytest.mark.parametrize("burn_in", [1, 4])
def test_no_gradient_reaches_the_burn_in(burn_in):
    params = _params()
    x, is_init, state = _data((2,), resets=())  # no resets: every step depends on step 0

    def loss(params, x, state):
        y, states = jaxlstm.lstm_burn_in(params, x, state, is_init, burn_in=burn_in)
        # Read every step's output, the burn-in's too: still no gradient may flow there.
        return jnp.sum(y**2) + jnp.sum(states.c)

    g_params, g_x, g_state = jax.grad(loss, argnums=(0, 1, 2))(params, x, state)
    np.testing.assert_array_equal(g_x[:, :burn_in], 0.0)
    assert np.abs(np.asarray(g_x[:, burn_in:])).max() > 0
    np.testing.assert_array_equal(g_state.h, 0.0)
    np.testing.assert_array_equal(g_state.c, 0.0)

    # The parameter gradient is that of the trained segment alone, from the
    # burnt-in state taken as a constant.
    _, states_burn = jaxlstm.lstm_scan(params, x[:, :burn_in], state, is_init[:, :burn_in])
    start = jax.tree.map(lambda a: a[:, -1], states_burn)

    def loss_tail(params):
        y, states = jaxlstm.lstm_scan(params, x[:, burn_in:], start, is_init[:, burn_in:])
        return jnp.sum(y**2) + jnp.sum(states.c)

    expected = jax.grad(loss_tail)(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=ATOL), g_params, expected)
    # ... and differs from the full-BPTT gradient, so the cut is real.
    full = jax.grad(
        lambda p: (
            jnp.sum(jaxlstm.lstm_scan(p, x, state, is_init)[0][:, burn_in:] ** 2)
            + jnp.sum(jaxlstm.lstm_scan(p, x, state, is_init)[1].c[:, burn_in:])
        )
    )(params)
    diff = max(
        float(jnp.abs(a - b).max())
        for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(expected))
    )
    assert diff > 1e-4


def _torchrl_stored_states(full_before: LSTMState, is_init: np.ndarray) -> LSTMState:
    """torchrl's stored input layout ``[*B, T, L, H]``, zero except at trajectory starts."""
    starts = is_init.copy()
    starts[..., 0] = True
    return jax.tree.map(lambda a: jnp.where(starts[..., None, None], a, 0.0), full_before)


@pytest.mark.parametrize("burn_in", [0, 2, 5])
def test_burn_in_with_torchrl_stored_states_matches_torchrl(burn_in):
    # The state stored with each step (torchrl's recurrent_state_h/c input keys),
    # read only at trajectory starts, as torchrl's recurrent mode reads it.
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchrl")
    from tensordict import TensorDict
    from torchrl.modules import LSTMModule, set_recurrent_mode

    batch = (3,)
    params = _params()
    x, is_init, _ = _data(batch)
    rng = np.random.default_rng(5)
    # Non-zero stored states at the trajectory starts: what a replay buffer holds
    # when sampled slices begin mid-episode.
    before = LSTMState(
        *(jnp.asarray(rng.normal(size=batch + (T, 1, H)), jnp.float32) for _ in range(2))
    )
    stored = _torchrl_stored_states(before, np.asarray(is_init))
    y, _ = jaxlstm.lstm_burn_in(params, x, stored, is_init, burn_in=burn_in)

    module = LSTMModule(input_size=I, hidden_size=H, in_key="obs", out_key="y")
    sd = jaxlstm.params_to_torch_state_dict(params, prefix="lstm.")
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
    td = TensorDict(
        {
            "obs": torch.from_numpy(np.array(x)),
            "is_init": torch.from_numpy(np.array(is_init))[..., None],
            "recurrent_state_h": torch.from_numpy(np.array(stored.h)),
            "recurrent_state_c": torch.from_numpy(np.array(stored.c)),
        },
        batch_size=batch + (T,),
    )
    with torch.no_grad(), set_recurrent_mode(True):
        out = module(td)
    np.testing.assert_allclose(np.asarray(y), out["y"].numpy(), atol=ATOL)


def test_burn_in_rejects_bad_arguments():
    params = _params()
    x, is_init, state = _data((2,))
    with pytest.raises(
        ValueError, match=r"burn_in must be an int with 0 <= burn_in < T=9.*Got burn_in=9"
    ):
        jaxlstm.lstm_burn_in(params, x, state, is_init, burn_in=T)
    with pytest.raises(ValueError, match=r"Got burn_in=-1"):
        jaxlstm.lstm_burn_in(params, x, state, is_init, burn_in=-1)
    bad = LSTMState(h=jnp.zeros((2, H)), c=jnp.zeros((2, H)))
    with pytest.raises(
        ValueError, match=r"state must have shape \[\*B, L, H\] or \[\*B, T, L, H\]"
    ):
        jaxlstm.lstm_burn_in(params, x, bad, is_init, burn_in=1)


@pytest.mark.parametrize("batch", [(2, 2)])
@pytest.mark.parametrize("chunk_length", [1, 4, T])
@pytest.mark.parametrize("layout", ["after", "before"])
def test_chunks_replay_the_unsplit_pass(batch, chunk_length, layout):
    params = _params(num_layers=2)
    x, is_init, state = _data(batch, num_layers=2)
    y_ref, states_after = jaxlstm.lstm_scan(params, x, state, is_init)
    if layout == "after":
        stored, kwargs = states_after, {"initial_state": state}
    else:
        # The state before step t: the initial state, then the state after t - 1.
        stored = jax.tree.map(
            lambda s0, a: jnp.concatenate([s0[..., None, :, :], a[..., :-1, :, :]], axis=-3),
            state,
            states_after,
        )
        kwargs = {}
    data = {"x": x, "t": jnp.broadcast_to(jnp.arange(T), batch + (T,))}
    chunks = jax.jit(jaxlstm.split_chunks, static_argnames=("chunk_length", "layout"))(
        data, is_init, stored, chunk_length, layout=layout, **kwargs
    )
    num_chunks = -(-T // chunk_length)
    assert chunks.data["x"].shape == batch + (num_chunks, chunk_length, I)
    assert chunks.state.h.shape == batch + (num_chunks, 2, H)
    # Every chunk on its own, all chunks as one batch [*B, C]: the unsplit outputs on real steps.
    y, _ = jaxlstm.lstm_scan(params, chunks.data["x"], chunks.state, chunks.is_init)
    mask = np.asarray(chunks.mask)
    assert mask.sum() == np.prod(batch) * T
    np.testing.assert_array_equal(
        np.asarray(chunks.data["t"])[mask], np.tile(np.arange(T), int(np.prod(batch)))
    )
    np.testing.assert_allclose(np.asarray(y)[mask], np.asarray(y_ref).reshape(-1, H), atol=ATOL)
    # is_init keeps the original resets (chunk starts mid-episode are not resets), padding is False.
    np.testing.assert_array_equal(np.asarray(chunks.is_init)[mask], np.asarray(is_init).ravel())
    assert not np.asarray(chunks.is_init)[~mask].any()


def test_chunks_cut_the_gradient_at_chunk_boundaries():
    params = _params()
    x, is_init, state = _data((2,), resets=())
    _, states = jaxlstm.lstm_scan(params, x, state, is_init)

    def last_chunk_loss(x):
        chunks = jaxlstm.split_chunks(
            x, is_init, jax.lax.stop_gradient(states), 3, initial_state=state
        )
        y, _ = jaxlstm.lstm_scan(params, chunks.data, chunks.state, chunks.is_init)
        return jnp.sum(y[:, -1] ** 2)

    g = jax.grad(last_chunk_loss)(x)
    np.testing.assert_array_equal(g[:, :6], 0.0)
    assert np.abs(np.asarray(g[:, 6:])).max() > 0


def test_split_chunks_rejects_bad_arguments():
    x, is_init, state = _data((2,))
    _, states = jaxlstm.lstm_scan(_params(), x, state, is_init)
    with pytest.raises(ValueError, match=r"chunk_length must be an int >= 1. Got 0"):
        jaxlstm.split_chunks(x, is_init, states, 0)
    with pytest.raises(ValueError, match=r"layout must be 'after' or 'before'. Got 'next'"):
        jaxlstm.split_chunks(x, is_init, states, 3, layout="next")
    with pytest.raises(
        ValueError, match=r"data\['obs'\] must have shape \[\*B, T, \.\.\.\].*Got \(2, 8, 3\)"
    ):
        jaxlstm.split_chunks({"obs": x[:, :-1]}, is_init, states, 3)
    with pytest.raises(ValueError, match=r"states must have shape \[\*B, T, L, H\]"):
        jaxlstm.split_chunks(x, is_init, state, 3)


def test_readme_scaling_snippets_run():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Scaling\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the Scaling section has no Python snippet"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md (Scaling)", "exec"), namespace)
        assert namespace["y_chunks"].shape == (4, 5, 8, 16)
