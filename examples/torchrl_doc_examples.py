"""torchrl's ``LSTMModule`` documentation examples, with ``bridge.LSTMModule``.

The two examples of torchrl's ``LSTMModule`` documentation, unchanged except for
the import: ``from bridge import LSTMModule`` instead of
``from torchrl.modules import LSTMModule``. The LSTM then runs as a compiled
JAX program, while the environment, the rest of the policy and the collector
stay torch/torchrl.

1. ``policy_with_primer``: a policy (LSTM then MLP) on ``Pendulum-v1`` with
   ``InitTracker``; the module's ``make_tensordict_primer()`` adds the
   recurrent states to the environment's specs, and a torchrl ``Collector``
   gathers frames, passing the states from step to step.
2. ``training_vs_inference``: one ``nn.LSTM`` shared by a step-by-step
   inference policy and a recurrent-mode training policy
   (``lstm_module.set_recurrent_mode(True)``). Running a rollout step by step
   gives the same hidden state as processing it as one sequence.

Run::

    python examples/torchrl_doc_examples.py          # the documentation's sizes, more frames
    python examples/torchrl_doc_examples.py --small  # a few seconds (CI)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule as Mod
from tensordict.nn import TensorDictSequential as Seq
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import GymEnv, InitTracker, TransformedEnv, step_mdp
from torchrl.modules import MLP

from bridge import LSTMModule


@dataclass(frozen=True)
class Config:
    """Sizes of the examples."""

    hidden_size: int = 64  # the documentation's
    frames_per_batch: int = 10  # the documentation's
    batches: int = 5
    rollout_steps: int = 20  # the documentation uses 3
    seed: int = 0


SMALL = Config(hidden_size=16, frames_per_batch=10, batches=1, rollout_steps=3)


def make_env(seed: int) -> TransformedEnv:
    env = TransformedEnv(GymEnv("Pendulum-v1"), InitTracker())
    env.set_seed(seed)
    return env


def policy_with_primer(config: Config) -> tuple[Seq, TensorDict, list[TensorDict]]:
    """Example 1: a recurrent policy, its primer, and a collector.

    Returns:
      ``(policy, first, batches)``: the policy (``policy[0]`` is the
      ``LSTMModule``), its output on ``env.reset()`` (a 0-d tensordict with
      ``"intermediate" [H]`` and ``("next", "rs_h") [1, H]``), and the
      collected batches, ``[frames_per_batch]`` each.
    """
    torch.manual_seed(config.seed)
    env = make_env(config.seed)
    lstm_module = LSTMModule(
        input_size=env.observation_spec["observation"].shape[-1],
        hidden_size=config.hidden_size,
        in_keys=["observation", "rs_h", "rs_c"],
        out_keys=["intermediate", ("next", "rs_h"), ("next", "rs_c")],
    )
    mlp = MLP(num_cells=[64], out_features=1)
    policy = Seq(lstm_module, Mod(mlp, in_keys=["intermediate"], out_keys=["action"]))
    first = policy(env.reset())

    env = env.append_transform(lstm_module.make_tensordict_primer())
    collector = Collector(
        env,
        policy,
        frames_per_batch=config.frames_per_batch,
        total_frames=config.frames_per_batch * config.batches,
    )
    try:
        batches = list(collector)
    finally:
        collector.shutdown()
    return policy, first, batches


def training_vs_inference(config: Config) -> tuple[TensorDict, TensorDict]:
    """Example 2: one LSTM, an inference policy (steps) and a training policy (sequences).

    Returns:
      ``(traj_td, td_inf)``: the rollout processed by the training policy
      (``[T]``) and the state of the step-by-step inference loop after its
      last step. Raises if their hidden states differ (the documentation's
      ``assert_close``).
    """
    torch.manual_seed(config.seed)
    env = make_env(config.seed)
    lstm = nn.LSTM(
        input_size=env.observation_spec["observation"].shape[-1],
        hidden_size=config.hidden_size,
        batch_first=True,
    )
    lstm_module = LSTMModule(
        lstm=lstm,
        in_keys=["observation", "hidden0", "hidden1"],
        out_keys=["intermediate", ("next", "hidden0"), ("next", "hidden1")],
    )
    mlp = MLP(num_cells=[64], out_features=1)
    # building two policies with different behaviours:
    policy_inference = Seq(lstm_module, Mod(mlp, in_keys=["intermediate"], out_keys=["action"]))
    policy_training = Seq(
        lstm_module.set_recurrent_mode(True),
        Mod(mlp, in_keys=["intermediate"], out_keys=["action"]),
    )
    traj_td = env.rollout(config.rollout_steps)  # some random temporal data
    traj_td = policy_training(traj_td)
    # let's check that both return the same results
    td_inf = TensorDict({}, traj_td.shape[:-1])
    for td in traj_td.unbind(-1):
        td_inf = td_inf.update(td.select("is_init", "observation", ("next", "observation")))
        td_inf = policy_inference(td_inf)
        td_inf = step_mdp(td_inf)
    torch.testing.assert_close(td_inf["hidden0"], traj_td[..., -1]["next", "hidden0"])
    return traj_td, td_inf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--small", action="store_true", help="tiny sizes and one collector batch, for CI"
    )
    args = parser.parse_args(argv)
    config = SMALL if args.small else Config()

    _, first, batches = policy_with_primer(config)
    print(
        f"example 1: policy(env.reset()) wrote intermediate {tuple(first['intermediate'].shape)}"
        f" and ('next', 'rs_h') {tuple(first['next', 'rs_h'].shape)}"
    )
    frames = sum(batch.numel() for batch in batches)
    print(
        f"example 1: collected {len(batches)} batch(es), {frames} frames; "
        f"rs_h {tuple(batches[0]['rs_h'].shape)}"
    )

    traj_td, td_inf = training_vs_inference(config)
    gap = (td_inf["hidden0"] - traj_td[..., -1]["next", "hidden0"]).abs().max().item()
    print(
        f"example 2: {traj_td.shape[-1]} steps; step-by-step vs recurrent hidden state: "
        f"max |diff| = {gap:.2e}"
    )


if __name__ == "__main__":
    main()
