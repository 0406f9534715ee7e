"""Tests of ``examples/train_ppo.py``: its pieces directly, and the script end to end."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# The example's own dependencies: the `examples` extra.
pytest.importorskip("optax")
pytest.importorskip("gymnax")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_ppo.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("train_ppo_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ppo = _load_example()

TINY = ppo.Config(
    memory_length=4,
    num_envs=8,
    num_minibatches=2,
    total_steps=2 * 8 * 10,
    num_chunks=1,
    eval_envs=8,
    hidden_size=8,
    head_size=8,
)


def _episode(sign: int, memory_length: int, action: int):
    """One MemoryChain episode whose sign is ``sign`` (+1 or -1), always taking ``action``.

    Returns:
      ``(obs [S, O], rewards [S], dones [S])`` for the episode's S steps: the
      observation the agent acts on at each step, and what the step returned.
    """
    config = dataclasses.replace(TINY, memory_length=memory_length)
    env, params = ppo.make_env(config)
    for seed in range(100):  # search for a reset that draws the wanted sign
        obs, state = env.reset(jax.random.key(seed), params)
        if int(obs[2]) == sign:
            break
    seen, rewards, dones = [], [], []
    for t in range(config.episode_length):
        seen.append(np.asarray(obs))
        obs, state, reward, terminated, truncated, _ = env.step(
            jax.random.key(1000 + t), state, action, params
        )
        rewards.append(float(reward))
        dones.append(bool(terminated | truncated))
    return np.stack(seen), np.array(rewards), np.array(dones)


@pytest.mark.parametrize("memory_length", [3, 30])
def test_task_needs_memory(memory_length):
    # The premise of the memoryless baseline: only the first observations show
    # the sign, and the decision step (the last) looks the same for both signs.
    plus, rewards, dones = _episode(+1, memory_length, action=1)
    minus, wrong_rewards, _ = _episode(-1, memory_length, action=1)
    assert plus.shape[0] == memory_length + 1
    differs = np.any(plus != minus, axis=-1)
    assert differs[0], "the first observation must show the sign"
    assert not differs[2:].any(), f"the sign leaks into later observations: {differs}"
    # One reward, at the last step, which ends the episode: +1 for the right
    # answer (action 1 for sign +1), -1 for the wrong one.
    np.testing.assert_array_equal(dones, np.arange(memory_length + 1) == memory_length)
    np.testing.assert_array_equal(rewards[:-1], 0.0)
    assert rewards[-1] == 1.0 and wrong_rewards[-1] == -1.0


def test_gae_matches_a_python_loop():
    rng = np.random.default_rng(0)
    steps, n, gamma, lam = 7, 3, 0.9, 0.8
    value = rng.normal(size=(steps, n)).astype(np.float32)
    reward = rng.normal(size=(steps, n)).astype(np.float32)
    done = rng.random((steps, n)) < 0.3
    last_value = rng.normal(size=(n,)).astype(np.float32)
    adv, target = ppo.gae(
        jnp.asarray(value),
        jnp.asarray(reward),
        jnp.asarray(done),
        jnp.asarray(last_value),
        gamma,
        lam,
    )
    expected = np.zeros((steps, n), np.float32)
    running = np.zeros(n, np.float32)
    for t in reversed(range(steps)):
        next_value = last_value if t == steps - 1 else value[t + 1]
        keep = 1.0 - done[t]
        running = reward[t] + gamma * next_value * keep - value[t] + gamma * lam * keep * running
        expected[t] = running
    np.testing.assert_allclose(np.asarray(adv), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(target), expected + value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("cell", "recurrent"), [("lstm", True), ("lstm", False), ("gru", True)])
def test_jitted_update_runs_and_learns_something(cell, recurrent):
    config = dataclasses.replace(TINY, cell=cell)
    trainer = ppo.make_train(config, recurrent)
    runner = jax.jit(trainer.init)(jax.random.key(0))
    before = runner.train_state.params
    runner, metrics = jax.jit(trainer.train_chunk, static_argnums=1)(runner, TINY.updates_per_chunk)
    assert metrics.value_loss.shape == (TINY.updates_per_chunk,)
    for name, value in metrics._asdict().items():
        assert np.all(np.isfinite(np.asarray(value))), name
    assert metrics.finite.all()
    # Every rollout is whole episodes, so each update sees num_envs * episodes_per_rollout.
    np.testing.assert_array_equal(metrics.episodes, TINY.num_envs * TINY.episodes_per_rollout)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, runner.train_state.params)
    assert all(jax.tree.leaves(changed)), changed
    if cell == "lstm":
        assert runner.recurrent_state.h.shape == (TINY.num_envs, 1, TINY.hidden_size)
    else:  # the GRU's state is one array, not an LSTMState
        assert isinstance(runner.recurrent_state, jax.Array)
        assert runner.recurrent_state.shape == (TINY.num_envs, 1, TINY.hidden_size)
    if recurrent:
        assert cell in runner.train_state.params["params"]


def test_an_unknown_cell_is_rejected_naming_it():
    with pytest.raises(ValueError, match=r"cell must be one of \['gru', 'lstm'\]. Got 'rnn'"):
        ppo.Config(cell="rnn")
    with pytest.raises(SystemExit):
        ppo.parse_config(["--cell", "rnn"])


@pytest.mark.parametrize(("cell", "gates"), [("lstm", 4), ("gru", 3)])
def test_forget_bias_shifts_the_keep_gate(cell, gates):
    # The LSTM's forget gate and the GRU's update gate z are both torch's second gate block.
    config = dataclasses.replace(TINY, cell=cell, forget_bias=1.5)
    plain = dataclasses.replace(config, forget_bias=0.0)
    key = jax.random.key(3)
    shifted = ppo.make_train(config, True).init(key).train_state.params["params"][cell]
    base = ppo.make_train(plain, True).init(key).train_state.params["params"][cell]
    h = config.hidden_size
    diff = np.asarray(shifted["bias_hh_l0"] - base["bias_hh_l0"])
    assert diff.shape == (gates * h,)
    np.testing.assert_allclose(diff[h : 2 * h], 1.5, rtol=1e-6)
    np.testing.assert_array_equal(np.delete(diff, np.s_[h : 2 * h]), 0.0)


@pytest.fixture(scope="module", params=["lstm", "gru"])
def untrained_agent(request):
    """``(config, params, greedy rollouts)`` of a freshly initialised LSTM or GRU agent."""
    config = dataclasses.replace(TINY, memory_length=6, cell=request.param)
    params = jax.jit(ppo.make_train(config, True).init)(jax.random.key(1)).train_state.params
    rollouts = jax.jit(ppo.make_evaluate(config, True))(params, jax.random.key(2))
    return config, params, rollouts


def test_parity_sequences_have_resets_and_nonzero_initial_states(untrained_agent):
    config, params, rollouts = untrained_agent
    seq = ppo.parity_sequences(config, params, rollouts, rows=4, episodes=3)
    assert seq.obs.shape == (4, 3 * config.episode_length, 3)
    # Each row holds several episodes, its resets at a different step than its neighbour's.
    assert np.all(seq.is_init.sum(axis=1) >= 2)
    assert len({tuple(np.nonzero(row)[0]) for row in seq.is_init}) > 1
    assert not seq.is_init[:, 0].any()
    for state in jax.tree.leaves(seq.init_state):
        assert state.shape == (4, 1, config.hidden_size)
        assert np.all(np.abs(state).max(axis=(1, 2)) > 0)
    ends = ppo.trajectory_ends(seq.is_init)
    np.testing.assert_array_equal(ends[:, :-1], seq.is_init[:, 1:])
    assert ends[:, -1].all()


def test_torch_export_matches_jax_and_catches_a_wrong_weight(untrained_agent):
    pytest.importorskip("torchrl")
    import torch

    config, params, rollouts = untrained_agent
    assert ppo.check_parity(config, params, rollouts) <= ppo.PARITY_ATOL

    # The check must fail when the torch side is wrong: shift one bias there.
    seq = ppo.parity_sequences(config, params, rollouts)
    ref = ppo.run_jax(config, params, seq)
    import torchrl.modules

    module = {"lstm": torchrl.modules.LSTMModule, "gru": torchrl.modules.GRUModule}[config.cell]
    policy = ppo.torch_policy(module, config, params, seq.obs.shape[-1])
    with torch.no_grad():
        getattr(policy[0], config.cell).bias_hh_l0[0] += 1e-3
    out = ppo.run_torch(policy, seq)
    assert np.max(np.abs(out["step"]["h"] - ref["step"]["h"])) > ppo.PARITY_ATOL


@pytest.mark.parametrize(
    ("curve", "expected"),
    [
        ([0.0, 0.5, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95], 70),
        # Touches the threshold, then collapses: "first >= threshold" would say 30.
        ([0.0, 0.5, 0.95, 0.95, 0.95, 0.95, 0.95, 0.2, 0.1, 0.0], None),
        ([0.0] * 10, None),
    ],
)
def test_steps_to_threshold_requires_the_curve_to_stay_above(curve, expected):
    steps = np.arange(1, 11) * 10
    assert ppo.HOLD_WINDOW == 5
    # The 5-update trailing mean first reaches 0.9 at update 7 in the first curve
    # (0.5 + 4 x 0.95 = 4.3 < 4.5 at update 6; 5 x 0.95 at update 7).
    got = ppo.steps_to_threshold(steps, np.asarray(curve), 0.9)
    assert got == expected


def test_script_quick_run(tmp_path, run_python):
    pytest.importorskip("torchrl")
    pytest.importorskip("matplotlib")
    png = tmp_path / "curve.png"
    proc = run_python(
        SCRIPT,
        "--quick",
        "--seed",
        "1",
        "--output",
        png,
        "--output-dir",
        tmp_path / "out",
        env={"JAX_NUMPY_RANK_PROMOTION": "raise"},
        timeout=600,
    )
    assert png.is_file() and png.stat().st_size > 1000
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["devices"] == 1 and [s["seed"] for s in summary["seeds"]] == [1]
    # The compile is its own phase, before the progress bar.
    assert "LSTM: compiling" in proc.stdout
    assert "PARITY OK" in proc.stdout, proc.stdout[-3000:]
    assert str(png) in proc.stdout
    for row in ("LSTM", "memoryless"):
        assert any(line.startswith(row) for line in proc.stdout.splitlines()), proc.stdout


def test_script_quick_run_gru(tmp_path, run_python):
    pytest.importorskip("torchrl")
    pytest.importorskip("matplotlib")
    proc = run_python(
        SCRIPT,
        "--quick",
        "--cell",
        "gru",
        "--skip-baseline",
        "--output-dir",
        tmp_path,
        env={"JAX_NUMPY_RANK_PROMOTION": "raise"},
        timeout=600,
    )
    assert "GRU: compiling" in proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {
        "cell",
        "devices",
        "updates",
        "env_steps",
        "wall_s",
        "env_steps_per_s",
        "seeds",
    }
    assert summary["cell"] == "gru" and summary["devices"] == 1
    config = ppo.Config(memory_length=5, num_envs=16, total_steps=8_000, num_chunks=4)
    assert summary["updates"] == config.num_updates
    assert summary["env_steps"] == config.num_updates * config.steps_per_update
    assert summary["wall_s"] > 0 and summary["env_steps_per_s"] > 0
    (seed,) = summary["seeds"]
    assert set(seed) == {"seed", "greedy_return", "steps_to_threshold", "params_l2"}
    assert seed["seed"] == 0 and -1.0 <= seed["greedy_return"] <= 1.0
    assert seed["params_l2"] > 0
    # The export went to the GRU modules, and they agree with JAX.
    assert "PARITY OK: JAX, bridge.GRUModule and torchrl.modules.GRUModule agree" in proc.stdout, (
        proc.stdout[-3000:]
    )
    assert (tmp_path / "learning_curve.png").is_file()
