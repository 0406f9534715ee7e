"""Throughput of the whole PPO loop: env-steps/s for LSTM and GRU x devices 1/2/4 x seeds 1/4/16.

Run ``python -m benchmarks.throughput`` (``--quick`` for a CI-sized smoke run).

Two trainers, at the same configuration, on the same mesh:

- ``jaxlstm``: the main job's trainer (``examples/train_ppo.py``: ``jaxlstm.LSTM``,
  or ``jaxlstm.GRU`` with ``--cell gru``; batch-major sequences, the env batch
  pinned to the mesh's data axis);
- ``purejaxrl``: a purejaxrl-style recurrent PPO written here, time-major, whose
  ``ScannedRNN`` is ``nn.scan`` over flax's ``OptimizedLSTMCell`` (LSTM points)
  or ``GRUCell`` (GRU points, purejaxrl's own choice) with the reset as a
  ``jnp.where`` on the carry. Its env batch is sharded through the inputs only,
  as a purejaxrl user would shard it.

Both run rollout + GAE + ``update_epochs`` x ``num_minibatches`` PPO steps, for
K seeds under ``vmap``, compiled once per point (ahead of time, not timed). Each
point runs in its own process and times ``repeats`` calls of one trainer, then of
the other, and reports the median steps/s and the ratio jaxlstm / purejaxrl (target: >= 1.0 at
every point).

On a CPU host the devices are forced (``--xla_force_host_platform_device_count``):
they share the host's cores, so the device axis shows the partitioner's overhead,
not a speed-up. Real scaling needs real devices. The machine's load (``uptime``)
is recorded with the figures.
"""

from __future__ import annotations

import os
import sys

# Forced CPU devices must be set before JAX starts.
if "jax" not in sys.modules and "--xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""
):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax.training.train_state import TrainState  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location(
        "train_ppo_bench", ROOT / "examples" / "train_ppo.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ppo = load_example()


# ---------------------------------------------------------------------------
# Baseline: purejaxrl-style recurrent PPO (time-major, ScannedRNN)
# ---------------------------------------------------------------------------


BASELINE_CELLS = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}


class ScannedRNN(nn.Module):
    """A flax cell scanned over time-major inputs; the carry is zeroed where ``done``."""

    hidden_size: int
    cell: str = "lstm"

    @functools.partial(
        nn.scan, variable_broadcast="params", in_axes=0, out_axes=0, split_rngs={"params": False}
    )
    @nn.compact
    def __call__(self, carry, inputs):
        x, done = inputs  # [N, O], [N]
        carry = jax.tree.map(lambda a: jnp.where(done[:, None], 0.0, a), carry)
        carry, y = BASELINE_CELLS[self.cell](self.hidden_size)(carry, x)
        return carry, y

    @staticmethod
    def zeros(batch: int, hidden_size: int, cell: str = "lstm"):
        """The LSTM's ``(c, h)``, each ``[N, H]``; the GRU's ``h [N, H]``."""
        if cell == "gru":
            return jnp.zeros((batch, hidden_size))
        return (jnp.zeros((batch, hidden_size)), jnp.zeros((batch, hidden_size)))


class BaselineActorCritic(nn.Module):
    """Same sizes as the main job's agent: LSTM or GRU torso, ``Dense-tanh-Dense`` heads."""

    num_actions: int
    hidden_size: int
    head_size: int
    cell: str = "lstm"

    @nn.compact
    def __call__(self, carry, obs, done):  # time-major [T, N, O], [T, N]
        carry, embed = ScannedRNN(self.hidden_size, self.cell)(carry, (obs, done))
        logits = ppo.Head(self.head_size, self.num_actions)(embed)
        value = ppo.Head(self.head_size, 1)(embed)[..., 0]
        return carry, logits, value


class BaselineRunner(NamedTuple):
    train_state: TrainState
    env_state: Any  # [N, ...]
    obs: jax.Array  # [N, O]
    done: jax.Array  # [N]
    carry: Any  # (c, h), each [N, H] (LSTM); h [N, H] (GRU)
    rng: jax.Array


