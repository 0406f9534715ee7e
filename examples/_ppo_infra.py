"""The main job's infrastructure: hosts and meshes, Orbax checkpoints, results and reports.

``examples/train_ppo.py`` is the PPO algorithm and its driver; what it needs
that is not PPO lives here, so that the script reads top to bottom:

- ``maybe_initialize_distributed`` and ``make_mesh``: ``jax.distributed`` for
  multi-process launches and the 1-D data mesh (axis ``"data"``);
- ``Checkpoints``: Orbax checkpoints of any training-state pytree, checksummed,
  with fallback past a corrupt or partial one; ``to_host``;
- ``Result``, ``steps_to_threshold``, ``summary_dict``, ``print_summary`` and
  ``save_learning_curve``: one trained agent's numbers, ``summary.json``, the
  summary table and the learning-curve PNG.

Nothing here knows PPO's state layout: the training state comes in as a pytree
with a template and its shardings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"  # the mesh axis the environment batch is sharded over


# ---------------------------------------------------------------------------
# Scale: several hosts, a device mesh
# ---------------------------------------------------------------------------


def maybe_initialize_distributed(force: bool = False) -> bool:
    """Calls ``jax.distributed.initialize()`` for a multi-process launch; before any JAX work.

    A launch is multi-process when ``JAX_COORDINATOR_ADDRESS`` is set (with
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``), when SLURM or Open MPI
    started several tasks, or when ``force`` (``--distributed``, e.g. on a
    Cloud TPU slice, where JAX finds its peers itself).
    """
    env = os.environ
    explicit = "JAX_COORDINATOR_ADDRESS" in env
    launcher = (
        int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    )
    if not (force or explicit or launcher):
        return False
    if explicit:

        def optional_int(name: str) -> int | None:
            return int(env[name]) if name in env else None

        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=optional_int("JAX_NUM_PROCESSES"),
            process_id=optional_int("JAX_PROCESS_ID"),
        )
    else:
        jax.distributed.initialize()
    return True


def make_mesh(devices: int | None) -> Mesh:
    """A 1-D mesh (axis ``"data"``) over the first ``devices`` devices; None takes all.

    With several processes the mesh spans every process's devices, so
    ``devices`` must be None or all of them.
    """
    available = jax.devices() if jax.process_count() > 1 else jax.local_devices()
    n = len(available) if devices is None else devices
    if not 1 <= n <= len(available):
        raise ValueError(
            f"--devices must be between 1 and {len(available)} (the "
            f"{jax.default_backend()} devices this process sees). Got {n}."
        )
    if jax.process_count() > 1 and n != len(available):
        raise ValueError(
            f"--devices must be all {len(available)} devices of the "
            f"{jax.process_count()} processes in a multi-host run. Got {n}."
        )
    return Mesh(np.array(available[:n]), (DATA_AXIS,))


# ---------------------------------------------------------------------------
# Checkpoints (Orbax)
# ---------------------------------------------------------------------------


class CheckpointMismatchError(ValueError):
    """A checkpoint written by a run with other settings."""


def tree_checksum(tree: Any) -> str | None:
    """sha256 over every leaf's path, dtype, shape and bytes; None if not all on this host."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not all(getattr(a, "is_fully_addressable", True) for _, a in leaves):
        return None  # multi-host: each process sees only its shards
    digest = hashlib.sha256()
    for path, leaf in leaves:
        a = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


