"""Train in JAX, deploy in torch: recurrent PPO on a task that needs memory.

Run it with no arguments::

    python examples/train_ppo.py

What it does, top to bottom:

1. Trains an actor-critic whose torso is ``jaxlstm.LSTM`` (or ``jaxlstm.GRU``
   with ``--cell gru``) with PPO, in pure JAX
   (purejaxrl style: environment, rollout and update in one ``jax.jit``-compiled
   ``lax.scan``), on gymnax's bsuite ``MemoryChain``. Then it trains a
   memoryless baseline (the same PPO with an MLP torso) the same way, with the
   same budget.
2. Compiles (its own phase, timed), then shows a progress bar with the current
   return; prints a summary table and saves the learning curves to
   ``outputs/learning_curve.png`` and a machine-readable ``outputs/summary.json``.
3. Exports the trained LSTM weights into ``bridge.LSTMModule`` and into
   torchrl's own ``torchrl.modules.LSTMModule`` (through ``load_state_dict``;
   with ``--cell gru``: ``bridge.GRUModule`` and ``torchrl.modules.GRUModule``),
   and the heads into ``torch.nn`` modules; runs JAX, bridge and torchrl on the
   same observation sequences, with resets, in recurrent mode and step by step,
   and asserts that they agree within 1e-5.

The task (bsuite ``MemoryChain``, one context bit, ``memory_length=30``): the
first observation shows a random sign, +1 or -1 (gymnax shows it twice); then
the observations show only a countdown; at the last of the episode's 31 steps
the agent must repeat the sign. The reward is +1 if it does, -1 if not and 0 on
every other step, so an episode's return is +1 or -1. At the decision step the
observation holds no trace of the sign, so any memoryless policy is right half
of the time: its expected return is 0 (``tests/test_example_train_ppo.py``
checks that premise on the environment). We call the task solved at a mean
return of at least 0.9, i.e. 95% of the signs recalled, by the greedy policy
over 1024 fresh episodes. That is far out of a memoryless agent's reach (0,
with a standard error of 0.03) and close to what remembering gives (1.0).

Defaults and budget: 500k environment steps per agent. With these settings the
LSTM agent first passes 0.9 after about 70-85k steps on every seed we tried;
with ``--cell gru`` the GRU agent held 0.9 from 107k-163k steps on seeds 0-4
(README, "Measured"); the whole script takes a few minutes on a 2-core CPU.

Small settings for CI: ``python examples/train_ppo.py --quick`` (a memory
length of 5 and 8k steps; every stage runs in seconds; the LSTM often solves
this easier task, which says little about the main job's).

At scale (README, "Scaling"): ``--devices N`` shards each agent's env batch over
a 1-D ``jax.sharding`` mesh (parameters replicated, jit's SPMD partitioner does
the rest); ``--seeds K`` trains K agents in one program with ``vmap``;
``--checkpoint-dir``/``--checkpoint-every``/``--resume``/``--stop-after`` save and
restore the full training state with Orbax; a NaN or Inf stops the run naming
the update; ``jax.distributed.initialize()`` runs when a multi-process launch
is detected.

This file is the PPO algorithm (``make_train``, ``make_evaluate``), its
driver (``train_agent``), the torch export and ``main()``. What is not PPO,
the mesh, the Orbax checkpoints and the reports (``summary.json``, the table,
the plot), is in ``examples/_ppo_infra.py`` next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState
from tqdm.auto import tqdm

from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxlstm
from jaxlstm import LSTMState

# The infrastructure (hosts, mesh, checkpoints, reports) sits next to this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ppo_infra import (  # noqa: E402
    DATA_AXIS,
    Checkpoints,
    Result,
    make_mesh,
    maybe_initialize_distributed,
    print_summary,
    save_learning_curve,
    summary_dict,
    to_host,
)

# Not used below; the tests and benchmarks reach them as attributes of this script.
from _ppo_infra import HOLD_WINDOW, params_l2, steps_to_threshold  # noqa: E402, F401

# The recurrent torso's state: an LSTMState(h, c) for the LSTM, one array for the GRU.
RecurrentState = Any

ENV_NAME = "MemoryChain-bsuite"
PARITY_ATOL = 1e-5
CELLS = {"lstm": jaxlstm.LSTM, "gru": jaxlstm.GRU}  # --cell: the recurrent torso
AGENT_NAMES = {"lstm": "LSTM", "gru": "GRU"}  # the agent's name in reports and checkpoints


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run. The defaults are the README's main job."""

    cell: str = "lstm"  # the recurrent torso: "lstm" (jaxlstm.LSTM) or "gru" (jaxlstm.GRU)
    memory_length: int = 30  # the sign must be held about this many steps
    num_envs: int = 64
    # Rollouts are a whole number of episodes long. MemoryChain's episodes all
    # last memory_length + 1 steps and start together, so every episode lies
    # inside one rollout and backpropagation through time sees the step where
    # the sign was shown together with the step where it is asked for.
    episodes_per_rollout: int = 2
    total_steps: int = 500_000  # environment steps per agent, summed over the envs
    update_epochs: int = 4
    num_minibatches: int = 4  # minibatches split the envs; sequences stay whole
    lr: float = 1e-3
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden_size: int = 64  # the recurrent H, and the width of the memoryless torso
    forget_bias: float = 1.0  # added to the initial bias of the LSTM's forget gate (GRU: z gate)
    head_size: int = 64  # hidden width of the actor and critic heads
    num_chunks: int = 25  # compiled chunks of updates, one progress-bar tick each
    success_threshold: float = 0.9  # mean greedy return that counts as solved
    eval_envs: int = 256
    eval_episodes_per_env: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}. Got {self.cell!r}.")

    @property
    def episode_length(self) -> int:
        return self.memory_length + 1

    @property
    def num_steps(self) -> int:
        """Steps per env per rollout."""
        return self.episodes_per_rollout * self.episode_length

    @property
    def steps_per_update(self) -> int:
        return self.num_steps * self.num_envs

    @property
    def updates_per_chunk(self) -> int:
        return max(1, self.total_steps // (self.steps_per_update * self.num_chunks))

    @property
    def num_updates(self) -> int:
        """Whole chunks only, so the run takes at most ``total_steps``."""
        return self.updates_per_chunk * self.num_chunks


def recurrent_core(config: Config, recurrent_mode: bool = False) -> jaxlstm.LSTM | jaxlstm.GRU:
    """The recurrent torso of ``config.cell``, unbound (its params live under ``config.cell``)."""
    return CELLS[config.cell](config.hidden_size, recurrent_mode=recurrent_mode)


def make_env(config: Config) -> tuple[Any, Any]:
    """gymnax's bsuite MemoryChain with one context bit and our memory length."""
    env, env_params = gymnax.make(ENV_NAME)
    return env, env_params.replace(memory_length=config.memory_length)


# ---------------------------------------------------------------------------
# Networks. Both agents map a batch of sequences to logits, values and states,
# so one PPO implementation trains either.
# ---------------------------------------------------------------------------


class Head(nn.Module):
    """``Dense -> tanh -> Dense``; exported to ``torch.nn.Sequential`` as is."""

    hidden: int
    out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.tanh(nn.Dense(self.hidden, name="hidden")(x))
        return nn.Dense(self.out, name="out")(x)


class ActorCritic(nn.Module):
    """Actor-critic over sequences, with an LSTM, a GRU or a memoryless (MLP) torso.

    ``__call__(obs [N, T, O], is_init bool [N, T], state [N, 1, H])`` returns
    ``(logits [N, T, A], value [N, T], states [N, T, 1, H])``, where ``states``
    is the recurrent state after every step (an ``LSTMState`` for the LSTM, one
    array for the GRU). The memoryless torso ignores ``state`` and ``is_init``
    and hands the state through unchanged, so every agent of a cell shares one
    runner-state layout.
    """

    num_actions: int
    hidden_size: int
    head_size: int
    recurrent: bool
    cell: str = "lstm"

    @nn.compact
    def __call__(
        self, obs: jax.Array, is_init: jax.Array, state: RecurrentState
    ) -> tuple[jax.Array, jax.Array, RecurrentState]:
        if self.recurrent:
            core = CELLS[self.cell](self.hidden_size, recurrent_mode=True, name=self.cell)
            embed, states = core(obs, state, is_init)
        else:
            x = jnp.tanh(nn.Dense(self.hidden_size, name="mlp_0")(obs))
            embed = jnp.tanh(nn.Dense(self.hidden_size, name="mlp_1")(x))
            steps = obs.shape[-2]
            states = jax.tree.map(
                lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], steps) + a.shape[1:]), state
            )
        logits = Head(self.head_size, self.num_actions, name="actor")(embed)
        value = Head(self.head_size, 1, name="critic")(embed)[..., 0]
        return logits, value, states


