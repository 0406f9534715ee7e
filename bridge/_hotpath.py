"""Per-call conversions between torch tensors and JAX arguments/results.

Small CPU tensors go through numpy: jit's C++ dispatch takes numpy arguments
far faster than ``jnp.from_dlpack`` builds arrays (measured ~2 us vs ~30-100 us
per array on XLA:CPU), and ``torch.from_numpy(np.asarray(result))`` is ~1.4 us
against ~5 us for ``torch.from_dlpack``. Other devices use DLPack.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np
import torch

from ._convert import torch_to_jax

__all__ = ["NUMPY_DTYPES", "jax_arg", "torch_out"]

NUMPY_DTYPES = frozenset(
    {
        torch.bool,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.float16,
        torch.float32,
        torch.complex64,
    }
)

# np.asarray of a CPU jax.Array is a read-only view of its buffer, and
# torch.from_numpy warns about read-only arrays. Nothing else owns the freshly
# computed result buffers that torch_out wraps, so writes through the tensors
# are safe. The filter is installed once, at import, and only matches that
# message raised from this module: warnings.catch_warnings() around the call
# would swap the process-wide filter list, which is not thread-safe (concurrent
# first calls could leave an "ignore all UserWarnings" filter behind).
warnings.filterwarnings(
    "ignore",
    message="The given NumPy array is not writable",
    category=UserWarning,
    module=__name__.replace(".", r"\.") + "$",
)


def jax_arg(tensor: torch.Tensor | None, cpu: bool) -> Any:
    """A jit argument holding ``tensor``'s current values (None stays None)."""
    if tensor is None:
        return None
    if cpu and tensor.dtype in NUMPY_DTYPES:
        # A numpy view of the tensor (force: detached, lazy neg/conj bits
        # resolved); jit aliases it when it can and copies it otherwise.
        return tensor.numpy(force=True)
    return torch_to_jax(tensor)


def torch_out(array: jax.Array, cpu: bool) -> torch.Tensor:
    """A torch tensor sharing the memory of a freshly computed ``array``."""
    if cpu:
        return torch.from_numpy(np.asarray(array))
    return torch.from_dlpack(array)
