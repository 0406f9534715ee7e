"""Test-wide numerics: exact float32 matmuls on both sides, no silent broadcasts."""

import jax

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