def make_network(config: Config, num_actions: int, recurrent: bool) -> ActorCritic:
    return ActorCritic(num_actions, config.hidden_size, config.head_size, recurrent, config.cell)


def add_forget_bias(params: Any, value: float, cell: str = "lstm") -> Any:
    """Adds ``value`` to the keep-gate part of ``bias_hh_l0``: the second gate block in both cells.

    That is the LSTM's forget gate (torch's gate order i, f, g, o) and the
    GRU's update gate z (order r, z, n; ``h' = (1 - z) * n + z * h``, so a
    large z keeps h). With torch's initialisation either gate starts near
    sigmoid(0) = 0.5, so a signal fades as 0.5**t and its gradient with it; a
    positive bias (Jozefowicz et al., 2015) lets the gradient from the decision
    step reach the step where the sign was shown.
    """
    core = dict(params["params"][cell])
    bias = core["bias_hh_l0"]
    hidden = bias.shape[0] // (4 if cell == "lstm" else 3)
    core["bias_hh_l0"] = bias.at[hidden : 2 * hidden].add(value)
    return {**params, "params": {**params["params"], cell: core}}


def zero_state(config: Config, batch: int) -> RecurrentState:
    """Zeros ``[batch, 1, H]``: an ``LSTMState`` for the LSTM, one array for the GRU."""
    return recurrent_core(config).initial_state(batch)


def categorical_log_prob(logits: jax.Array, action: jax.Array) -> jax.Array:
    """log pi(action) for ``logits [..., A]`` and integer ``action [...]``."""
    log_probs = jax.nn.log_softmax(logits)
    return jnp.take_along_axis(log_probs, action[..., None], axis=-1)[..., 0]


def categorical_entropy(logits: jax.Array) -> jax.Array:
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


# ---------------------------------------------------------------------------
# PPO
# ---------------------------------------------------------------------------


class RunnerState(NamedTuple):
    """Everything carried from one update to the next."""

    train_state: TrainState
    env_state: Any  # gymnax state, leaves [N, ...]
    obs: jax.Array  # shape=[N, O], float32: the observation the agent acts on next
    is_init: jax.Array  # shape=[N], bool: obs is the first of an episode
    recurrent_state: RecurrentState  # [N, 1, H]: the torso's state before obs
    episode_return: jax.Array  # shape=[N], float32: return so far in the running episode
    rng: jax.Array  # PRNG key


class Transition(NamedTuple):
    """One rollout step of every env; stacked time-major by the rollout scan."""

    obs: jax.Array  # [N, O]
    is_init: jax.Array  # [N], bool
    action: jax.Array  # [N], int32
    log_prob: jax.Array  # [N]
    value: jax.Array  # [N]
    reward: jax.Array  # [N]
    done: jax.Array  # [N], bool: this step ended the episode
    episode_return: jax.Array  # [N]: the finished episode's return where done


class Metrics(NamedTuple):
    """Per-update training statistics; a chunk returns them stacked [U]."""

    mean_return: jax.Array  # mean return of the episodes finished in the rollout
    episodes: jax.Array  # how many finished
    value_loss: jax.Array
    actor_loss: jax.Array
    entropy: jax.Array
    finite: jax.Array  # bool: the loss and every parameter after the update are finite