def make_baseline(config: Any):
    """Returns ``(init(rng), train_chunk(runner, length))`` of the purejaxrl-style PPO."""
    env, env_params = ppo.make_env(config)
    network = BaselineActorCritic(
        env.action_space(env_params).n, config.hidden_size, config.head_size, config.cell
    )
    n, steps, hidden = config.num_envs, config.num_steps, config.hidden_size
    grad_steps = config.num_updates * config.update_epochs * config.num_minibatches
    tx = optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adam(lambda c: config.lr * (1.0 - c / grad_steps), eps=1e-5),
    )

    def init(rng):
        rng, k_net, k_env = jax.random.split(rng, 3)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_env, n), env_params
        )
        params = network.init(
            k_net, ScannedRNN.zeros(n, hidden, config.cell), obs[None], jnp.zeros((1, n), bool)
        )
        return BaselineRunner(
            TrainState.create(apply_fn=network.apply, params=params, tx=tx),
            env_state,
            obs,
            jnp.ones((n,), bool),
            ScannedRNN.zeros(n, hidden, config.cell),
            rng,
        )

    def env_step(runner, _):
        rng, k_act, k_env = jax.random.split(runner.rng, 3)
        carry, logits, value = network.apply(
            runner.train_state.params, runner.carry, runner.obs[None], runner.done[None]
        )
        action = jax.random.categorical(k_act, logits[0])
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits[0]), action[:, None], -1)[:, 0]
        obs, env_state, reward, term, trunc, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_env, n), runner.env_state, action, env_params
        )
        done = term | trunc
        out = (runner.obs, runner.done, action, log_prob, value[0], reward, done)
        return runner._replace(env_state=env_state, obs=obs, done=done, carry=carry, rng=rng), out

    def loss_fn(params, carry, mb):
        obs, prev_done, action, old_log_prob, old_value, adv, target = mb
        _, logits, value = network.apply(params, carry, obs, prev_done)
        log_probs = jax.nn.log_softmax(logits)
        log_prob = jnp.take_along_axis(log_probs, action[..., None], -1)[..., 0]
        v_clip = old_value + jnp.clip(value - old_value, -config.clip_eps, config.clip_eps)
        v_loss = 0.5 * jnp.mean(jnp.maximum((value - target) ** 2, (v_clip - target) ** 2))
        ratio = jnp.exp(log_prob - old_log_prob)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg = -jnp.mean(
            jnp.minimum(
                ratio * adv, jnp.clip(ratio, 1 - config.clip_eps, 1 + config.clip_eps) * adv
            )
        )
        entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, -1))
        return pg + config.vf_coef * v_loss - config.ent_coef * entropy

    def update(runner, _):
        carry0 = runner.carry
        runner, (obs, prev_done, action, log_prob, value, reward, done) = jax.lax.scan(
            env_step, runner, None, length=steps
        )
        _, _, last_value = network.apply(
            runner.train_state.params, runner.carry, runner.obs[None], runner.done[None]
        )
        adv, target = ppo.gae(value, reward, done, last_value[0], config.gamma, config.gae_lambda)

        def epoch(carry, _):
            train_state, rng = carry
            rng, k = jax.random.split(rng)
            perm = jax.random.permutation(k, n)
            # Minibatches split the env axis (axis 1 of time-major data).
            data = (obs, prev_done, action, log_prob, value, adv, target)
            split = (
                lambda a, axis: jnp.moveaxis(  # noqa: E731
                    jnp.reshape(
                        jnp.take(a, perm, axis=axis),
                        a.shape[:axis] + (config.num_minibatches, -1) + a.shape[axis + 1 :],
                    ),
                    axis,
                    0,
                )
            )
            mbs = (
                jax.tree.map(lambda a: split(a, 0), carry0),
                jax.tree.map(lambda a: split(a, 1), data),
            )

            def step(train_state, mb):
                grads = jax.grad(loss_fn)(train_state.params, *mb)
                return train_state.apply_gradients(grads=grads), None

            train_state, _ = jax.lax.scan(step, train_state, mbs)
            return (train_state, rng), None

        rng, k = jax.random.split(runner.rng)
        (train_state, _), _ = jax.lax.scan(
            epoch, (runner.train_state, k), None, length=config.update_epochs
        )
        return runner._replace(train_state=train_state, rng=rng), jnp.mean(reward)

    def train_chunk(runner, length):
        return jax.lax.scan(update, runner, None, length=length)

    return init, train_chunk


def baseline_shardings(mesh, runner):
    replicated, envs = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, ppo.DATA_AXIS))
    like = lambda tree, s: jax.tree.map(lambda _: s, tree)  # noqa: E731
    return BaselineRunner(
        like(runner.train_state, replicated),
        like(runner.env_state, envs),
        envs,
        envs,
        like(runner.carry, envs),
        replicated,
    )


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------


