"""The main job at scale (``examples/train_ppo.py``): devices, seeds, checkpoints, resume, NaN.

Each guarantee of issue 10 has a test here, at small settings:

- ``--devices 2`` ends with the parameters of ``--devices 1`` (float reduction
  order only), and the rollout batch is really split over the devices;
- ``--stop-after`` then ``--resume`` gives the uninterrupted run's ``params_l2``
  bit for bit;
- SIGKILL at random moments, and in the middle of a checkpoint write, loses at
  most ``--checkpoint-every`` updates, and the run still ends bit for bit equal;
- a corrupt or partial checkpoint is detected and the run falls back to the
  previous one, saying so;
- a NaN in the parameters stops the run, naming the update, and keeps the last
  good checkpoint.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("optax")
pytest.importorskip("gymnax")
pytest.importorskip("orbax.checkpoint")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_ppo.py"
# --quick with 3,072 steps: 16 updates of 16 envs x 12 steps; seconds after compiling.
SMALL = ["--quick", "--total-steps", "3072", "--skip-baseline", "--skip-parity"]
UPDATES = 16


def _load_example():
    spec = importlib.util.spec_from_file_location("train_ppo_scale_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ppo = _load_example()


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_NUMPY_RANK_PROMOTION="raise", **extra)
    return env


def _cmd(out: Path, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), *SMALL, "--output-dir", str(out), *args]


def _run(out: Path, *args: str) -> tuple[dict, str]:
    proc = subprocess.run(
        _cmd(out, *args),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return summary, log


def _steps(agent_dir: Path) -> list[int]:
    """The complete checkpoints: directories named by their update."""
    if not agent_dir.is_dir():
        return []
    return sorted(int(p.name) for p in agent_dir.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, checkpointing every 4 updates: ``(summary, checkpoint dir)``."""
    base = tmp_path_factory.mktemp("reference")
    summary, log = _run(
        base / "out", "--checkpoint-dir", str(base / "ckpt"), "--checkpoint-every", "4"
    )
    assert summary["updates"] == UPDATES, log[-2000:]
    return summary, base / "ckpt"


def test_summary_json_has_the_documented_fields(reference):
    summary, ckpt = reference
    assert set(summary) == {
        "cell",
        "devices",
        "updates",
        "env_steps",
        "wall_s",
        "env_steps_per_s",
        "seeds",
    }
    assert (
        summary["cell"] == "lstm"
        and summary["devices"] == 1
        and summary["env_steps"] == UPDATES * 16 * 12
    )
    assert summary["wall_s"] > 0 and summary["env_steps_per_s"] > 0
    (seed,) = summary["seeds"]
    assert set(seed) == {"seed", "greedy_return", "steps_to_threshold", "params_l2"}
    assert seed["seed"] == 0 and -1.0 <= seed["greedy_return"] <= 1.0
    assert seed["steps_to_threshold"] is None or isinstance(seed["steps_to_threshold"], int)
    # The newest 3 checkpoints are kept, the last one at the final update.
    assert _steps(ckpt / "LSTM") == [8, 12, 16]


def test_resume_is_bit_exact(reference, tmp_path):
    expected, _ = reference
    ckpt = tmp_path / "ckpt"
    summary, log = _run(
        tmp_path / "out",
        "--checkpoint-dir",
        str(ckpt),
        "--checkpoint-every",
        "4",
        "--stop-after",
        "6",
    )
    assert summary is None and "stopped after update 6 of 16" in log, log[-2000:]
    assert _steps(ckpt / "LSTM")[-1] == 6
    summary, log = _run(
        tmp_path / "out", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "4", "--resume"
    )
    assert "resumed from the checkpoint at update 6 of 16" in log, log[-2000:]
    # Bit for bit: the same RNG stream and the same data order.
    assert summary["seeds"][0]["params_l2"] == expected["seeds"][0]["params_l2"]
    assert summary["seeds"][0]["greedy_return"] == expected["seeds"][0]["greedy_return"]
    assert summary["updates"] == UPDATES


