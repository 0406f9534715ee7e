"""``jaxlstm.torchrl_apply`` writes what torchrl's own ``LSTMModule`` writes (torchrl 0.14.1).

The core function is called on the tensordict's arrays directly (no bridge), in step and
recurrent mode, with stored states, resets in the middle of rows and both backwards.
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxlstm

torch = pytest.importorskip("torch")
TensorDict = pytest.importorskip("tensordict").TensorDict
torchrl_modules = pytest.importorskip("torchrl.modules")

I, H, L, T = 3, 5, 2, 7
KEYS = {"in_keys": ["obs", "h", "c"], "out_keys": ["out", ("next", "h"), ("next", "c")]}


def torchrl_module():
    torch.manual_seed(0)
    return torchrl_modules.LSTMModule(input_size=I, hidden_size=H, num_layers=L, **KEYS)


def inputs(batch, recurrent, seed=1):
    gen = torch.Generator().manual_seed(seed)
    shape = batch + ((T,) if recurrent else ())
    is_init = torch.rand(shape + (1,), generator=gen) < 0.3
    if recurrent:
        is_init[..., 0, :] = False  # torchrl must still start from the stored state
    return TensorDict(
        {
            "obs": torch.randn(shape + (I,), generator=gen),
            "h": torch.randn(shape + (L, H), generator=gen),
            "c": torch.randn(shape + (L, H), generator=gen),
            "is_init": is_init,
        },
        batch_size=list(shape),
    )


@pytest.mark.parametrize("recurrent", [False, True], ids=["step", "recurrent"])
def test_torchrl_apply_equals_torchrl(recurrent):
    module = torchrl_module()
    params = jaxlstm.params_from_torch_state_dict(module.state_dict())
    td = inputs((3,), recurrent)
    with torch.no_grad(), torchrl_modules.set_recurrent_mode(recurrent):
        expected = module(td.clone())
    y, h, c = jaxlstm.torchrl_apply(
        params,
        td["obs"].numpy(),
        td["h"].numpy(),
        td["c"].numpy(),
        td["is_init"].numpy(),
        recurrent=recurrent,
    )
    np.testing.assert_allclose(np.asarray(y), expected["out"].numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(h), expected["next", "h"].numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(c), expected["next", "c"].numpy(), atol=1e-5)
    if recurrent:
        # torchrl's layout: zeros except at each trajectory's last step.
        assert (np.asarray(h) == 0).any() and (np.asarray(h) != 0).any()


def test_full_hidden_states_keeps_every_step():
    module = torchrl_module()
    params = jaxlstm.params_from_torch_state_dict(module.state_dict())
    td = inputs((2,), True, seed=2)
    args = (params, td["obs"].numpy(), td["h"].numpy(), td["c"].numpy(), td["is_init"].numpy())
    _, h_masked, _ = jaxlstm.torchrl_apply(*args, recurrent=True)
    _, h_full, _ = jaxlstm.torchrl_apply(*args, recurrent=True, full_hidden_states=True)
    h_masked, h_full = np.asarray(h_masked), np.asarray(h_full)
    kept = h_masked != 0
    np.testing.assert_array_equal(h_masked[kept], h_full[kept])
    assert (h_full != 0).all() and not kept.all()


def test_h_without_c_is_a_value_error():
    params = jaxlstm.params_from_torch_state_dict(torchrl_module().state_dict())
    with pytest.raises(ValueError, match=r"h and c must be given together"):
        jaxlstm.torchrl_apply(
            params,
            np.zeros((2, I), np.float32),
            np.zeros((2, L, H), np.float32),
            None,
            np.zeros((2, 1), bool),
            recurrent=False,
        )
