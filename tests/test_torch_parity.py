"""Forward and gradients equal ``torch.nn.LSTM``'s on the same weights, float32 within 1e-5.

conftest.py sets ``jax_default_matmul_precision="highest"`` and turns off torch's TF32.
Resets on the torch side are written the plain way: step by step, zeroing ``(h, c)`` where
``is_init`` is true before the step, so torch's autograd gives the reference gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlstm
from jaxlstm import LSTM, LSTMState

torch = pytest.importorskip("torch")

BATCH = (2, 3)
T = 6
INPUT_SIZE = 4
HIDDEN = 8
ATOL = RTOL = 1e-5


def make_torch_lstm(num_layers, use_bias, seed=0):
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(INPUT_SIZE, HIDDEN, num_layers=num_layers, bias=use_bias, batch_first=True)
    if use_bias:
        # torch's init draws b_ih and b_hh independently; make sure they differ everywhere, so
        # a port that used one of them twice would fail.
        with torch.no_grad():
            for k in range(num_layers):
                getattr(lstm, f"bias_hh_l{k}").add_(0.1)
    return lstm


def make_inputs(num_layers, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=BATCH + (T, INPUT_SIZE)).astype(np.float32)
    state = LSTMState(
        h=rng.normal(size=BATCH + (num_layers, HIDDEN)).astype(np.float32),
        c=rng.normal(size=BATCH + (num_layers, HIDDEN)).astype(np.float32),
    )
    is_init = np.zeros(BATCH + (T,), bool)
    is_init[0, :, 3] = True  # row 0: two trajectories
    is_init[1, 0, 0] = is_init[1, 1, 2] = is_init[1, 1, 4] = True
    # Cotangents for the loss, so that every output and the final state carry gradient.
    cot = (
        rng.normal(size=BATCH + (T, HIDDEN)).astype(np.float32),
        rng.normal(size=BATCH + (num_layers, HIDDEN)).astype(np.float32),
        rng.normal(size=BATCH + (num_layers, HIDDEN)).astype(np.float32),
    )
    return x, state, is_init, cot


def torch_forward_and_grads(lstm, x, state, is_init, cot, stepwise):
    """torch's loss and gradients w.r.t. parameters, x, h0 and c0 (in jaxlstm's layouts)."""
    n = int(np.prod(BATCH))
    num_layers = lstm.num_layers
    lstm.zero_grad()
    x_t = torch.tensor(x.reshape(n, T, INPUT_SIZE), requires_grad=True)
    # torch's state is [L, N, H]; ours is [*B, L, H].
    h0 = torch.tensor(state.h.reshape(n, num_layers, HIDDEN), requires_grad=True)
    c0 = torch.tensor(state.c.reshape(n, num_layers, HIDDEN), requires_grad=True)
    h, c = h0.transpose(0, 1), c0.transpose(0, 1)
    if stepwise:
        keep = torch.tensor(~is_init.reshape(n, T), dtype=torch.float32)
        ys = []
        for t in range(T):
            mask = keep[None, :, t, None]
            y_t, (h, c) = lstm(x_t[:, t : t + 1], (h * mask, c * mask))
            ys.append(y_t)
        y = torch.cat(ys, dim=1)
    else:
        assert not is_init.any()
        y, (h, c) = lstm(x_t, (h, c))
    gy, gh, gc = (torch.tensor(a.reshape(n, *a.shape[len(BATCH) :])) for a in cot)
    loss = (y * gy).sum() + (h.transpose(0, 1) * gh).sum() + (c.transpose(0, 1) * gc).sum()
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in lstm.named_parameters()}
    return (
        y.detach().numpy().reshape(BATCH + (T, HIDDEN)),
        h.detach().numpy().transpose(1, 0, 2).reshape(BATCH + (num_layers, HIDDEN)),
        c.detach().numpy().transpose(1, 0, 2).reshape(BATCH + (num_layers, HIDDEN)),
        grads,
        x_t.grad.numpy().reshape(x.shape),
        h0.grad.numpy().reshape(state.h.shape),
        c0.grad.numpy().reshape(state.c.shape),
    )


def jax_forward_and_grads(run, params, x, state, is_init, cot):
    """The same loss in JAX; ``run(params, x, state, is_init) -> (y, states)``."""

    def loss(params, x, state):
        y, states = run(params, x, state, is_init)
        final_h, final_c = states.h[..., -1, :, :], states.c[..., -1, :, :]
        value = jnp.sum(y * cot[0]) + jnp.sum(final_h * cot[1]) + jnp.sum(final_c * cot[2])
        return value, (y, final_h, final_c)

    (_, (y, h, c)), (g_params, g_x, g_state) = jax.value_and_grad(
        loss, argnums=(0, 1, 2), has_aux=True
    )(params, x, state)
    return y, h, c, g_params["params"], g_x, g_state.h, g_state.c


@functools.cache
def jitted_forward_and_grads(num_layers, use_bias, backward="custom", **scan_options):
    if scan_options:
        scan_options["backward"] = backward

        def run(params, x, state, is_init):
            return jaxlstm.lstm_scan(params, x, state, is_init, **scan_options)
    else:
        lstm = LSTM(
            HIDDEN, num_layers=num_layers, use_bias=use_bias, recurrent_mode=True, backward=backward
        )
        run = lstm.apply
    return jax.jit(functools.partial(jax_forward_and_grads, run))


def assert_matches_torch(jax_out, torch_out):
    names = ["y", "final h", "final c", None, "grad x", "grad h0", "grad c0"]
    jax_out, torch_out = jax.device_get(jax_out), list(torch_out)
    assert set(jax_out[3]) == set(torch_out[3])
    for name in torch_out[3]:
        np.testing.assert_allclose(
            jax_out[3][name], torch_out[3][name], atol=ATOL, rtol=RTOL, err_msg=f"grad {name}"
        )
    for name, a, b in zip(names, jax_out, torch_out):
        if name is not None:
            np.testing.assert_allclose(a, b, atol=ATOL, rtol=RTOL, err_msg=name)


@pytest.mark.parametrize("backward", ["custom", "auto"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no_bias"])
def test_lstm_matches_torch(num_layers, use_bias, backward):
    """jaxlstm.LSTM (recurrent mode) vs torch.nn.LSTM, with and without resets, with the
    hand-written backward (the default) and with JAX's automatic one."""
    torch_lstm = make_torch_lstm(num_layers, use_bias)
    params = jaxlstm.params_from_torch_state_dict(torch_lstm.state_dict())
    x, state, is_init, cot = make_inputs(num_layers)
    run = jitted_forward_and_grads(num_layers, use_bias, backward=backward)

    # Resets in the middle of rows, against torch stepping and zeroing the state.
    assert_matches_torch(
        run(params, x, state, is_init, cot),
        torch_forward_and_grads(torch_lstm, x, state, is_init, cot, True),
    )
    # No resets, against one plain torch call over the whole sequence.
    no_resets = np.zeros_like(is_init)
    assert_matches_torch(
        run(params, x, state, no_resets, cot),
        torch_forward_and_grads(torch_lstm, x, state, no_resets, cot, False),
    )


