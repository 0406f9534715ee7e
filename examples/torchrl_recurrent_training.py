"""Recurrent DQN from torchrl parts, with ``bridge.LSTMModule`` as the recurrent layer.

A recipe for training a recurrent policy with torchrl's own machinery, where the
LSTM is ``bridge.LSTMModule`` (computed by JAX) instead of torchrl's
``LSTMModule``. Everything else is stock torchrl:

* ``MultiSyncCollector`` with several worker processes, each stepping its own
  environment with a copy of the exploration policy in step mode; after every
  optimisation phase ``collector.update_policy_weights_()`` sends the new
  weights (and the annealed epsilon) to the workers. Workers start with
  torchrl's default start method, ``spawn``. ``fork`` cannot work: the parent
  has already run JAX (the collector runs the policy once to read its output
  specs), and XLA's thread pools do not survive a fork, so a forked worker
  raises the bridge's RuntimeError on its first call instead of hanging.
* a ``ReplayBuffer`` whose ``SliceSampler`` cuts whole-episode slices
  ``[B, T]`` out of the flat storage, using the collector's trajectory ids;
* ``DQNLoss`` (double DQN off, TD(0) targets) evaluated in recurrent mode
  (``set_recurrent_mode(True)``): the same module that steps in the workers
  runs over the sampled sequences, resetting wherever ``is_init`` is set;
* a target network (``delay_value=True``) tracked with ``SoftUpdate``.

The task, ``CueRecall``, needs memory: the first observation shows one of two
cues, then ``delay`` blank steps follow, then a query step where the action
must name the cue (+1 if right, -1 if wrong; every other step gives 0). A
policy without memory is right half the time (mean return 0); the script
reports the greedy success rate before and after training.

Run::

    python examples/torchrl_recurrent_training.py          # default settings
    python examples/torchrl_recurrent_training.py --ci     # small settings (CI)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.collectors import MultiSyncCollector
from torchrl.data import LazyTensorStorage, ReplayBuffer, SliceSampler
from torchrl.envs import Compose, GymWrapper, InitTracker, StepCounter, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, EGreedyModule, QValueModule, set_recurrent_mode
from torchrl.objectives import DQNLoss, SoftUpdate

from bridge import LSTMModule


@dataclass(frozen=True)
class Config:
    delay: int = 3  # blank steps between the cue and the query
    hidden_size: int = 32
    num_workers: int = 2
    frames_per_batch: int = 200  # over all workers
    total_frames: int = 12_000
    updates_per_batch: int = 16
    batch_episodes: int = 32  # slices of one episode each per update
    lr: float = 3e-3
    gamma: float = 0.9
    target_tau: float = 0.05  # SoftUpdate: target <- (1 - tau) target + tau online
    eps_end: float = 0.05
    eval_episodes: int = 200
    seed: int = 0


CI = Config(total_frames=6_000, eval_episodes=100)


# ----------------------------------------------------------------------------- task


class CueRecall(gym.Env):
    """Remember a cue shown at t=0 and name it at t=delay+1.

    Observations ``[3]`` float32: ``[cue is 0, cue is 1, query]``, all zero on
    blank steps. Actions: ``0`` or ``1``; only the query step's action counts.
    """

    metadata: ClassVar[dict] = {}

    def __init__(self, delay: int = 3):
        self.delay = delay
        self.observation_space = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self._cue = 0
        self._t = 0

    def _observation(self) -> np.ndarray:
        obs = np.zeros(3, np.float32)
        if self._t == 0:
            obs[self._cue] = 1.0
        elif self._t == self.delay + 1:
            obs[2] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._cue = int(self.np_random.integers(2))
        self._t = 0
        return self._observation(), {}

    def step(self, action):
        if self._t == self.delay + 1:
            reward = 1.0 if int(action) == self._cue else -1.0
            return self._observation(), reward, True, False, {}
        self._t += 1
        return self._observation(), 0.0, False, False, {}


def make_env(delay: int, primer=None) -> TransformedEnv:
    """``CueRecall`` as a torchrl env: ``is_init`` for resets, and the LSTM's primer."""
    transforms = [InitTracker(), StepCounter()]
    if primer is not None:
        transforms.append(primer)
    return TransformedEnv(GymWrapper(CueRecall(delay)), Compose(*transforms))


class EnvMaker:
    """A picklable env constructor for the collector's worker processes."""

    def __init__(self, delay: int, lstm: LSTMModule):
        self.delay = delay
        self.lstm = lstm

    def __call__(self) -> TransformedEnv:
        return make_env(self.delay, self.lstm.make_tensordict_primer())