def gae(
    value: jax.Array,
    reward: jax.Array,
    done: jax.Array,
    last_value: jax.Array,
    gamma: float,
    lam: float,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimates over time-major ``[T, N]`` arrays.

    ``done[t]`` cuts the bootstrap from step t to t+1. MemoryChain only
    terminates (its time limit is far beyond the episode), so this is exact.

    Returns:
      ``(advantages [T, N], value targets [T, N])``.
    """
    next_values = jnp.concatenate([value[1:], last_value[None]], axis=0)
    not_done = 1.0 - done.astype(value.dtype)
    deltas = reward + gamma * next_values * not_done - value

    def backward(carry: jax.Array, inputs: tuple[jax.Array, jax.Array]):
        delta, keep = inputs
        carry = delta + gamma * lam * keep * carry
        return carry, carry

    _, advantages = jax.lax.scan(
        backward, jnp.zeros_like(last_value), (deltas, not_done), reverse=True
    )
    return advantages, advantages + value


class Trainer(NamedTuple):
    """The jittable pieces of one agent's PPO (see ``make_train``)."""

    init: Callable[[jax.Array], RunnerState]
    collect: Callable[[RunnerState], tuple[RunnerState, Transition, jax.Array]]
    train_chunk: Callable[[RunnerState, int], tuple[RunnerState, Metrics]]


def make_train(config: Config, recurrent: bool, mesh: Mesh | None = None) -> Trainer:
    """Builds the PPO trainer for one agent.

    ``mesh`` is a 1-D data mesh (axis ``"data"``, ``make_mesh``): the
    environment batch of the rollout and of every minibatch is sharded over it
    (``with_sharding_constraint``) and jit's SPMD partitioner inserts the
    gradient all-reduce. Parameters and optimizer state are replicated. None
    runs on the default device with no constraint. The math does not depend
    on the mesh: one device and N devices differ only in float reduction order.

    Returns:
      ``Trainer(init, collect, train_chunk)``, each jittable and ``vmap``-able
      over seeds: ``init(rng)`` makes the runner state; ``collect(runner)`` runs
      one rollout and returns ``(runner, time-major Transition [T, N],
      last_value [N])``; ``train_chunk(runner, length)`` runs ``length`` PPO
      updates (rollout, GAE, epochs of minibatch steps) in one ``lax.scan`` and
      returns the new runner state and per-update ``Metrics`` ``[length]``.
    """
    env, env_params = make_env(config)
    num_actions = env.action_space(env_params).n
    network = make_network(config, num_actions, recurrent)
    n, steps = config.num_envs, config.num_steps
    num_devices = 1 if mesh is None else mesh.size
    if n % (config.num_minibatches * num_devices):
        raise ValueError(
            f"num_envs must be a multiple of num_minibatches * devices = "
            f"{config.num_minibatches} * {num_devices} (every minibatch is split evenly over "
            f"the devices). Got num_envs={n}."
        )

    def shard_envs(tree: Any, env_axis: int) -> Any:
        """Pins the env axis of every leaf to the mesh's data axis."""
        if mesh is None:
            return tree
        return jax.tree.map(
            lambda a: jax.lax.with_sharding_constraint(
                a, NamedSharding(mesh, P(*([None] * env_axis), DATA_AXIS))
            ),
            tree,
        )

    env_reset = jax.vmap(env.reset, in_axes=(0, None))
    env_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def schedule(count: jax.Array) -> jax.Array:
        grad_steps = config.num_updates * config.update_epochs * config.num_minibatches
        return config.lr * (1.0 - count / grad_steps)

    # One optimizer object for every runner state: it is static in TrainState's
    # pytree structure, so states from init, a compiled chunk and a restored
    # checkpoint all share one structure.
    tx = optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adam(schedule if config.anneal_lr else config.lr, eps=1e-5),
    )

    def init(rng: jax.Array) -> RunnerState:
        rng, k_net, k_env = jax.random.split(rng, 3)
        obs, env_state = env_reset(jax.random.split(k_env, n), env_params)
        state = zero_state(config, n)
        params = network.init(k_net, obs[:, None], jnp.ones((n, 1), bool), state)
        if recurrent and config.forget_bias:
            params = add_forget_bias(params, config.forget_bias, config.cell)
        train_state = TrainState.create(apply_fn=network.apply, params=params, tx=tx)
        return RunnerState(
            train_state,
            env_state,
            obs,
            jnp.ones((n,), bool),
            state,
            jnp.zeros((n,), jnp.float32),
            rng,
        )

    def rollout_step(runner: RunnerState, _: None) -> tuple[RunnerState, Transition]:
        rng, k_act, k_env = jax.random.split(runner.rng, 3)
        # The rollout is step mode: a sequence of length one.
        logits, value, states = network.apply(
            runner.train_state.params,
            runner.obs[:, None],
            runner.is_init[:, None],
            runner.recurrent_state,
        )
        logits, value = logits[:, 0], value[:, 0]
        action = jax.random.categorical(k_act, logits)
        obs, env_state, reward, terminated, truncated, _ = env_step(
            jax.random.split(k_env, n), runner.env_state, action, env_params
        )
        done = jnp.logical_or(terminated, truncated)
        episode_return = runner.episode_return + reward
        transition = Transition(
            runner.obs,
            runner.is_init,
            action,
            categorical_log_prob(logits, action),
            value,
            reward,
            done,
            episode_return,
        )
        runner = runner._replace(
            env_state=env_state,
            obs=obs,
            is_init=done,
            recurrent_state=jax.tree.map(lambda a: a[:, 0], states),
            episode_return=jnp.where(done, 0.0, episode_return),
            rng=rng,
        )
        return runner, transition

    def loss_fn(params: Any, batch: dict[str, Any]) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        logits, value, _ = network.apply(
            params, batch["obs"], batch["is_init"], batch["init_state"]
        )
        # Value loss, clipped around the rollout's values (PPO's value clipping).
        value_clipped = batch["value"] + jnp.clip(
            value - batch["value"], -config.clip_eps, config.clip_eps
        )
        value_loss = 0.5 * jnp.mean(
            jnp.maximum(
                jnp.square(value - batch["target"]), jnp.square(value_clipped - batch["target"])
            )
        )
        log_prob = categorical_log_prob(logits, batch["action"])
        ratio = jnp.exp(log_prob - batch["log_prob"])
        adv = batch["advantage"]
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        actor_loss = -jnp.mean(
            jnp.minimum(
                ratio * adv, jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps) * adv
            )
        )
        entropy = jnp.mean(categorical_entropy(logits))
        total = actor_loss + config.vf_coef * value_loss - config.ent_coef * entropy
        return total, (value_loss, actor_loss, entropy)

    def collect(runner: RunnerState) -> tuple[RunnerState, Transition, jax.Array]:
        runner, traj = jax.lax.scan(rollout_step, runner, None, length=steps)
        traj = shard_envs(traj, env_axis=1)  # time-major [T, N]
        _, last_value, _ = network.apply(
            runner.train_state.params,
            runner.obs[:, None],
            runner.is_init[:, None],
            runner.recurrent_state,
        )
        return runner, traj, last_value[:, 0]

    def update(runner: RunnerState, _: None) -> tuple[RunnerState, Metrics]:
        init_state = runner.recurrent_state
        runner, traj, last_value = collect(runner)
        advantages, targets = gae(
            traj.value, traj.reward, traj.done, last_value, config.gamma, config.gae_lambda
        )
        # Time-major [T, N] -> batch-major [N, T], the layout jaxlstm reads.
        batch = {
            "obs": traj.obs,
            "is_init": traj.is_init,
            "action": traj.action,
            "log_prob": traj.log_prob,
            "value": traj.value,
            "advantage": advantages,
            "target": targets,
        }
        batch = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), batch)
        batch["init_state"] = init_state

        def epoch(carry: tuple[TrainState, jax.Array], _: None):
            train_state, rng = carry
            rng, k_perm = jax.random.split(rng)
            perm = jax.random.permutation(k_perm, n)
            # One global permutation, whatever the mesh: N devices see the same
            # minibatches as one device, each holding 1/N of every minibatch.
            minibatches = jax.tree.map(
                lambda a: jnp.reshape(a[perm], (config.num_minibatches, -1) + a.shape[1:]), batch
            )
            minibatches = shard_envs(minibatches, env_axis=1)

            def minibatch_step(train_state: TrainState, mb: dict[str, Any]):
                (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                    train_state.params, mb
                )
                return train_state.apply_gradients(grads=grads), (loss, *aux)

            train_state, aux = jax.lax.scan(minibatch_step, train_state, minibatches)
            return (train_state, rng), aux

        rng, k_epochs = jax.random.split(runner.rng)
        (train_state, _), (loss, value_loss, actor_loss, entropy) = jax.lax.scan(
            epoch, (runner.train_state, k_epochs), None, length=config.update_epochs
        )
        runner = runner._replace(train_state=train_state, rng=rng)

        finished = jnp.sum(traj.done)
        mean_return = jnp.sum(jnp.where(traj.done, traj.episode_return, 0.0)) / jnp.maximum(
            finished, 1
        )
        finite = jnp.all(
            jnp.stack(
                [jnp.all(jnp.isfinite(loss))]
                + [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(train_state.params)]
            )
        )
        return runner, Metrics(
            mean_return, finished, value_loss.mean(), actor_loss.mean(), entropy.mean(), finite
        )

    def train_chunk(runner: RunnerState, length: int) -> tuple[RunnerState, Metrics]:
        return jax.lax.scan(update, runner, None, length=length)

    return Trainer(init, collect, train_chunk)


