"""Test-wide numerics (exact float32 matmuls on both sides, no silent broadcasts) and shared fixtures."""

import contextlib

import jax
import pytest

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