def compiled_point(kind: str, config: Any, mesh, seeds: int, length: int):
    """An AOT-compiled ``runner -> runner`` of ``length`` updates for K seeds, and its input."""
    keys = jax.random.split(jax.random.key(0), seeds)
    if kind == "jaxlstm":
        trainer = ppo.make_train(config, True, mesh)
        init, chunk = trainer.init, trainer.train_chunk
        shard = ppo.runner_shardings
    else:
        init, chunk = make_baseline(config)
        shard = baseline_shardings
    init = jax.vmap(init)
    shardings = shard(mesh, jax.eval_shape(init, keys))
    runner = jax.jit(init, out_shardings=shardings)(keys)
    program = jax.jit(
        jax.vmap(functools.partial(chunk, length=length)), out_shardings=(shardings, None)
    )
    return program.lower(runner).compile(), runner


def measure(config: Any, devices: int, seeds: int, length: int, repeats: int) -> dict:
    """One point: ``config.cell`` at ``devices`` x ``seeds``, both trainers."""
    mesh = ppo.make_mesh(devices)
    times: dict[str, list[float]] = {}
    for kind in ("jaxlstm", "purejaxrl"):
        program, runner = compiled_point(kind, config, mesh, seeds, length)
        times[kind] = []
        for rep in range(repeats + 1):  # the first call is a warm-up
            t0 = time.perf_counter()
            runner, metrics = program(runner)
            # Not on the PRNG-key leaves: block_until_ready on a key array output
            # never returned here (jax 0.10.2, XLA:CPU); one program's outputs are
            # ready together.
            jax.block_until_ready(jax.tree.leaves((runner.train_state.params, metrics)))
            if rep:
                times[kind].append(time.perf_counter() - t0)
        del program, runner
    env_steps = length * config.steps_per_update * seeds
    out = {"cell": config.cell, "devices": devices, "seeds": seeds, "env_steps_per_call": env_steps}
    for kind, ts in times.items():
        out[kind] = {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "steps_per_s": env_steps / statistics.median(ts),
        }
    out["ratio"] = out["jaxlstm"]["steps_per_s"] / out["purejaxrl"]["steps_per_s"]
    return out