class Rollouts(NamedTuple):
    """Greedy evaluation episodes, batch-major."""

    mean_return: jax.Array  # scalar: mean return of the finished episodes
    episodes: jax.Array  # scalar int: how many finished
    obs: jax.Array  # [N, T, O]
    is_init: jax.Array  # [N, T], bool


def make_evaluate(config: Config, recurrent: bool) -> Callable[[Any, jax.Array], Rollouts]:
    """Builds a jittable ``evaluate(params, rng)``: the greedy policy on fresh envs.

    Runs ``eval_envs`` envs for ``eval_episodes_per_env`` episode lengths from a
    reset and returns the mean return of the finished episodes, plus the
    observations and resets it saw (the parity check replays them in torch).
    """
    env, env_params = make_env(config)
    network = make_network(config, env.action_space(env_params).n, recurrent)
    n = config.eval_envs
    steps = config.eval_episodes_per_env * config.episode_length

    def evaluate(params: Any, rng: jax.Array) -> Rollouts:
        rng, k_reset = jax.random.split(rng)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_reset, n), env_params
        )

        def step(carry, _):
            obs, is_init, state, env_state, episode_return, rng = carry
            rng, k_env = jax.random.split(rng)
            logits, _, states = network.apply(params, obs[:, None], is_init[:, None], state)
            action = jnp.argmax(logits[:, 0], axis=-1)
            next_obs, env_state, reward, terminated, truncated, _ = jax.vmap(
                env.step, in_axes=(0, 0, 0, None)
            )(jax.random.split(k_env, n), env_state, action, env_params)
            done = jnp.logical_or(terminated, truncated)
            episode_return = episode_return + reward
            out = (obs, is_init, done, episode_return)
            carry = (
                next_obs,
                done,
                jax.tree.map(lambda a: a[:, 0], states),
                env_state,
                jnp.where(done, 0.0, episode_return),
                rng,
            )
            return carry, out

        carry = (
            obs,
            jnp.ones((n,), bool),
            zero_state(config, n),
            env_state,
            jnp.zeros((n,), jnp.float32),
            rng,
        )
        _, (obs_seq, is_init, done, returns) = jax.lax.scan(step, carry, None, length=steps)
        finished = jnp.sum(done)
        mean_return = jnp.sum(jnp.where(done, returns, 0.0)) / jnp.maximum(finished, 1)
        return Rollouts(
            mean_return, finished, jnp.swapaxes(obs_seq, 0, 1), jnp.swapaxes(is_init, 0, 1)
        )

    return evaluate