def test_sigkill_at_random_moments_and_mid_write(reference, tmp_path):
    expected, _ = reference
    ckpt = tmp_path / "ckpt"
    agent_dir = ckpt / "LSTM"
    args = ["--checkpoint-dir", str(ckpt), "--checkpoint-every", "1", "--resume"]
    rng = random.Random(10)
    newest_before_kill = 0
    for moment in ("random", "mid-write"):
        proc = subprocess.Popen(
            _cmd(tmp_path / "out", *args),
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            # Wait until this process has written a checkpoint of its own.
            deadline = time.monotonic() + 300
            while (
                max(_steps(agent_dir), default=0) <= newest_before_kill
                and proc.poll() is None
                and time.monotonic() < deadline
            ):
                time.sleep(0.002)
            if moment == "random":
                time.sleep(rng.uniform(0.0, 0.2))
            else:  # kill while Orbax is writing a checkpoint (its temporary directory exists)
                while (
                    not any("tmp" in p.name for p in agent_dir.iterdir())
                    and proc.poll() is None
                    and time.monotonic() < deadline
                ):
                    pass
            newest_before_kill = max(_steps(agent_dir), default=0)
            proc.kill()
            log = proc.communicate(timeout=60)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -9, f"the run ended before the kill ({moment}): {log[-2000:]}"
        assert 0 < newest_before_kill < UPDATES
    # The newest complete checkpoint loads: at most --checkpoint-every (1) update is lost.
    summary, log = _run(tmp_path / "out", *args)
    match = re.search(r"resumed from the checkpoint at update (\d+)", log)
    assert match and int(match.group(1)) >= newest_before_kill, log[-2000:]
    assert "corrupt" not in log, log[-2000:]
    assert summary["seeds"][0]["params_l2"] == expected["seeds"][0]["params_l2"]


def test_corrupt_and_partial_checkpoints_fall_back(reference, tmp_path):
    expected, reference_ckpt = reference
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference_ckpt, ckpt)
    agent_dir = ckpt / "LSTM"
    # Newest (16): garbage bytes in its array data. Next (12): a missing item, as a partial copy.
    data_files = sorted(
        (p for p in (agent_dir / "16" / "state").rglob("*") if p.is_file() and "/d/" in str(p)),
        key=lambda p: p.stat().st_size,
    )
    blob = bytearray(data_files[-1].read_bytes())
    for i in range(len(blob) // 2, len(blob)):
        blob[i] ^= 0xFF
    data_files[-1].write_bytes(bytes(blob))
    shutil.rmtree(agent_dir / "12" / "meta")
    summary, log = _run(
        tmp_path / "out", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "4", "--resume"
    )
    assert re.search(r"checkpoint \S+/16 is corrupt or partial", log), log[-3000:]
    assert re.search(r"checkpoint \S+/12 is corrupt or partial", log), log[-3000:]
    assert "resumed from the checkpoint at update 8 of 16" in log, log[-3000:]
    # The bad checkpoints were set aside, the run redid updates 9-16 and ended as the reference.
    assert any(p.name.startswith("corrupt-16-") for p in agent_dir.iterdir())
    assert summary["seeds"][0]["params_l2"] == expected["seeds"][0]["params_l2"]


TINY = ppo.Config(
    memory_length=4,
    num_envs=8,
    num_minibatches=2,
    total_steps=80 * 10,
    num_chunks=1,
    eval_envs=8,
    hidden_size=8,
    head_size=8,
)


def test_nan_stops_the_run_naming_the_update_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    import optax

    # Poison the optimizer: NaN updates at the first gradient step of update 6.
    grad_steps_per_update = TINY.update_epochs * TINY.num_minibatches
    poison_at = 5 * grad_steps_per_update
    real_chain = optax.chain

    def nan_at_step(step: int) -> optax.GradientTransformation:
        def init(params):
            return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

        def update(updates, state, params=None):
            updates = jax.tree.map(lambda u: jnp.where(state.count == step, jnp.nan, u), updates)
            return updates, optax.ScaleByScheduleState(count=state.count + 1)

        return optax.GradientTransformation(init, update)

    monkeypatch.setattr(ppo.optax, "chain", lambda *t: real_chain(*t, nan_at_step(poison_at)))
    opts = ppo.ScaleOptions(checkpoint_dir=str(tmp_path), checkpoint_every=2)
    with pytest.raises(ppo.NonFiniteError) as err:
        ppo.train_agent(TINY, True, "LSTM", ppo.make_mesh(1), opts)
    message = str(err.value)
    assert "NaN or Inf in the loss or the parameters at update 6 of 10" in message, message
    assert "last good checkpoint (update 4) is kept" in message, message
    assert _steps(tmp_path / "LSTM") == [2, 4]

    # The kept checkpoint is good: it restores with finite parameters at update 4
    # (into the same program: the poisoned optimizer has one more state).
    trainer = ppo.make_train(TINY, True, ppo.make_mesh(1))
    template = jax.eval_shape(jax.vmap(trainer.init), jax.random.split(jax.random.key(0), 1))
    checkpoints = ppo.Checkpoints(
        str(tmp_path / "LSTM"),
        {"agent": "LSTM", "config": dataclasses.asdict(TINY), "seeds": [0]},
        template,
        ppo.runner_shardings(ppo.make_mesh(1), template),
    )
    runner, curves, update = checkpoints.restore((1, TINY.num_updates))
    assert update == 4 and np.isfinite(curves[:, :4]).all()
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(runner.train_state.params))


