"""From torch to JAX: load a torchrl LSTM policy's weights and keep working on them in JAX.

Run it with no arguments::

    python examples/torch_policy_to_jax.py

What it does, top to bottom:

1. **torch side** (``export_torch_policy``, the only function that imports torch): builds a
   torchrl policy for ``Pendulum-v1`` whose torso is a ``torchrl.modules.LSTMModule`` and
   whose head is a ``torchrl.modules.MLP``, as in torchrl's ``LSTMModule`` documentation.
   It rolls the policy out in step mode over several episodes (a ``StepCounter`` ends each
   episode early, so one sequence holds several trajectories, marked by ``is_init``), runs
   the same sequence again in torchrl's recurrent mode, and saves

   * ``policy.state_dict()`` as numpy arrays in ``policy_state_dict.npz``, and
   * the rollout (observations, ``is_init``, rewards, and torch's LSTM outputs, states and
     actions) in ``rollout.npz``.

2. **JAX side** (everything else; no torch needed, ``--stage jax`` runs it alone):
   loads the ``.npz`` with ``jaxlstm.params_from_torch_state_dict``, which finds the LSTM's
   key prefix (``module.0.lstm.``) by itself and ignores the head's keys; checks that
   ``jaxlstm.LSTM`` in recurrent mode reproduces torch's LSTM outputs (step and recurrent
   mode), states after every step, and the policy's actions, within 1e-5; then continues
   in JAX: fits a critic (the loaded LSTM plus a new linear value head) to the rollout's
   discounted returns with a few ``jax.jit``-compiled optax steps, and shows the loss going
   down. Saves the fine-tuned weights: the policy's state dict with the LSTM replaced, in
   torch's names (``finetuned_policy_state_dict.npz``), and the new value head
   (``value_head.npz``).

3. **back to torch** (``--stage all`` only): loads the fine-tuned ``.npz`` into a fresh
   torchrl policy with ``load_state_dict`` (strict), checks it reproduces the JAX LSTM, and
   saves ``torch.save(policy.state_dict())`` as ``finetuned_policy_state_dict.pt``.

Stages: ``--stage torch`` (export only), ``--stage jax`` (load and continue; run it where torch
is not installed, after the torch stage), ``--stage all`` (default: 1, 2 and 3).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxlstm

PARITY_ATOL = 1e-5
STATE_DICT_FILE = "policy_state_dict.npz"
ROLLOUT_FILE = "rollout.npz"
FINETUNED_POLICY_FILE = "finetuned_policy_state_dict.npz"  # torch names, numpy arrays
FINETUNED_TORCH_FILE = "finetuned_policy_state_dict.pt"  # torch.save(policy.state_dict())
VALUE_HEAD_FILE = "value_head.npz"


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run."""

    out_dir: str = "outputs/torch_policy_to_jax"
    seed: int = 0
    hidden_size: int = 32  # the LSTM's
    head_cells: int = 32  # the MLP head's hidden layer
    episode_steps: int = 40  # a StepCounter truncates each episode after this many steps
    rollout_steps: int = 150  # several episodes in one sequence
    gamma: float = 0.9
    lr: float = 3e-3
    num_updates: int = 200


# ------------------------------------------------------------------------------------------
# 1. torch: build the policy, roll it out, save weights and data as numpy.


def build_torch_policy(config: Config, input_size: int):
    """The torchrl policy: an ``LSTMModule`` torso and an ``MLP`` head, as in torchrl's docs."""
    from tensordict.nn import TensorDictModule, TensorDictSequential
    from torchrl.modules import MLP, LSTMModule

    lstm_module = LSTMModule(
        input_size=input_size,
        hidden_size=config.hidden_size,
        in_keys=["observation", "rs_h", "rs_c"],
        out_keys=["intermediate", ("next", "rs_h"), ("next", "rs_c")],
    )
    head = MLP(num_cells=[config.head_cells], out_features=1)  # Tanh between layers
    return TensorDictSequential(
        lstm_module, TensorDictModule(head, in_keys=["intermediate"], out_keys=["action"])
    )