# ---------------------------------------------------------------------------
# Driver: K seeds of one agent on a mesh, with checkpoints
# ---------------------------------------------------------------------------


def runner_shardings(mesh: Mesh, runner: RunnerState) -> RunnerState:
    """Where each leaf of a seed-stacked runner state ``[K, ...]`` lives.

    The environment batch (axis 1, after the seed axis) is sharded over the
    mesh; parameters, optimizer state and RNG keys are replicated.
    """
    replicated = NamedSharding(mesh, P())
    envs = NamedSharding(mesh, P(None, DATA_AXIS))

    def like(tree: Any, sharding: NamedSharding) -> Any:
        return jax.tree.map(lambda _: sharding, tree)

    return RunnerState(
        train_state=like(runner.train_state, replicated),
        env_state=like(runner.env_state, envs),
        obs=envs,
        is_init=envs,
        recurrent_state=like(runner.recurrent_state, envs),
        episode_return=envs,
        rng=replicated,
    )


@dataclasses.dataclass(frozen=True)
class ScaleOptions:
    """How a run is spread and saved: the CLI's scale options."""

    devices: int | None = None  # mesh size; None: every device
    seeds: int = 1  # K agents in one program, seeds config.seed ... config.seed + K - 1
    checkpoint_dir: str | None = None  # one subdirectory per agent
    checkpoint_every: int | None = None  # in updates; None: every progress chunk
    resume: bool = False
    stop_after: int | None = None  # stop after this many updates in total (a clean interruption)


class NonFiniteError(RuntimeError):
    """A NaN or Inf in the loss or the parameters."""


def segment_ends(start: int, config: Config, opts: ScaleOptions) -> list[int]:
    """The update counts after which the driver returns to Python.

    At every progress chunk, checkpoint and ``--stop-after``: each compiled
    chunk is a ``lax.scan`` over updates, and the same updates give the same
    bits whether scanned in one piece or several (the resume test checks it).
    """
    total = config.num_updates
    marks = set(range(config.updates_per_chunk, total + 1, config.updates_per_chunk)) | {total}
    if opts.checkpoint_dir and opts.checkpoint_every:
        marks |= set(range(opts.checkpoint_every, total + 1, opts.checkpoint_every))
    if opts.stop_after is not None:
        marks.add(min(opts.stop_after, total))
    return sorted(m for m in marks if m > start)


def train_agent(
    config: Config,
    recurrent: bool,
    name: str,
    mesh: Mesh | None = None,
    opts: ScaleOptions = ScaleOptions(),
) -> Result:
    """Trains K seeds of one agent on ``mesh``, with checkpoints; then evaluates them."""
    start_time = time.perf_counter()
    mesh = mesh if mesh is not None else make_mesh(1)
    trainer = make_train(config, recurrent, mesh)
    seeds = [config.seed + k for k in range(opts.seeds)]
    keys = jnp.stack([jax.random.split(jax.random.key(s)) for s in seeds])  # [K, 2]
    rng_train, rng_eval = keys[:, 0], keys[:, 1]
    init = jax.vmap(trainer.init)
    template = jax.eval_shape(init, rng_train)
    shardings = runner_shardings(mesh, template)
    total = config.num_updates
    curves = np.full((len(seeds), total), np.nan, np.float32)
    update = 0

    checkpoints = None
    if opts.checkpoint_dir:
        fingerprint = {"agent": name, "config": dataclasses.asdict(config), "seeds": seeds}
        checkpoints = Checkpoints(
            os.path.join(opts.checkpoint_dir, name), fingerprint, template, shardings
        )
    restored = checkpoints.restore(curves.shape) if checkpoints and opts.resume else None
    if restored is not None:
        runner, curves, update = restored
        print(
            f"{name}: resumed from the checkpoint at update {update} of {total} "
            f"({checkpoints.directory}/{update})",
            flush=True,
        )
    else:
        if opts.resume:
            print(f"{name}: no checkpoint to resume from; starting at update 0", flush=True)
        runner = jax.jit(init, out_shardings=shardings)(rng_train)

    # Compile first, as its own phase, so that the progress bar's rate and ETA
    # measure training only.
    ends = segment_ends(update, config, opts)
    lengths = sorted({b - a for a, b in zip([update] + ends[:-1], ends)})
    compiled = {}
    if lengths:
        print(
            f"{name}: compiling {len(lengths)} program(s) for {len(seeds)} seed(s) on "
            f"{mesh.size} device(s) ...",
            end=" ",
            flush=True,
        )
        t0 = time.perf_counter()
        for length in lengths:
            program = jax.jit(
                jax.vmap(functools.partial(trainer.train_chunk, length=length)),
                donate_argnums=0,
                out_shardings=(shardings, None),
            )
            compiled[length] = program.lower(runner).compile()
        print(f"{time.perf_counter() - t0:.1f} s", flush=True)

    stopped = False
    trained_updates = 0
    with tqdm(
        total=total * config.steps_per_update,
        initial=update * config.steps_per_update,
        desc=f"{name:>10}",
        unit=" steps",
        unit_scale=True,
        dynamic_ncols=True,
        smoothing=0.0,
        file=sys.stdout,
        disable=not ends,
    ) as bar:
        loop_start = time.perf_counter()
        for end in ends:
            runner, metrics = compiled[end - update](runner)
            metrics = to_host(metrics)
            finite = np.asarray(metrics.finite)  # [K, L]
            if not finite.all():
                seed_index, offset = map(
                    int, np.argwhere(~finite)[np.argmin(np.argwhere(~finite)[:, 1])]
                )
                kept = checkpoints.latest() if checkpoints else None
                where = (
                    f"The last good checkpoint (update {kept}) is kept in {checkpoints.directory}."
                    if kept is not None
                    else "No checkpoint was written before it."
                )
                raise NonFiniteError(
                    f"{name}: NaN or Inf in the loss or the parameters at update "
                    f"{update + offset + 1} of {total} (seed {seeds[seed_index]}); "
                    f"training stopped. {where}"
                )
            curves[:, update:end] = metrics.mean_return
            trained_updates += end - update
            bar.update((end - update) * config.steps_per_update)
            bar.set_postfix(ret=f"{float(np.mean(metrics.mean_return[:, -1])):+.3f}")
            update = end
            stop_now = opts.stop_after is not None and update >= opts.stop_after
            if checkpoints and (
                update == total
                or stop_now
                or (opts.checkpoint_every and update % opts.checkpoint_every == 0)
                or (not opts.checkpoint_every and update % config.updates_per_chunk == 0)
            ):
                checkpoints.save(update, runner, curves)
            if stop_now and update < total:
                stopped = True
                break
        train_time = time.perf_counter() - loop_start if ends else 0.0

    rate = trained_updates * config.steps_per_update * len(seeds) / max(train_time, 1e-9)
    params = runner.train_state.params
    rollouts = to_host(jax.jit(jax.vmap(make_evaluate(config, recurrent)))(params, rng_eval))
    steps = np.arange(1, total + 1) * config.steps_per_update
    return Result(
        name,
        seeds,
        to_host(params),
        steps,
        curves,
        np.asarray(rollouts.mean_return, np.float64),
        int(rollouts.episodes[0]),
        rollouts,
        update,
        time.perf_counter() - start_time,
        rate if trained_updates else 0.0,
        stopped,
    )