def run_point(
    cell: str, devices: int, seeds: int, quick: bool, repeats: int, timeout: float
) -> dict:
    """Measures one point in a fresh process with exactly ``devices`` forced CPU devices.

    A process per point keeps one point's compiled programs and threads out of the next,
    and a point that hangs (forced host devices share the cores, and XLA:CPU collectives
    wait for every device's thread) is recorded as an error instead of stopping the run.
    """
    env = dict(os.environ)
    if jax.default_backend() == "cpu":
        flags = [
            f
            for f in env.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")
        ]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.throughput",
        "--point",
        str(devices),
        str(seeds),
        "--cells",
        cell,
        "--repeats",
        str(repeats),
    ] + (["--quick"] if quick else [])
    where = {"cell": cell, "devices": devices, "seeds": seeds}
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {**where, "error": f"no result in {timeout:.0f} s"}
    line = next((x for x in proc.stdout.splitlines() if x.startswith("POINT")), None)
    if proc.returncode or line is None:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        return {**where, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(line[len("POINT") :])


def machine() -> dict[str, str]:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "?"

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in run(["lscpu"]).splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def write_markdown(results: dict, path: Path) -> None:
    lines = [
        f"# PPO throughput: jaxlstm vs purejaxrl-style ScannedRNN ({results['name']})",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"{results['machine']['backend']} ({results['device_note']}); jax "
        f"{results['machine']['jax']}.",
        f"Load: before `{results['uptime_before']}`; after `{results['uptime_after']}`.",
        f"Config: {results['config_text']}; {results['length']} updates per timed call, "
        f"median of {results['repeats']} calls.",
        "",
        "| cell | devices | seeds | jaxlstm steps/s | purejaxrl steps/s | ratio "
        "| spread (max/min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["points"]:
        spread = max(r[k]["max_s"] / r[k]["min_s"] for k in ("jaxlstm", "purejaxrl"))
        lines.append(
            f"| {r['cell']} | {r['devices']} | {r['seeds']} | "
            f"{r['jaxlstm']['steps_per_s']:,.0f} | "
            f"{r['purejaxrl']['steps_per_s']:,.0f} | {r['ratio']:.2f}x | "
            f"{spread:.2f} |"
        )
    for r in results["failed"]:
        lines.append(f"| {r['cell']} | {r['devices']} | {r['seeds']} | - | - | - | {r['error']} |")
    ratios = [r["ratio"] for r in results["points"]]
    met = sum(r >= 1.0 for r in ratios)
    lines += [
        "",
        f"Target ratio >= 1.0: met at {met} of {len(ratios)} measured points"
        + (f" (ratios {min(ratios):.2f}-{max(ratios):.2f})" if ratios else "")
        + (f"; {len(results['failed'])} point(s) gave no result" if results["failed"] else "")
        + ".",
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny sizes, (cell, devices, seeds) = (lstm, 1, 1), "
        "(lstm, 2, 2) and (gru, 2, 2), one repeat",
    )
    parser.add_argument(
        "--cells",
        nargs="+",
        choices=sorted(ppo.CELLS),
        default=None,
        help="recurrent cells (default lstm gru)",
    )
    parser.add_argument(
        "--devices", type=int, nargs="+", default=None, help="device counts (default 1 2 4)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="seed counts (default 1 4 16)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per trainer")
    parser.add_argument("--name", default=None, help="results file stem (default throughput_cpu)")
    parser.add_argument("--out-dir", default=str(RESULTS), help="where the results go")
    parser.add_argument(
        "--point-timeout",
        type=float,
        default=900.0,
        help="seconds before a point's process is given up (default 900)",
    )
    parser.add_argument("--point", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        config = ppo.Config(
            memory_length=3,
            num_envs=8,
            num_minibatches=2,
            hidden_size=8,
            head_size=8,
            total_steps=10_000,
        )
        grid, repeats, length = [("lstm", 1, 1), ("lstm", 2, 2), ("gru", 2, 2)], 1, 1
    else:
        # The main job's network and PPO settings; a shorter memory and fewer envs per
        # seed keep 18 compiled points within minutes on a 2-core CPU.
        config = ppo.Config(memory_length=10, num_envs=16, total_steps=1_000_000)
        grid, repeats, length = (
            [(c, d, k) for c in ["lstm", "gru"] for d in [1, 2, 4] for k in [1, 4, 16]],
            3,
            2,
        )
    if args.cells or args.devices or args.seeds:  # a sub-grid
        grid = [
            (c, d, k)
            for c in (args.cells or list(dict.fromkeys(c for c, _, _ in grid)))
            for d in (args.devices or sorted({d for _, d, _ in grid}))
            for k in (args.seeds or sorted({k for _, _, k in grid}))
        ]
    repeats = args.repeats or repeats
    if args.point:  # one point, in this process: print its figures as one JSON line
        import faulthandler

        faulthandler.dump_traceback_later(args.point_timeout * 0.9, exit=False)
        cell = args.cells[0] if args.cells else "lstm"
        point = measure(dataclasses.replace(config, cell=cell), *args.point, length, repeats)
        print("POINT" + json.dumps(point), flush=True)
        return 0
    name = args.name or ("throughput_smoke" if args.quick else "throughput_cpu")
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {uptime_before}", flush=True)
    points = []
    failed = []
    for c, d, k in grid:
        point = run_point(c, d, k, args.quick, repeats, args.point_timeout)
        if "error" in point:
            failed.append(point)
            print(f"{c} devices={d} seeds={k:>2}: {point['error']}", flush=True)
            continue
        points.append(point)
        print(
            f"{c:<4} devices={d} seeds={k:>2}: jaxlstm {point['jaxlstm']['steps_per_s']:>9,.0f} "
            f"steps/s, purejaxrl {point['purejaxrl']['steps_per_s']:>9,.0f} steps/s, "
            f"ratio {point['ratio']:.2f}x",
            flush=True,
        )
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    results = {
        "name": name,
        "machine": machine(),
        "uptime_before": uptime_before,
        "uptime_after": uptime_after,
        "device_note": (
            "forced host devices sharing the cores"
            if jax.default_backend() == "cpu"
            else "real devices"
        ),
        "config": dataclasses.asdict(config),
        "config_text": (
            f"MemoryChain memory_length={config.memory_length}, "
            f"{config.num_envs} envs x {config.num_steps} steps per seed per update, "
            f"LSTM/GRU H={config.hidden_size}, {config.update_epochs} epochs x "
            f"{config.num_minibatches} minibatches"
        ),
        "length": length,
        "repeats": repeats,
        "points": points,
        "failed": failed,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, out_dir / f"{name}.md")
    print(f"uptime: {uptime_after}")
    print(f"Results written to {out_dir / name}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
