"""Test-wide numerics (exact float32 matmuls on both sides, no silent broadcasts) and shared fixtures."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Parity tests compare float32 results with torch at 1e-5: ask XLA for full
# float32 matmuls and turn off TF32 on the torch side.
jax.config.update("jax_default_matmul_precision", "highest")
# A silent [B] vs [B, 1] broadcast becomes an error (as in Equinox's tests).
jax.config.update("jax_numpy_rank_promotion", "raise")

try:
    import torch
except ImportError:  # the core tests run without torch
    pass
else:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture
def count_compiles():
    """A context manager that counts XLA backend compilations inside its block.

    ``with count_compiles() as n: ...`` then ``n[0]`` is the count so far.
    """

    @contextlib.contextmanager
    def counting():
        count = [0]

        def listener(event, duration, **kwargs):
            if event == "/jax/core/compile/backend_compile_duration":
                count[0] += 1

        jax.monitoring.register_event_duration_secs_listener(listener)
        try:
            yield count
        finally:
            jax.monitoring.unregister_event_duration_listener(listener)

    return counting


@pytest.fixture(scope="session")
def run_python():
    """Runs ``python *args`` in a fresh interpreter and checks its exit code.

    The child runs from the repository root with the root first on
    ``PYTHONPATH`` (so this checkout's packages are the ones imported) and
    ``JAX_PLATFORMS=cpu``; ``env`` adds or overrides variables. On an
    unexpected exit code the assertion shows the tail of both streams.

    ``run_python(*args, env=None, timeout=300, returncode=0)`` returns the
    ``subprocess.CompletedProcess`` (text mode).
    """

    def run(*args, env=None, timeout=300, returncode=0):
        child_env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        child_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), child_env.get("PYTHONPATH")])
        )
        child_env.update(env or {})
        result = subprocess.run(
            [sys.executable, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == returncode, (
            f"exit code {result.returncode}, expected {returncode}\n"
            f"stdout:\n{result.stdout[-5000:]}\nstderr:\n{result.stderr[-5000:]}"
        )
        return result

    return run