DEVICES_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    import jax, numpy as np
    spec = importlib.util.spec_from_file_location("ppo", sys.argv[1])
    ppo = importlib.util.module_from_spec(spec); sys.modules["ppo"] = ppo
    spec.loader.exec_module(ppo)
    assert jax.device_count() == 2, jax.devices()
    config = ppo.Config(memory_length=4, num_envs=8, num_minibatches=2, total_steps=80 * 3,
                        num_chunks=1, eval_envs=8, hidden_size=16, head_size=16)
    opts = ppo.ScaleOptions(seeds=2)
    out = {}
    for devices in (1, 2):
        result = ppo.train_agent(config, True, "LSTM", ppo.make_mesh(devices), opts)
        out[devices] = [ppo.params_l2(result.seed_params(k)) for k in range(2)]
        out[f"updates{devices}"] = result.updates
    # The rollout of a 2-device run: the env axis of every array is split.
    mesh = ppo.make_mesh(2)
    trainer = ppo.make_train(config, True, mesh)
    keys = jax.random.split(jax.random.key(0), 2)
    init = jax.vmap(trainer.init)
    runner = jax.jit(init, out_shardings=ppo.runner_shardings(
        mesh, jax.eval_shape(init, keys)))(keys)
    _, traj, last_value = jax.jit(jax.vmap(trainer.collect))(runner)
    out["traj"] = {name: {"shape": list(a.shape), "spec": str(a.sharding.spec),
                          "shards": sorted([list(s.data.shape), s.device.id]
                                           for s in a.addressable_shards)}
                   for name, a in traj._asdict().items()}
    out["params_spec"] = str(jax.tree.leaves(runner.train_state.params)[0].sharding.spec)
    print("RESULT" + json.dumps(out))
""")


def test_two_devices_equal_one_and_split_the_batch(run_python):
    proc = run_python(
        "-c",
        DEVICES_SCRIPT,
        SCRIPT,
        timeout=600,
        env={
            "JAX_NUMPY_RANK_PROMOTION": "raise",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        },
    )
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["updates1"] == out["updates2"] == 3
    # Same global batch, same updates: equal up to float reduction order.
    np.testing.assert_allclose(out["2"], out["1"], rtol=1e-4)
    print("params_l2, 1 vs 2 devices:", out["1"], out["2"])
    for name, info in out["traj"].items():
        seeds, steps, envs = info["shape"][:3]
        assert (seeds, steps, envs) == (2, 10, 8), (name, info)
        # Time-major [K, T, N, ...] under the seed vmap: N is split over the data axis.
        assert re.match(r"P(artitionSpec)?\(None, None, 'data'", info["spec"]), (name, info)
        shapes = [s for s, _ in info["shards"]]
        assert [d for _, d in info["shards"]] == [0, 1], (name, info)
        assert all(s[:3] == [seeds, steps, envs // 2] for s in shapes), (name, info)
    assert re.fullmatch(r"P(artitionSpec)?\(\)", out["params_spec"]), out["params_spec"]


def test_cli_exits_3_with_the_message_on_nan(tmp_path, monkeypatch, capsys):
    def fail(config, recurrent, name, mesh=None, opts=None):
        raise ppo.NonFiniteError(f"{name}: NaN or Inf in the loss or the parameters at update 7")

    monkeypatch.setattr(ppo, "train_agent", fail)
    code = ppo.main(["--quick", "--skip-parity", "--output-dir", str(tmp_path)])
    assert code == 3
    assert "ERROR: LSTM: NaN or Inf in the loss or the parameters at update 7" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resume"], "--resume needs --checkpoint-dir"),
        (["--checkpoint-every", "5"], "--checkpoint-every needs --checkpoint-dir"),
        (["--seeds", "0"], "--seeds must be >= 1. Got 0."),
    ],
)
def test_cli_rejects_inconsistent_options(args, message, capsys):
    with pytest.raises(SystemExit):
        ppo.parse_config(args)
    assert message in capsys.readouterr().err


def test_devices_must_divide_the_minibatches():
    with pytest.raises(
        ValueError,
        match=r"num_envs must be a multiple of num_minibatches \* "
        r"devices = 2 \* 1 .*Got num_envs=7",
    ):
        ppo.make_train(dataclasses.replace(TINY, num_envs=7), True, ppo.make_mesh(1))
    n = len(jax.local_devices())
    with pytest.raises(ValueError, match=rf"--devices must be between 1 and {n} .*Got {n + 1}"):
        ppo.make_mesh(n + 1)