# ---------------------------------------------------------------------------
# Export and parity: JAX vs bridge vs torchrl (LSTMModule, or GRUModule for --cell gru)
# ---------------------------------------------------------------------------


class ParitySequences(NamedTuple):
    """Evaluation sequences for the parity check, batch-major."""

    obs: np.ndarray  # [B, T, O], float32
    is_init: np.ndarray  # [B, T], bool: several episodes per row
    init_state: RecurrentState  # [B, 1, H]: the state before step 0 (not zeros)


def state_arrays(state: RecurrentState) -> dict[str, Any]:
    """The state's arrays by name: ``{"h", "c"}`` for an ``LSTMState``, ``{"h"}`` for a GRU's."""
    if isinstance(state, LSTMState):
        return {"h": state.h, "c": state.c}
    return {"h": state}


def state_from_arrays(arrays: dict[str, Any]) -> RecurrentState:
    """The inverse of ``state_arrays``."""
    return LSTMState(h=arrays["h"], c=arrays["c"]) if "c" in arrays else arrays["h"]


def torch_state_keys(state: RecurrentState) -> dict[str, str]:
    """torchrl's tensordict key of each state array (``LSTMModule``'s or ``GRUModule``'s)."""
    if isinstance(state, LSTMState):
        return {"h": "recurrent_state_h", "c": "recurrent_state_c"}
    return {"h": "recurrent_state"}


def parity_sequences(
    config: Config, params: Any, rollouts: Rollouts, rows: int = 4, episodes: int = 3
) -> ParitySequences:
    """Cuts ``rows`` windows out of the greedy rollouts, each at another offset.

    Offsets make the resets fall at different steps in each row and start the
    rows mid-episode, so the state before step 0 is the (non-zero) state the
    policy had there, and a row's first step is not a reset.
    """
    length = episodes * config.episode_length
    offsets = [1 + (3 * b) % (config.episode_length - 1) for b in range(rows)]
    if rollouts.obs.shape[1] < max(offsets) + length:
        raise ValueError(
            f"the rollouts are too short for the parity windows: need "
            f"{max(offsets) + length} steps, got {rollouts.obs.shape[1]}."
        )
    core = recurrent_core(config, recurrent_mode=True)
    _, states = core.apply(
        {"params": params["params"][config.cell]},
        rollouts.obs[:rows],
        None,
        rollouts.is_init[:rows],
    )
    obs = np.stack([rollouts.obs[b, o : o + length] for b, o in enumerate(offsets)])
    is_init = np.stack([rollouts.is_init[b, o : o + length] for b, o in enumerate(offsets)])
    init_state = jax.tree.map(
        lambda s: np.stack([np.asarray(s[b, o - 1]) for b, o in enumerate(offsets)]), states
    )
    return ParitySequences(np.asarray(obs, np.float32), np.asarray(is_init), init_state)


def trajectory_ends(is_init: np.ndarray) -> np.ndarray:
    """bool ``[B, T]``: the last step of each trajectory in a row.

    torchrl's recurrent mode returns per-step states only there (zeros
    elsewhere), so recurrent-mode states are compared at these steps.
    """
    ends = np.ones_like(is_init)
    ends[:, :-1] = is_init[:, 1:]
    return ends


def run_jax(config: Config, params: Any, seq: ParitySequences) -> dict[str, dict[str, np.ndarray]]:
    """The trained JAX policy on ``seq``, in recurrent mode and step by step.

    Returns ``{mode: {"logits", "value", "h"[, "c"]}}`` (``"c"`` for the LSTM only).
    """
    p = params["params"]
    step_core = recurrent_core(config)
    num_actions = p["actor"]["out"]["bias"].shape[0]
    actor, critic = Head(config.head_size, num_actions), Head(config.head_size, 1)

    def policy(core: Any, obs: jax.Array, state: RecurrentState, is_init: jax.Array):
        embed, state = core.apply({"params": p[config.cell]}, obs, state, is_init)
        logits = actor.apply({"params": p["actor"]}, embed)
        value = critic.apply({"params": p["critic"]}, embed)[..., 0]
        return {"logits": logits, "value": value, **state_arrays(state)}

    out = {
        "recurrent": policy(
            step_core.set_recurrent_mode(True), seq.obs, seq.init_state, seq.is_init
        )
    }
    policy_step = jax.jit(functools.partial(policy, step_core))
    state, steps = seq.init_state, []
    for t in range(seq.obs.shape[1]):
        steps.append(policy_step(seq.obs[:, t], state, seq.is_init[:, t]))
        state = state_from_arrays(steps[-1])
    out["step"] = jax.tree.map(lambda *a: jnp.stack(a, axis=1), *steps)
    return jax.tree.map(np.asarray, out)