@pytest.mark.parametrize("backward", ["custom", "auto"])
@pytest.mark.parametrize(
    "input_projection, unroll, remat",
    [("hoisted", 1, False), ("per_step", 2, True), ("hoisted", 1, True)],
)
def test_scan_options_match_torch(input_projection, unroll, remat, backward):
    """Both input-projection paths of lstm_scan, unroll > 1 and remat give torch's numbers
    (per_step with unroll=1 and no remat is the path test_lstm_matches_torch takes on CPU)."""
    num_layers = 2
    torch_lstm = make_torch_lstm(num_layers, True, seed=1)
    params = jaxlstm.params_from_torch_state_dict(torch_lstm.state_dict())
    x, state, is_init, cot = make_inputs(num_layers, seed=1)
    run = jitted_forward_and_grads(
        num_layers,
        True,
        backward,
        input_projection=input_projection,
        unroll=unroll,
        remat=remat,
    )
    assert_matches_torch(
        run(params, x, state, is_init, cot),
        torch_forward_and_grads(torch_lstm, x, state, is_init, cot, True),
    )


def test_step_mode_matches_torch_cell_by_cell():
    """One step-mode call equals torch.nn.LSTM on a length-one sequence (unbatched, [I])."""
    num_layers = 2
    torch_lstm = make_torch_lstm(num_layers, True, seed=2)
    params = jaxlstm.params_from_torch_state_dict(torch_lstm.state_dict())
    x, state, _, _ = make_inputs(num_layers, seed=2)
    x0 = x[0, 0, 0]
    state0 = LSTMState(h=state.h[0, 0], c=state.c[0, 0])  # [L, H]: no batch axes
    y, new = jax.device_get(LSTM(HIDDEN, num_layers=num_layers).apply(params, x0, state0))
    with torch.no_grad():
        y_t, (h_t, c_t) = torch_lstm(
            torch.tensor(x0[None]), (torch.tensor(state0.h), torch.tensor(state0.c))
        )
    np.testing.assert_allclose(y, y_t.numpy()[0], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(new.h, h_t.numpy(), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(new.c, c_t.numpy(), atol=ATOL, rtol=RTOL)