def export_torch_policy(config: Config) -> None:
    """Builds a torchrl LSTM policy for Pendulum, rolls it out and saves ``.npz`` files."""
    import torch
    from torchrl.envs import GymEnv, InitTracker, StepCounter, TransformedEnv
    from torchrl.modules import set_recurrent_mode

    torch.manual_seed(config.seed)
    env = TransformedEnv(GymEnv("Pendulum-v1"), InitTracker())
    env.append_transform(StepCounter(max_steps=config.episode_steps))
    policy = build_torch_policy(config, env.observation_spec["observation"].shape[-1])
    env.append_transform(policy[0].make_tensordict_primer())
    env.set_seed(config.seed)

    with torch.no_grad():
        # Step mode, as when acting: the policy carries (rs_h, rs_c) from step to step and
        # starts each episode from zeros. The episodes follow each other in one sequence.
        rollout = env.rollout(config.rollout_steps, policy, break_when_any_done=False)
        # Recurrent mode, as when training: the whole sequence at once, time last.
        with set_recurrent_mode(True):
            replay = policy(rollout.clone().unsqueeze(0))[0]

    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().cpu().numpy() for k, v in policy.state_dict().items()}
    np.savez(out_dir / STATE_DICT_FILE, **state_dict)
    np.savez(
        out_dir / ROLLOUT_FILE,
        observation=rollout["observation"].numpy(),  # [T, 3]
        is_init=rollout["is_init"].numpy(),  # [T, 1], torchrl's layout
        reward=rollout["next", "reward"].numpy()[:, 0],  # [T]
        step_h=rollout["intermediate"].numpy(),  # [T, H], step mode
        next_h=rollout["next", "rs_h"].numpy(),  # [T, L, H], the state after each step
        next_c=rollout["next", "rs_c"].numpy(),
        recurrent_h=replay["intermediate"].numpy(),  # [T, H], recurrent mode
        action=rollout["action"].numpy(),  # [T, 1]
    )
    episodes = int(rollout["is_init"].sum())
    print(
        f"torch: saved {len(state_dict)} arrays ({', '.join(state_dict)}) and a rollout of "
        f"{config.rollout_steps} steps ({episodes} episodes) to {out_dir}/"
    )


# ------------------------------------------------------------------------------------------
# 2. JAX: load, check, continue. Nothing below imports torch.


class Rollout(NamedTuple):
    observation: jax.Array  # shape=[T, I], float32
    is_init: jax.Array  # shape=[T, 1], bool: a new episode starts at this step
    reward: jax.Array  # shape=[T], float32


Params = Mapping[str, Mapping[str, jax.Array]]


def head_from_torch_state_dict(state_dict: Mapping[str, np.ndarray], prefix: str) -> list:
    """The MLP head's ``(weight [out, in], bias [out])`` pairs, in layer order."""
    indices = sorted(
        {int(k[len(prefix) :].split(".")[0]) for k in state_dict if k.startswith(prefix)}
    )
    return [
        (
            jnp.asarray(state_dict[f"{prefix}{i}.weight"]),
            jnp.asarray(state_dict[f"{prefix}{i}.bias"]),
        )
        for i in indices
    ]


def mlp_head(layers: list, x: jax.Array) -> jax.Array:
    """torchrl's ``MLP``: Linear, Tanh, ..., Linear, with torch's ``x @ W.T + b``."""
    for i, (weight, bias) in enumerate(layers):
        x = jnp.einsum("...i,oi->...o", x, weight, precision=jax.lax.Precision.HIGHEST) + bias
        if i < len(layers) - 1:
            x = jnp.tanh(x)
    return x


def discounted_returns(reward: np.ndarray, is_init: np.ndarray, gamma: float) -> np.ndarray:
    """Reward-to-go within each episode (an episode ends where the next one starts)."""
    returns = np.zeros_like(reward)
    running = 0.0
    for t in reversed(range(len(reward))):
        running = reward[t] + gamma * running
        returns[t] = running
        if is_init[t]:
            running = 0.0  # step t starts an episode: nothing before it sees what follows
    return returns