class Checkpoints:
    """One agent's Orbax checkpoints: the full training state at an update.

    A checkpoint holds every leaf of the seed-stacked runner state (parameters,
    optimizer state, environment state, observations, recurrent states, RNG keys as
    raw key data, the optimizer's step counter), the learning curves so far and
    the update count, plus a JSON item with the run's settings and a sha256 of
    the state. Orbax writes each checkpoint to a temporary directory and
    renames it when complete, so a kill mid-write leaves no half checkpoint
    under a step's name, and it keeps the newest ``keep``. On restore the
    checksum is recomputed: a checkpoint that fails to load or to match is set
    aside (renamed ``corrupt-<update>-<time>``) and the previous one is tried.
    """

    def __init__(
        self,
        directory: str,
        fingerprint: dict[str, Any],
        template: Any,
        shardings: Any,
        keep: int = 3,
    ):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.directory = os.path.abspath(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from JSON
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False
            ),
        )
        self.treedef = jax.tree.structure(template)
        self.template_leaves = jax.tree.leaves(template)
        self.sharding_leaves = jax.tree.leaves(shardings)

    def _pack(self, runner: Any, curves: np.ndarray, update: int) -> dict[str, Any]:
        # Orbax stores arrays, not PRNG key types: keys go in as their raw uint32 data.
        leaves = {
            f"{i:04d}": (jax.random.key_data(a) if _is_key(a) else a)
            for i, a in enumerate(jax.tree.leaves(runner))
        }
        return {
            "runner": leaves,
            "curves": jnp.asarray(curves),
            "update": jnp.asarray(update, jnp.int32),
        }

    def _unpack(self, state: dict[str, Any]) -> tuple[Any, np.ndarray, int]:
        leaves = []
        for i, t in enumerate(self.template_leaves):
            a = state["runner"][f"{i:04d}"]
            # The keys come from jax.random.key: the default implementation.
            leaves.append(
                jax.random.wrap_key_data(a, impl=jax.config.jax_default_prng_impl)
                if _is_key(t)
                else a
            )
        runner = jax.tree.unflatten(self.treedef, leaves)
        return runner, np.array(state["curves"]), int(state["update"])

    def _abstract(self, num_curves: tuple[int, int]) -> dict[str, Any]:
        replicated = NamedSharding(self.sharding_leaves[0].mesh, P())
        runner = {}
        for i, (t, s) in enumerate(zip(self.template_leaves, self.sharding_leaves)):
            if _is_key(t):
                t = jax.eval_shape(jax.random.key_data, t)
            runner[f"{i:04d}"] = jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=s)
        return {
            "runner": runner,
            "curves": jax.ShapeDtypeStruct(num_curves, jnp.float32, sharding=replicated),
            "update": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        }

    def save(self, update: int, runner: Any, curves: np.ndarray) -> None:
        state = self._pack(runner, curves, update)
        meta = {"update": update, "fingerprint": self.fingerprint, "checksum": tree_checksum(state)}
        if update in self.manager.all_steps():  # a set-aside step being written again
            self.manager.delete(update)
        self.manager.save(
            update,
            args=self.ocp.args.Composite(
                state=self.ocp.args.StandardSave(state), meta=self.ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, curves_shape: tuple[int, int]) -> tuple[Any, np.ndarray, int] | None:
        """The newest complete, uncorrupted checkpoint, or None when there is none."""
        self.manager.reload()
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                restored = self.manager.restore(
                    step,
                    args=self.ocp.args.Composite(
                        state=self.ocp.args.StandardRestore(self._abstract(curves_shape)),
                        meta=self.ocp.args.JsonRestore(),
                    ),
                )
                meta, state = restored["meta"], restored["state"]
                if meta["fingerprint"] != self.fingerprint:
                    diff = sorted(
                        k
                        for k in set(meta["fingerprint"]["config"])
                        | set(self.fingerprint["config"])
                        if meta["fingerprint"]["config"].get(k) != self.fingerprint["config"].get(k)
                    )
                    raise CheckpointMismatchError(
                        f"the checkpoint {self.directory}/{step} was written with other settings "
                        f"(differing: {diff or 'seeds'}: {meta['fingerprint']} here "
                        f"{self.fingerprint}). Resume with the same settings, or use a new "
                        "--checkpoint-dir."
                    )
                checksum = tree_checksum(state)
                if meta["checksum"] is not None and checksum != meta["checksum"]:
                    raise ValueError(
                        f"checksum mismatch: stored {meta['checksum'][:12]}..., "
                        f"read {checksum[:12]}..."
                    )
                if int(state["update"]) != step or int(meta["update"]) != step:
                    raise ValueError(f"update counter {int(state['update'])} in step {step}")
            except CheckpointMismatchError:
                raise
            except Exception as err:  # anything unreadable is a corrupt or partial checkpoint
                reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
                aside = self._set_aside(step)
                print(
                    f"WARNING: checkpoint {self.directory}/{step} is corrupt or partial "
                    f"({reason}). Set aside as {aside}; falling back to the previous one.",
                    flush=True,
                )
            else:
                # Outside the try: an error here is a bug, not a bad checkpoint.
                return self._unpack(state)
        if steps:
            print(
                f"WARNING: no complete checkpoint left in {self.directory}; starting from scratch.",
                flush=True,
            )
        return None

    def _set_aside(self, step: int) -> str:
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(self.directory, f"corrupt-{step}-{time.time_ns()}")
        if jax.process_index() == 0 and os.path.exists(src):
            os.rename(src, dst)
        self.manager.reload()
        return dst


def to_host(tree: Any) -> Any:
    """``jax.device_get`` that also takes replicated arrays spanning several hosts.

    In a multi-process run, an output replicated over every device is not fully
    addressable from one process; its local copy is the whole value.
    """

    def get(a: Any) -> Any:
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(a.addressable_data(0))
        return jax.device_get(a)

    return jax.tree.map(get, tree)


def _is_key(a: Any) -> bool:
    return jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


# ---------------------------------------------------------------------------
# Results and reports
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """One trained agent, K seeds."""

    name: str
    seeds: list[int]
    params: Any  # leaves [K, ...]
    curve_steps: np.ndarray  # [U]: env steps per seed after each update
    curve_returns: np.ndarray  # [K, U]: training return at each update
    final_returns: np.ndarray  # [K]: greedy evaluation
    eval_episodes: int  # per seed
    rollouts: Any  # Rollouts, leaves [K, ...]: greedy evaluation episodes
    updates: int  # updates done, resumed ones included
    wall_time: float  # seconds in this process: compile, training and evaluation
    train_steps_per_s: float  # env steps (all seeds) per second of the training loop (with
    # checkpoint writes, without compilation) in this process
    stopped: bool = False  # --stop-after ended the run early

    def seed_params(self, k: int) -> Any:
        return jax.tree.map(lambda a: a[k], self.params)

    def seed_rollouts(self, k: int) -> Any:
        return jax.tree.map(lambda a: a[k], self.rollouts)


def params_l2(params: Any) -> float:
    """The L2 norm of a parameter tree, summed in float64 on the host."""
    return float(
        np.sqrt(
            sum(
                np.sum(np.square(np.asarray(a, np.float64)))
                for a in jax.tree.leaves(to_host(params))
            )
        )
    )


HOLD_WINDOW = 5  # updates in the trailing mean that must stay above the threshold


def steps_to_threshold(curve_steps: np.ndarray, curve: np.ndarray, threshold: float) -> int | None:
    """The env steps from which the training curve stays at or above ``threshold``.

    The curve is smoothed by a trailing mean over ``HOLD_WINDOW`` updates; the
    answer is the first update from which every later smoothed value is
    >= threshold, so a curve that reaches the threshold and later collapses
    gets None (unlike "first >= threshold").
    """
    window = min(HOLD_WINDOW, curve.size)
    smooth = np.convolve(curve, np.ones(window) / window, mode="full")[: curve.size]
    smooth[: window - 1] = -np.inf  # not a full window yet
    below = np.nonzero(~(smooth >= threshold))[0]
    first = 0 if below.size == 0 else below[-1] + 1
    return int(curve_steps[first]) if first < curve.size else None


def summary_dict(config: Any, result: Result, devices: int) -> dict[str, Any]:
    """``summary.json``: the recurrent agent's run, one entry per seed."""
    env_steps = result.updates * config.steps_per_update * len(result.seeds)
    return {
        "cell": config.cell,
        "devices": devices,
        "updates": result.updates,
        "env_steps": env_steps,
        "wall_s": result.wall_time,
        "env_steps_per_s": result.train_steps_per_s,
        "seeds": [
            {
                "seed": seed,
                "greedy_return": float(result.final_returns[k]),
                "steps_to_threshold": steps_to_threshold(
                    result.curve_steps, result.curve_returns[k], config.success_threshold
                ),
                "params_l2": params_l2(result.seed_params(k)),
            }
            for k, seed in enumerate(result.seeds)
        ],
    }


def print_summary(
    config: Any, results: Sequence[Result], env_name: str, quick: bool = False
) -> None:
    thr = config.success_threshold
    seeds = len(results[0].seeds)
    print()
    print(
        f"Task: gymnax {env_name}, memory_length={config.memory_length}; solved at a mean "
        f"greedy return >= {thr} (a memoryless policy's expected return is 0)."
    )
    header = (
        f"{'agent':<12}{'greedy return':>15}{'solved':>8}{'env steps':>11}"
        f"{'first >= thr':>14}{'held >= thr':>13}{'last 10%':>10}{'wall time':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        mean_curve = r.curve_returns.mean(axis=0)
        hit = np.nonzero(mean_curve >= thr)[0]
        first = f"{r.curve_steps[hit[0]]:,}" if hit.size else "never"
        held = steps_to_threshold(r.curve_steps, mean_curve, thr)
        tail = mean_curve[-max(1, mean_curve.size // 10) :].mean()
        solved = int(np.sum(r.final_returns >= thr))
        ret = f"{r.final_returns.mean():+.3f}"
        if seeds > 1:
            ret += f" (min {r.final_returns.min():+.2f})"
        print(
            f"{r.name:<12}{ret:>15}{f'{solved}/{seeds}':>8}{int(r.curve_steps[-1]):>11,}"
            f"{first:>14}{(f'{held:,}' if held is not None else 'no'):>13}{tail:>+10.3f}"
            f"{r.wall_time:>10.1f}s"
        )
    print(
        f"(greedy return: the greedy policy's mean over {results[0].eval_episodes} fresh "
        f"episodes{', averaged over the seeds' if seeds > 1 else ''}. Training curve"
        f"{' (mean over seeds)' if seeds > 1 else ''}: 'first >= thr' is where it first "
        f"touched the threshold, 'held >= thr' where its {HOLD_WINDOW}-update mean reached it "
        "for good ('no': it fell back below), 'last 10%' its mean over the last tenth.)"
    )
    solved = {r.name: bool(np.all(r.final_returns >= thr)) for r in results}
    agent = results[0].name
    if solved[agent] and not solved.get("memoryless", False):
        verdict = (
            f"Verdict: the {agent} agent solved the task and the memoryless one did not: "
            "the memory is doing the work."
        )
        if "memoryless" not in solved:
            verdict = f"Verdict: the {agent} agent solved the task (memoryless baseline skipped)."
    else:
        verdict = f"Verdict: not solved on every seed at these settings (solved: {solved})."
    if quick:
        verdict += (
            f" (--quick: memory_length={config.memory_length} and "
            f"{config.total_steps:,} steps, a smoke run; not the main job's task.)"
        )
    print(verdict)


def save_learning_curve(config: Any, results: Sequence[Result], path: str, env_name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import StrMethodFormatter

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r, color in zip(results, ("C0", "C1", "C2")):
        if len(r.seeds) > 1:
            for curve in r.curve_returns:
                ax.plot(r.curve_steps, curve, color=color, lw=0.6, alpha=0.35)
        label = f"{r.name}, mean of {len(r.seeds)} seeds" if len(r.seeds) > 1 else r.name
        ax.plot(
            r.curve_steps,
            r.curve_returns.mean(axis=0),
            color=color,
            lw=1.8,
            label=f"{label} (greedy eval {r.final_returns.mean():+.2f})",
        )
    ax.axhline(
        config.success_threshold,
        color="gray",
        ls="--",
        lw=1,
        label=f"solved ({config.success_threshold})",
    )
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_xlabel("environment steps per agent")
    ax.set_ylabel("mean episode return (training policy)")
    ax.set_ylim(-1.05, 1.05)
    seeds = results[0].seeds
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
    ax.set_title(f"PPO on {env_name}, memory_length={config.memory_length}, {seed_text}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