# ----------------------------------------------------------------------------- model


def make_policy(config: Config, action_spec) -> tuple[LSTMModule, TensorDictSequential]:
    """Greedy recurrent Q-policy: LSTM -> MLP Q-values -> arg max."""
    lstm = LSTMModule(
        input_size=3,
        hidden_size=config.hidden_size,
        in_keys=["observation", "rs_h", "rs_c"],
        out_keys=["embed", ("next", "rs_h"), ("next", "rs_c")],
    )
    head = TensorDictModule(
        MLP(out_features=2, num_cells=[config.hidden_size]),
        in_keys=["embed"],
        out_keys=["action_value"],
    )
    return lstm, TensorDictSequential(lstm, head, QValueModule(spec=action_spec))


def success_rate(policy, config: Config) -> float:
    """Fraction of ``eval_episodes`` greedy episodes whose query answer is right."""
    env = make_env(config.delay, policy[0].make_tensordict_primer())
    env.set_seed(config.seed + 1)
    steps = config.eval_episodes * (config.delay + 2)
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = env.rollout(steps, policy, break_when_any_done=False)
    rewards = rollout["next", "reward"]
    answered = rewards[rewards != 0]
    return float((answered > 0).float().mean())


# ----------------------------------------------------------------------------- training


def train(config: Config, log=print) -> dict[str, float]:
    """Trains the recurrent DQN; returns greedy success rates before and after."""
    torch.manual_seed(config.seed)
    probe_env = make_env(config.delay)
    lstm, policy = make_policy(config, probe_env.action_spec)
    exploration = EGreedyModule(
        spec=probe_env.action_spec,
        eps_init=1.0,
        eps_end=config.eps_end,
        annealing_num_steps=config.total_frames // 2,
    )
    explore_policy = TensorDictSequential(policy, exploration)
    before = success_rate(policy, config)
    log(f"greedy success before training: {before:.2f} (chance: 0.50)")

    loss = DQNLoss(policy, action_space=probe_env.action_spec, delay_value=True)
    loss.make_value_estimator(gamma=config.gamma)
    target = SoftUpdate(loss, tau=config.target_tau)
    optim = torch.optim.Adam(loss.parameters(), lr=config.lr)

    episode = config.delay + 2
    buffer = ReplayBuffer(
        storage=LazyTensorStorage(config.total_frames),
        # Slices of exactly one episode: a piece of an episode cut by a batch
        # boundary is shorter, and strict_length drops it.
        sampler=SliceSampler(slice_len=episode, traj_key=("collector", "traj_ids")),
        batch_size=config.batch_episodes * episode,
    )
    collector = MultiSyncCollector(
        [EnvMaker(config.delay, lstm)] * config.num_workers,
        explore_policy,
        frames_per_batch=config.frames_per_batch,
        total_frames=config.total_frames,
        env_device="cpu",
        policy_device="cpu",
    )
    start = time.perf_counter()
    frames = 0
    try:
        for data in collector:
            frames += data.numel()
            buffer.extend(data.reshape(-1))
            exploration.step(data.numel())
            if len(buffer) < 4 * config.batch_episodes * episode:
                continue
            for _ in range(config.updates_per_batch):
                batch = buffer.sample().reshape(config.batch_episodes, episode)
                with set_recurrent_mode(True):
                    loss_value = loss(batch)["loss"]
                optim.zero_grad()
                loss_value.backward()
                optim.step()
                target.step()
            collector.update_policy_weights_()
            answered = data["next", "reward"][data["next", "reward"] != 0]
            log(
                f"frames {frames:>6,}  loss {loss_value.item():.4f}  "
                f"eps {exploration.eps.item():.2f}  "
                f"collected success {float((answered > 0).float().mean()):.2f}"
            )
    finally:
        collector.shutdown()
    after = success_rate(policy, config)
    log(
        f"greedy success after {frames:,} frames ({time.perf_counter() - start:.0f} s): {after:.2f}"
    )
    return {"before": before, "after": after, "frames": float(frames)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ci", action="store_true", help="small settings for CI (~1-2 min)")
    parser.add_argument("--total-frames", type=int, help="frames to collect (overrides the preset)")
    parser.add_argument("--seed", type=int, help="random seed (overrides the preset)")
    args = parser.parse_args()
    config = CI if args.ci else Config()
    if args.total_frames is not None:
        config = replace(config, total_frames=args.total_frames)
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    result = train(config)
    print(f"RESULT before={result['before']:.3f} after={result['after']:.3f}")


if __name__ == "__main__":
    main()