def load_and_check(config: Config) -> tuple[jaxlstm.LSTM, Params, Rollout]:
    """Loads the torch weights into ``jaxlstm.LSTM`` and checks it reproduces torch."""
    out_dir = Path(config.out_dir)
    missing = [name for name in (STATE_DICT_FILE, ROLLOUT_FILE) if not (out_dir / name).is_file()]
    if missing:
        raise SystemExit(
            f"error: --stage jax needs the torch stage's export, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing from {out_dir}/. Run first: "
            f"python examples/torch_policy_to_jax.py --stage torch --out-dir {out_dir} "
            "(it needs torch and torchrl), or --stage all."
        )
    state_dict = dict(np.load(out_dir / STATE_DICT_FILE))
    data = dict(np.load(out_dir / ROLLOUT_FILE))

    # The policy's state dict holds the LSTM under "module.0.lstm." and the head's
    # arrays: the prefix is found, the other keys are ignored.
    lstm_params = jaxlstm.params_from_torch_state_dict(state_dict)
    num_layers = sum(k.startswith("weight_ih") for k in lstm_params["params"])
    hidden_size = lstm_params["params"]["weight_hh_l0"].shape[1]
    # Full float32 matmuls, as torch's on CPU (GPUs default to faster, rougher ones).
    lstm = jaxlstm.LSTM(
        hidden_size, num_layers=num_layers, recurrent_mode=True, precision=jax.lax.Precision.HIGHEST
    )
    head = head_from_torch_state_dict(state_dict, "module.1.module.")

    rollout = Rollout(
        jnp.asarray(data["observation"]), jnp.asarray(data["is_init"]), jnp.asarray(data["reward"])
    )
    # One recurrent call over the whole sequence; is_init [T, 1] resets at episode starts.
    features, states = jax.jit(lstm.apply)(lstm_params, rollout.observation, None, rollout.is_init)
    action = mlp_head(head, features)
    checks = {
        "LSTM output vs torch step mode": (features, data["step_h"]),
        "LSTM output vs torch recurrent mode": (features, data["recurrent_h"]),
        "state h after every step": (states.h, data["next_h"]),
        "state c after every step": (states.c, data["next_c"]),
        "policy action": (action, data["action"]),
    }
    for name, (ours, theirs) in checks.items():
        np.testing.assert_allclose(np.asarray(ours), theirs, atol=PARITY_ATOL, err_msg=name)
        diff = float(np.abs(np.asarray(ours) - theirs).max())
        print(f"jax: {name:<36} max |diff| = {diff:.1e} (<= {PARITY_ATOL:g})")
    return lstm, lstm_params, rollout


def make_train(
    config: Config, lstm: jaxlstm.LSTM, rollout: Rollout
) -> Callable[[Params], tuple[Params, jax.Array]]:
    """Returns a jittable ``train(lstm_params) -> (critic params, losses [num_updates])``.

    The critic is the loaded LSTM plus a new linear value head, fitted to the standardised
    discounted returns of the rollout by Adam on the mean squared error.
    """
    returns = discounted_returns(
        np.asarray(rollout.reward), np.asarray(rollout.is_init)[:, 0], config.gamma
    )
    targets = jnp.asarray((returns - returns.mean()) / (returns.std() + 1e-8))
    optimizer = optax.adam(config.lr)

    def loss_fn(params: Params) -> jax.Array:
        features, _ = lstm.apply(params["lstm"], rollout.observation, None, rollout.is_init)
        value = features @ params["value"]["w"] + params["value"]["b"]
        return jnp.mean((value - targets) ** 2)

    def train(lstm_params: Params) -> tuple[Params, jax.Array]:
        hidden = lstm.hidden_size
        params = {
            "lstm": jax.tree.map(jnp.asarray, lstm_params),
            "value": {"w": jnp.zeros((hidden,)), "b": jnp.zeros(())},
        }

        def update(carry, _):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(
            update, (params, optimizer.init(params)), None, length=config.num_updates
        )
        return params, losses

    return train


