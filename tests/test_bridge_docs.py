"""torchrl's ``LSTMModule`` documentation examples with ``bridge.LSTMModule``, in a real env.

``examples/torchrl_doc_examples.py`` holds the two examples (the documentation's
code with only the import changed); these tests run them on
``GymEnv("Pendulum-v1")`` with ``InitTracker`` and the module's primer, check
that step-by-step inference equals recurrent-mode output, compare the numbers
with torchrl's own ``LSTMModule`` on the same weights, and run the script.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs import step_mdp
from torchrl.modules import LSTMModule as TorchRLLSTMModule
from torchrl.modules import set_recurrent_mode

from bridge import LSTMModule

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "torchrl_doc_examples.py"
ATOL = 1e-5


@pytest.fixture(scope="module")
def examples():
    spec = importlib.util.spec_from_file_location("torchrl_doc_examples", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _torchrl_twin(module: LSTMModule) -> TorchRLLSTMModule:
    """torchrl's LSTMModule on the same nn.LSTM (same weights) and keys."""
    return TorchRLLSTMModule(
        lstm=module.lstm, in_keys=list(module.in_keys), out_keys=list(module.out_keys)
    )


def test_example_1_policy_primer_and_collector(examples):
    config = examples.SMALL
    policy, first, batches = examples.policy_with_primer(config)
    hidden = config.hidden_size
    # the shapes of the documentation's printout
    assert first.batch_size == torch.Size([])
    assert first["intermediate"].shape == (hidden,)
    assert first["next", "rs_h"].shape == first["next", "rs_c"].shape == (1, hidden)
    assert first["action"].shape == (1,)

    data = batches[0]
    assert data.batch_size == torch.Size([config.frames_per_batch])
    assert data["rs_h"].shape == (config.frames_per_batch, 1, hidden)
    # the primer threads the states: each step reads what the previous one wrote
    is_init = data["is_init"].squeeze(-1)
    for t in range(1, config.frames_per_batch):
        if not is_init[t]:
            torch.testing.assert_close(data["rs_h"][t], data["next", "rs_h"][t - 1])
    assert torch.count_nonzero(data["rs_h"][is_init]) == 0  # zeros at resets

    # Replaying the collected frames as one sequence gives the rollout's outputs,
    # and torchrl's LSTMModule gives the same numbers.
    lstm_module = policy[0]
    replay = data.select("observation", "rs_h", "rs_c", "is_init").clone()
    with torch.no_grad(), set_recurrent_mode(True):
        ours = lstm_module(replay.clone())
        theirs = _torchrl_twin(lstm_module)(replay.clone())
    np.testing.assert_allclose(
        ours["intermediate"].numpy(), data["intermediate"].numpy(), atol=ATOL
    )
    for key in ("intermediate", ("next", "rs_h"), ("next", "rs_c")):
        np.testing.assert_allclose(ours[key].numpy(), theirs[key].numpy(), atol=ATOL)


def test_example_2_step_by_step_equals_recurrent(examples):
    traj_td, td_inf = examples.training_vs_inference(examples.SMALL)  # asserts inside
    steps = examples.SMALL.rollout_steps
    assert traj_td.batch_size == torch.Size([steps])
    torch.testing.assert_close(td_inf["hidden0"], traj_td[..., -1]["next", "hidden0"])
    torch.testing.assert_close(td_inf["hidden1"], traj_td[..., -1]["next", "hidden1"])


def test_example_2_every_step_and_torchrl_agree(examples):
    # The documentation's loop, also checking the output at every step, and the
    # same rollout through torchrl's LSTMModule (sharing the nn.LSTM).
    config = examples.SMALL
    torch.manual_seed(config.seed)
    env = examples.make_env(config.seed)
    lstm = torch.nn.LSTM(
        input_size=env.observation_spec["observation"].shape[-1],
        hidden_size=config.hidden_size,
        batch_first=True,
    )
    keys = {
        "in_keys": ["observation", "hidden0", "hidden1"],
        "out_keys": ["intermediate", ("next", "hidden0"), ("next", "hidden1")],
    }
    inference = LSTMModule(lstm=lstm, **keys)
    training = inference.set_recurrent_mode(True)
    theirs = TorchRLLSTMModule(lstm=lstm, **keys)
    traj_td = env.rollout(6)
    traj_td["is_init"][3] = True  # two trajectories in one row
    with torch.no_grad():
        seq = training(traj_td.clone())
        with set_recurrent_mode(True):
            seq_theirs = theirs(traj_td.clone())
        td_inf = TensorDict({}, traj_td.shape[:-1])
        for t, td in enumerate(traj_td.unbind(-1)):
            td_inf = td_inf.update(td.select("is_init", "observation", ("next", "observation")))
            td_inf = inference(td_inf)
            np.testing.assert_allclose(
                td_inf["intermediate"].numpy(), seq["intermediate"][t].numpy(), atol=ATOL
            )
            td_inf = step_mdp(td_inf)
    for key in ("intermediate", ("next", "hidden0"), ("next", "hidden1")):
        np.testing.assert_allclose(seq[key].numpy(), seq_theirs[key].numpy(), atol=ATOL)
    torch.testing.assert_close(td_inf["hidden0"], seq[..., -1]["next", "hidden0"])


def test_example_script_runs(run_python):
    result = run_python(SCRIPT, "--small")
    assert "example 1: collected 1 batch(es), 10 frames" in result.stdout
    assert "example 2: 3 steps" in result.stdout