def torch_policy(module_cls: type, config: Config, params: Any, obs_dim: int):
    """A torch policy: an ``LSTMModule`` (``GRUModule``) and the two heads, in a TensorDictSequential.

    The recurrent weights go in through ``load_state_dict`` of the torch-named
    arrays from ``jaxlstm.params_to_torch_state_dict`` (under the module's
    ``lstm.``/``gru.`` prefix), as a torchrl user would load them.
    """
    import torch
    from tensordict.nn import TensorDictModule, TensorDictSequential

    p = params["params"]
    core = module_cls(
        input_size=obs_dim, hidden_size=config.hidden_size, in_key="observation", out_key="embed"
    )
    state_dict = jaxlstm.params_to_torch_state_dict(p[config.cell], prefix=f"{config.cell}.")
    core.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})

    def head(tree: Any) -> torch.nn.Sequential:
        # flax Dense kernels are [in, out]; torch Linear weights are [out, in].
        layers = []
        for name in ("hidden", "out"):
            kernel, bias = np.asarray(tree[name]["kernel"]), np.asarray(tree[name]["bias"])
            linear = torch.nn.Linear(*kernel.shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
                linear.bias.copy_(torch.from_numpy(bias.copy()))
            layers += [linear, torch.nn.Tanh()]
        return torch.nn.Sequential(*layers[:-1])

    return TensorDictSequential(
        core,
        TensorDictModule(head(p["actor"]), in_keys=["embed"], out_keys=["logits"]),
        TensorDictModule(head(p["critic"]), in_keys=["embed"], out_keys=["state_value"]),
    )


def run_torch(policy: Any, seq: ParitySequences) -> dict[str, dict[str, np.ndarray]]:
    """``policy`` on ``seq`` with TensorDicts, in recurrent mode and step by step.

    The state keys are torchrl's for the cell of ``seq.init_state``.
    """
    import torch
    from tensordict import TensorDict
    from torchrl.modules import set_recurrent_mode

    keys = torch_state_keys(seq.init_state)
    obs = torch.from_numpy(seq.obs)
    is_init = torch.from_numpy(seq.is_init)[..., None]
    init = {
        name: torch.from_numpy(np.asarray(a)) for name, a in state_arrays(seq.init_state).items()
    }
    batch, steps = seq.is_init.shape

    def outputs(td: TensorDict) -> dict[str, np.ndarray]:
        return {
            "logits": td["logits"].numpy(),
            "value": td["state_value"][..., 0].numpy(),
            **{name: td["next", key].numpy() for name, key in keys.items()},
        }

    out = {}
    with torch.no_grad():
        # Recurrent mode reads the state at step 0 only; later slots are ignored.
        state_in = {}
        for name, a in init.items():
            state_in[keys[name]] = torch.zeros((batch, steps) + tuple(a.shape[1:]))
            state_in[keys[name]][:, 0] = a
        td = TensorDict(
            {"observation": obs, "is_init": is_init, **state_in}, batch_size=[batch, steps]
        )
        with set_recurrent_mode(True):
            td = policy(td)
        out["recurrent"] = outputs(td)

        # Step by step, as a deployed policy runs: each step's ("next", state)
        # is fed back as the next step's state.
        state = {keys[name]: a for name, a in init.items()}
        tds = []
        for t in range(steps):
            td = TensorDict(
                {"observation": obs[:, t], "is_init": is_init[:, t], **state}, batch_size=[batch]
            )
            td = policy(td)
            state = {key: td["next", key] for key in keys.values()}
            tds.append(td)
        out["step"] = outputs(torch.stack(tds, dim=1))
    return out


def parity_modules(cell: str) -> dict[str, type]:
    """The torch modules the parity check exports to: ours and torchrl's, for ``cell``."""
    import torchrl.modules

    import bridge

    module = {"lstm": "LSTMModule", "gru": "GRUModule"}[cell]
    return {
        f"bridge.{module}": getattr(bridge, module),
        f"torchrl.modules.{module}": getattr(torchrl.modules, module),
    }


def check_parity(config: Config, params: Any, rollouts: Rollouts) -> float:
    """Runs JAX, bridge and torchrl on the same sequences; asserts they agree.

    Returns:
      The greatest absolute difference found.
    """
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    obs_dim = rollouts.obs.shape[-1]
    with jax.default_matmul_precision("highest"):
        seq = parity_sequences(config, params, rollouts)
        ref = run_jax(config, params, seq)
    ends = trajectory_ends(seq.is_init)
    modules = parity_modules(config.cell)
    runs = {("jax", "step"): ref["step"]}
    for qualname, cls in modules.items():
        out = run_torch(torch_policy(cls, config, params, obs_dim), seq)
        name = qualname.split(".")[0]
        runs[(name, "recurrent")] = out["recurrent"]
        runs[(name, "step")] = out["step"]

    state_names = list(state_arrays(seq.init_state))
    batch, steps = seq.is_init.shape
    print()
    print(
        f"Parity on {batch} evaluation rows x {steps} steps "
        f"({int(seq.is_init.sum())} resets inside the rows, non-zero initial states); "
        "greatest |difference| from JAX recurrent mode:"
    )
    header = f"{'implementation':<22}" + "".join(
        f"{key:>11}" for key in ("logits", "value", *state_names)
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    for (name, mode), got in runs.items():
        diffs = []
        for key in ("logits", "value", *state_names):
            a, b = np.asarray(got[key]), np.asarray(ref["recurrent"][key])
            if key in state_names and mode == "recurrent":
                a, b = a[ends], b[ends]  # torchrl fills only the trajectory ends
            diffs.append(float(np.max(np.abs(a - b))))
        worst = max(worst, *diffs)
        print(f"{name + ' ' + mode:<22}" + "".join(f"{d:>11.2e}" for d in diffs))
    print(
        f"(recurrent mode: {' and '.join(state_names)} at each trajectory's last step, the "
        "only steps where torchrl's recurrent mode fills them)"
    )
    if not worst <= PARITY_ATOL:
        raise AssertionError(f"PARITY FAILED: greatest difference {worst:.3e} > {PARITY_ATOL:.0e}.")
    print(
        f"PARITY OK: JAX, {' and '.join(modules)} agree within "
        f"{PARITY_ATOL:.0e} (greatest difference {worst:.2e}) in actions (logits), values "
        "and hidden states, in recurrent mode and step by step."
    )
    return worst


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def parse_config(argv: Sequence[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Scale options work together: e.g. --devices 4 --seeds 16 --checkpoint-dir ckpt "
        "trains 16 agents in one program, each agent's 64 envs split over 4 devices.",
    )
    parser.add_argument(
        "--total-steps",
        type=int,
        default=None,
        help=f"env steps per agent (default {Config.total_steps:,})",
    )
    parser.add_argument(
        "--memory-length",
        type=int,
        default=None,
        help=f"MemoryChain memory_length (default {Config.memory_length})",
    )
    parser.add_argument(
        "--num-envs",
        type=int,
        default=None,
        help=f"environments per agent (default {Config.num_envs}); a multiple of 4 x --devices",
    )
    parser.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument(
        "--cell",
        choices=sorted(CELLS),
        default=Config.cell,
        help="the recurrent torso: jaxlstm.LSTM or jaxlstm.GRU, exported to "
        "bridge/torchrl LSTMModule or GRUModule (default lstm)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small settings for CI: memory_length=5 and 8,000 env steps; every "
        "stage runs in seconds. This easier task is often solved, but it "
        "is not the main job's (memory_length=30)",
    )
    scale = parser.add_argument_group("scale")
    scale.add_argument(
        "--devices",
        type=int,
        default=None,
        help="data-parallel over the first N local devices (1-D mesh; the env "
        "batch is sharded, parameters replicated). Default: all of them",
    )
    scale.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="K independent agents in one compiled program (vmap over seeds "
        "--seed ... --seed+K-1). Default 1",
    )
    scale.add_argument(
        "--checkpoint-dir",
        default=None,
        help="write Orbax checkpoints of the full training state here "
        "(one subdirectory per agent; the newest 3 are kept)",
    )
    scale.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="checkpoint every U updates (default: every progress-bar tick)",
    )
    scale.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in --checkpoint-dir",
    )
    scale.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop cleanly after U updates in total (checkpointed when "
        "--checkpoint-dir is set), to simulate an interruption",
    )
    scale.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() even without a coordinator "
        "in the environment (e.g. on a Cloud TPU slice)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--output-dir",
        default="outputs",
        help="where learning_curve.png and summary.json go (default outputs/)",
    )
    out.add_argument(
        "--output",
        default=None,
        help="the learning-curve PNG's path (default OUTPUT_DIR/learning_curve.png)",
    )
    out.add_argument(
        "--skip-baseline",
        action="store_true",
        help="train only the recurrent agent (no memoryless baseline)",
    )
    out.add_argument(
        "--skip-parity", action="store_true", help="train and plot only (no torch export)"
    )
    args = parser.parse_args(argv)
    for name in ("seeds", "devices", "checkpoint_every", "stop_after"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1. Got {value}.")
    if args.resume and not args.checkpoint_dir:
        parser.error("--resume needs --checkpoint-dir (where to find the checkpoints).")
    if args.checkpoint_every and not args.checkpoint_dir:
        parser.error("--checkpoint-every needs --checkpoint-dir.")
    config = Config(seed=args.seed, cell=args.cell)
    if args.quick:
        config = dataclasses.replace(
            config, memory_length=5, num_envs=16, total_steps=8_000, num_chunks=4, eval_envs=16
        )
    overrides = {
        k: v
        for k, v in (
            ("total_steps", args.total_steps),
            ("memory_length", args.memory_length),
            ("num_envs", args.num_envs),
        )
        if v is not None
    }
    return dataclasses.replace(config, **overrides), args


def main(argv: Sequence[str] | None = None) -> int:
    config, args = parse_config(argv)
    maybe_initialize_distributed(args.distributed)
    mesh = make_mesh(args.devices)
    opts = ScaleOptions(
        devices=mesh.size,
        seeds=args.seeds,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        stop_after=args.stop_after,
    )
    print(
        f"jax {jax.__version__} on {jax.default_backend()}, {mesh.size} device(s)"
        f"{f' over {jax.process_count()} processes' if jax.process_count() > 1 else ''}; "
        f"task {ENV_NAME} (memory_length={config.memory_length}), {config.total_steps:,} env "
        f"steps per agent ({config.num_updates} updates), "
        f"seed{'s' if args.seeds > 1 else ''} "
        f"{config.seed}{f'-{config.seed + args.seeds - 1}' if args.seeds > 1 else ''}"
    )
    agents = [(AGENT_NAMES[config.cell], True)] + (
        [] if args.skip_baseline else [("memoryless", False)]
    )
    results = []
    try:
        for name, recurrent in agents:
            result = train_agent(config, recurrent, name, mesh, opts)
            if result.stopped:
                where = (
                    f"; continue with --resume --checkpoint-dir {args.checkpoint_dir}"
                    if args.checkpoint_dir
                    else " (no --checkpoint-dir: nothing to resume)"
                )
                print(
                    f"{name}: stopped after update {result.updates} of {config.num_updates} "
                    f"as asked (--stop-after){where}."
                )
                return 0
            results.append(result)
    except NonFiniteError as err:
        print(f"ERROR: {err}", file=sys.stderr, flush=True)
        return 3
    print_summary(config, results, ENV_NAME, quick=args.quick)
    agent = results[0]
    summary = summary_dict(config, agent, mesh.size)
    if jax.process_index() == 0:
        os.makedirs(args.output_dir, exist_ok=True)
        png = save_learning_curve(
            config,
            results,
            args.output or os.path.join(args.output_dir, "learning_curve.png"),
            ENV_NAME,
        )
        print(f"Learning curves saved to {os.path.abspath(png)}")
        summary_path = os.path.join(args.output_dir, "summary.json")
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"Summary saved to {os.path.abspath(summary_path)}")
    if not args.skip_parity:
        check_parity(config, agent.seed_params(0), agent.seed_rollouts(0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