def continue_in_jax(config: Config) -> jax.Array:
    lstm, lstm_params, rollout = load_and_check(config)
    train = jax.jit(make_train(config, lstm, rollout))
    critic, losses = train(lstm_params)
    losses = np.asarray(losses)
    for i in sorted({0, config.num_updates // 4, config.num_updates // 2, config.num_updates - 1}):
        print(f"jax: critic update {i + 1:>4}/{config.num_updates}: loss {losses[i]:.4f}")
    assert losses[-1] < 0.5 * losses[0], "the critic's loss did not go down"
    # The fine-tuned LSTM weights go back to torch's names: the policy's state dict with
    # the LSTM replaced (the actor head is unchanged) loads into the torchrl policy as is.
    back = jaxlstm.params_to_torch_state_dict(critic["lstm"], prefix="module.0.lstm.")
    out_dir = Path(config.out_dir)
    policy_state = dict(np.load(out_dir / STATE_DICT_FILE))
    policy_state.update({k: np.asarray(v) for k, v in back.items()})
    np.savez(out_dir / FINETUNED_POLICY_FILE, **policy_state)
    np.savez(
        out_dir / VALUE_HEAD_FILE,
        weight=np.asarray(critic["value"]["w"])[None],
        bias=np.asarray(critic["value"]["b"])[None],
    )  # torch.nn.Linear(H, 1)'s layout
    print(
        f"jax: loss {losses[0]:.3f} -> {losses[-1]:.3f}; fine-tuned LSTM arrays: {', '.join(back)}"
    )
    print(
        f"jax: saved the fine-tuned policy state dict to {out_dir / FINETUNED_POLICY_FILE} "
        f"and the value head to {out_dir / VALUE_HEAD_FILE}"
    )
    return losses


def load_finetuned_in_torch(config: Config) -> float:
    """Loads the fine-tuned ``.npz`` into a fresh torchrl policy and saves its ``state_dict``.

    Checks that the torch policy's LSTM now gives the fine-tuned JAX LSTM's outputs on the
    rollout, then writes ``torch.save(policy.state_dict())``, which
    ``build_torch_policy(...).load_state_dict(torch.load(path))`` reads back.

    Returns:
      The greatest |difference| between the torch and JAX outputs.
    """
    import torch
    from tensordict import TensorDict
    from torchrl.modules import set_recurrent_mode

    out_dir = Path(config.out_dir)
    arrays = dict(np.load(out_dir / FINETUNED_POLICY_FILE))
    data = dict(np.load(out_dir / ROLLOUT_FILE))
    policy = build_torch_policy(config, data["observation"].shape[-1])
    policy.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})  # strict
    torch.save(policy.state_dict(), out_dir / FINETUNED_TORCH_FILE)

    lstm_params = jaxlstm.params_from_torch_state_dict(arrays)
    lstm = jaxlstm.LSTM(
        lstm_params["params"]["weight_hh_l0"].shape[1],
        recurrent_mode=True,
        precision=jax.lax.Precision.HIGHEST,
    )
    ours, _ = lstm.apply(lstm_params, data["observation"], None, data["is_init"])
    steps = data["observation"].shape[0]
    td = TensorDict(
        {
            "observation": torch.from_numpy(data["observation"]),
            "is_init": torch.from_numpy(data["is_init"]),
        },
        batch_size=[steps],
    )
    with torch.no_grad(), set_recurrent_mode(True):
        theirs = policy(td.unsqueeze(0))[0]["intermediate"].numpy()
    diff = float(np.abs(np.asarray(ours) - theirs).max())
    assert diff <= PARITY_ATOL, f"fine-tuned weights differ in torch: {diff:.2e}"
    print(
        f"torch: the fine-tuned policy loads into torchrl (max |diff| vs JAX {diff:.1e}); "
        f"saved its state_dict to {out_dir / FINETUNED_TORCH_FILE}"
    )
    return diff


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stage",
        choices=["all", "torch", "jax"],
        default="all",
        help="torch: export the policy and a rollout (needs torch, torchrl, gymnasium); jax: "
        "load them, check, fine-tune and save (no torch needed; run torch first); all "
        "(default): both, then load the fine-tuned weights back into torchrl",
    )
    parser.add_argument(
        "--out-dir",
        default=Config.out_dir,
        help=f"where the .npz/.pt files go (default {Config.out_dir})",
    )
    parser.add_argument(
        "--num-updates",
        type=int,
        default=Config.num_updates,
        help=f"critic fine-tuning steps in JAX (default {Config.num_updates})",
    )
    args = parser.parse_args(argv)
    config = Config(out_dir=args.out_dir, num_updates=args.num_updates)
    if args.stage in ("all", "torch"):
        export_torch_policy(config)
    if args.stage in ("all", "jax"):
        continue_in_jax(config)
        if args.stage == "jax":
            assert not sys.modules.get("torch"), "the JAX stage imported torch"
    if args.stage == "all":
        load_finetuned_in_torch(config)


if __name__ == "__main__":
    main()
