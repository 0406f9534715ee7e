"""JAX views of a module's torch parameters that are current on every call.

A parameter can change without its version counter moving: writes through
``.data``, through a flat buffer that the parameters are views of
(``vector_to_parameters``, consolidated TensorDicts), or by another process
writing shared memory. A cache keyed on ``(data_ptr, _version)`` misses all of
them. So a view is kept across calls only where it provably *is* the
parameter's memory: XLA aliased the tensor's buffer (same address), which on
XLA:CPU needs a contiguous, 64-byte aligned tensor. Every other parameter
(misaligned, non-contiguous) is handed to JAX afresh on every call, which copies
it, so the values are always the tensor's current ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import torch

from ._convert import _check_dtype, torch_to_jax
from ._hotpath import NUMPY_DTYPES

__all__ = ["ParamViews"]


def _layout(tensor: torch.Tensor) -> tuple:
    # Everything that, if changed, makes a cached view describe other memory.
    return (
        tensor.data_ptr(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
        tensor.dtype,
        tensor.device,
    )


def _aliased_view(tensor: torch.Tensor) -> jax.Array | None:
    """A ``jax.Array`` that shares ``tensor``'s memory, or None where XLA would copy."""
    if not tensor.is_contiguous() or tensor.is_conj() or tensor.is_neg():
        return None
    array = jnp.from_dlpack(tensor.detach())
    if array.unsafe_buffer_pointer() != tensor.data_ptr():
        return None  # XLA copied (e.g. a misaligned address): a snapshot, not a view
    return array


def _fresh(tensor: torch.Tensor, cpu: bool) -> Any:
    if cpu and tensor.dtype in NUMPY_DTYPES:
        # jit copies a numpy argument it cannot alias: the tensor's values now.
        return tensor.detach().numpy()
    return torch_to_jax(tensor, copy=True)


class ParamViews:
    """Maps a module's parameters to JAX arrays whose values are the tensors' current values.

    Thread-safe in the sense that matters here: entries are replaced whole,
    and a racing rebuild only repeats work.
    """

    def __init__(self, names: Sequence[str]):
        self._names = tuple(names)
        # name -> (layout, aliased jax.Array or None for "copy on every call")
        self._views: dict[str, tuple[tuple, jax.Array | None]] = {}

    def __call__(self, tensors: Sequence[torch.Tensor], cpu: bool) -> dict[str, Any]:
        """Returns ``{name: array}`` for this call.

        Args:
          tensors: the parameters, in the order of ``names``.
          cpu: whether the computation runs on XLA:CPU (numpy arguments are the
            cheapest route there).
        """
        out = {}
        for name, tensor in zip(self._names, tensors):
            layout = _layout(tensor)
            entry = self._views.get(name)
            if entry is None or entry[0] != layout:
                _check_dtype(tensor.dtype)
                entry = (layout, _aliased_view(tensor))
                self._views[name] = entry
            view = entry[1]
            out[name] = view if view is not None else _fresh(tensor, cpu)
        return out

    def aliased(self) -> dict[str, bool]:
        """Which parameters are currently served by a shared view (for tests and debugging)."""
        return {name: entry[1] is not None for name, entry in self._views.items()}

    def clear(self) -> None:
        self._views.clear()
