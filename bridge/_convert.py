"""torch tensors <-> ``jax.Array``, and TensorDicts <-> nested dicts of arrays.

Conversion goes through DLPack, so a leaf is shared, not copied, wherever both
libraries can describe the same memory:

* torch -> JAX (``torch_to_jax``): a contiguous tensor whose dtype JAX can hold
  is shared. Everything else is copied, never returned wrong: non-contiguous
  strides (``t.contiguous()`` first), a data pointer XLA finds misaligned (JAX
  copies it), a tensor that requires grad (it is detached and copied: such
  tensors are usually parameters that an optimizer updates in place, and a
  ``jax.Array`` must not change under JAX), and tensors with a lazy conjugate or
  negative bit. ``copy=True`` always copies.
* JAX -> torch (``jax_to_torch``): always shared.

Aliasing: a shared leaf and the tensor are one buffer. A later in-place write
on the torch side (``t.add_(1)``, ``t[0] = 5``, an optimizer step) is visible
in the ``jax.Array``, although JAX treats arrays as immutable; and an in-place
write on a tensor returned by ``jax_to_torch`` changes the ``jax.Array`` it came
from. Pass ``copy=True`` (or ``.clone()`` the tensor) when either side will be
written while the other is still in use. The shared buffer stays alive as long
as either side holds it.

dtypes: every dtype both libraries have keeps its dtype, ``bool`` included.
JAX without ``jax_enable_x64`` has no 64-bit types and its ``from_dlpack``
would silently narrow them (``int64`` ``2**40`` arrives as ``int32`` ``0``), so
``int64``, ``uint64``, ``float64`` and ``complex128`` tensors raise a
``TypeError`` instead: cast them explicitly, or enable x64.

On a GPU the arrays stay on the device (DLPack moves no data). When torch and
JAX share one GPU, start the process with ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
so that JAX does not reserve most of the GPU memory that torch also needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

__all__ = ["jax_to_torch", "pytree_to_tensordict", "tensordict_to_pytree", "torch_to_jax"]

# torch dtypes that exist in JAX only with x64 enabled.
_X64_DTYPES = frozenset({torch.int64, torch.uint64, torch.float64, torch.complex128})

_TORCH_TO_JAX_DTYPE = {
    torch.bool: jnp.bool_,
    torch.uint8: jnp.uint8,
    torch.uint16: jnp.uint16,
    torch.uint32: jnp.uint32,
    torch.uint64: jnp.uint64,
    torch.int8: jnp.int8,
    torch.int16: jnp.int16,
    torch.int32: jnp.int32,
    torch.int64: jnp.int64,
    torch.float16: jnp.float16,
    torch.bfloat16: jnp.bfloat16,
    torch.float32: jnp.float32,
    torch.float64: jnp.float64,
    torch.complex64: jnp.complex64,
    torch.complex128: jnp.complex128,
    torch.float8_e4m3fn: jnp.float8_e4m3fn,
    torch.float8_e5m2: jnp.float8_e5m2,
}


_JAX_DTYPES = frozenset(jnp.dtype(d) for d in _TORCH_TO_JAX_DTYPE.values())


def _x64_enabled() -> bool:
    return bool(jax.config.jax_enable_x64)


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in _TORCH_TO_JAX_DTYPE:
        raise TypeError(f"torch dtype {dtype} has no JAX equivalent.")
    if dtype in _X64_DTYPES and not _x64_enabled():
        raise TypeError(
            f"a {dtype} tensor would be silently narrowed to 32 bits: JAX's x64 mode "
            "is disabled. Cast it explicitly (e.g. .to(torch.int32) or .float()) "
            "or enable x64 with jax.config.update('jax_enable_x64', True)."
        )


def torch_dtype_to_jax(dtype: torch.dtype) -> jnp.dtype:
    """The JAX dtype of a torch dtype (checked as ``torch_to_jax`` checks it)."""
    _check_dtype(dtype)
    return jnp.dtype(_TORCH_TO_JAX_DTYPE[dtype])


def torch_to_jax(tensor: torch.Tensor, *, copy: bool = False) -> jax.Array:
    """Returns a ``jax.Array`` with the values, shape and dtype of ``tensor``.

    Args:
      tensor: a dense torch tensor ``[*S]`` of any dtype JAX shares (see the
        module docstring), on a device JAX can reach (CPU, or the GPU when JAX
        has its GPU backend).
      copy: always copy. By default a contiguous tensor that does not require
        grad is shared through DLPack: the array is a view of the tensor's
        memory, and in-place writes to the tensor show in the array.

    Returns:
      ``jax.Array [*S]`` on the tensor's device, with the same dtype.

    Raises:
      TypeError: not a dense tensor, a dtype JAX lacks, or a 64-bit dtype while
        JAX's x64 mode is disabled.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor. Got {type(tensor).__name__}.")
    if tensor.layout != torch.strided:
        raise TypeError(f"only dense (strided) tensors convert. Got layout={tensor.layout}.")
    _check_dtype(tensor.dtype)
    if tensor.device.type == "meta":
        raise ValueError(
            f"a tensor on the 'meta' device has no data to convert (shape {tuple(tensor.shape)})."
        )
    if tensor.requires_grad:
        tensor = tensor.detach()
        copy = True
    if tensor.is_conj() or tensor.is_neg():
        tensor = tensor.resolve_conj().resolve_neg()
    elif not tensor.is_contiguous():
        # XLA reads only dense layouts; a fresh contiguous tensor is already a
        # private copy, so share that one.
        tensor = tensor.contiguous()
    elif copy:
        # copy inside torch so that the dtype check below also covers copies.
        tensor = tensor.clone()
    array = jnp.from_dlpack(tensor)
    expected = jnp.dtype(_TORCH_TO_JAX_DTYPE[tensor.dtype])
    if array.dtype != expected:  # pragma: no cover - guards future JAX changes
        raise TypeError(f"JAX converted a {tensor.dtype} tensor to {array.dtype}.")
    return array


def jax_to_torch(array: jax.Array) -> torch.Tensor:
    """Returns a torch tensor sharing the memory of ``array`` (through DLPack).

    Args:
      array: a ``jax.Array [*S]`` on one device (or a numpy array).

    Returns:
      ``torch.Tensor [*S]`` with the same dtype, on the array's device. Writing
      to it in place changes ``array``: ``.clone()`` it first if ``array`` is
      still in use.

    Raises:
      TypeError: a dtype torch lacks (e.g. ``int4``), or not an array.
    """
    if isinstance(array, np.ndarray):
        return torch.from_numpy(array) if array.flags.writeable else torch.from_numpy(array.copy())
    if not isinstance(array, jax.Array):
        raise TypeError(f"expected a jax.Array. Got {type(array).__name__}.")
    if array.dtype not in _JAX_DTYPES:
        raise TypeError(f"a {array.dtype} jax.Array has no torch equivalent.")
    return torch.from_dlpack(array)


def tensordict_to_pytree(
    td: TensorDictBase, *, copy: bool = False, narrow_int64: bool = True
) -> dict[str, Any]:
    """Converts a TensorDict into a nested dict of ``jax.Array`` leaves.

    Nested TensorDicts become nested dicts, so ``td["next", "obs"]`` is
    ``tree["next"]["obs"]``. Each leaf converts as in ``torch_to_jax``: shared
    with the tensor where possible (see the module docstring for the aliasing
    this implies), copied otherwise, with its dtype kept. The batch size is not
    stored: pass it back to ``pytree_to_tensordict``.

    Integer leaves of 64 bits (torchrl collectors write ``int64`` step counts,
    trajectory ids and discrete actions) are narrowed when JAX's x64 mode is
    off, but only after checking that every value fits: ``int64`` becomes
    ``int32`` and ``uint64`` ``uint32``, as copies with equal values. A value
    that does not fit raises, naming the key. ``pytree_to_tensordict(...,
    dtypes=td)`` restores the original dtypes. Float64 and complex128 leaves
    are never narrowed (that would change values): they raise without x64.

    Args:
      td: a TensorDict (or any TensorDictBase) of dense tensors ``[*batch, ...]``.
      copy: copy every leaf.
      narrow_int64: narrow 64-bit integer leaves whose values fit in 32 bits
        (default). False: they raise unless x64 is on, as in ``torch_to_jax``.

    Returns:
      ``{key: jax.Array | dict}`` with the tensordict's keys.

    Raises:
      TypeError: a leaf that does not convert (non-tensor data, a dtype JAX
        lacks, float64/complex128 without x64); the message names its key.
      OverflowError: a 64-bit integer leaf holding a value outside the 32-bit
        range, without x64; the message names the key and the offending range.
    """
    if not isinstance(td, TensorDictBase):
        raise TypeError(f"expected a TensorDict. Got {type(td).__name__}.")

    def convert(node: TensorDictBase, prefix: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            if isinstance(value, TensorDictBase):
                out[key] = convert(value, prefix + (key,))
                continue
            try:
                if not isinstance(value, torch.Tensor):
                    raise TypeError(f"only tensor leaves convert. Got {type(value).__name__}.")
                if narrow_int64 and value.dtype in _NARROWER and not _x64_enabled():
                    value = _narrow(value, _key_name(prefix + (key,)))
                out[key] = torch_to_jax(value, copy=copy)
            except (TypeError, ValueError) as err:
                raise type(err)(f"key {_key_name(prefix + (key,))}: {err}") from None
        return out

    return convert(td, ())


# 64-bit integer dtypes -> the 32-bit dtype they are narrowed to (when every value fits).
_NARROWER = {torch.int64: torch.int32, torch.uint64: torch.uint32}


def _narrow(tensor: torch.Tensor, name: str) -> torch.Tensor:
    narrow = _NARROWER[tensor.dtype]
    # torch has few uint64 kernels; its bits read as int64 show every value
    # >= 2**63 as negative, which the range check below then rejects too.
    values = tensor.detach().view(torch.int64)
    if values.numel():
        info = torch.iinfo(narrow)
        low, high = int(values.min()), int(values.max())
        if low < info.min or high > info.max:
            shown = f"[{low}, {high}]" if tensor.dtype == torch.int64 else "values >= 2**32"
            raise OverflowError(
                f"key {name}: {tensor.dtype} values must fit in {narrow} "
                f"([{info.min}, {info.max}]) to be narrowed while JAX's x64 mode is off. "
                f"Got {shown}. Enable x64 (jax.config.update('jax_enable_x64', True)) "
                "to keep 64 bits."
            )
    return values.to(narrow)


def _key_name(key: tuple[str, ...]) -> str:
    return repr(key[0]) if len(key) == 1 else repr(key)


def _leaf_to_torch(value: Any) -> torch.Tensor:
    if isinstance(value, (jax.Array, np.ndarray)):
        return jax_to_torch(value)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (bool, int, float, complex, np.generic)):
        return torch.as_tensor(value)
    raise TypeError(
        f"leaves must be jax.Arrays (or numpy arrays, tensors, numbers). "
        f"Got {type(value).__name__}."
    )


def pytree_to_tensordict(
    tree: Mapping[str, Any],
    batch_size: Any,
    device: Any = None,
    *,
    dtypes: TensorDictBase | Mapping[Any, torch.dtype] | None = None,
) -> TensorDict:
    """Converts a nested dict of arrays into a TensorDict (the inverse of ``tensordict_to_pytree``).

    ``jax.Array`` leaves are shared through DLPack (``jax_to_torch``); numpy
    leaves are shared with ``torch.from_numpy`` (copied when read-only).

    Args:
      tree: ``{key: array | dict}``; every leaf ``[*batch_size, ...]``.
      batch_size: the TensorDict's batch size, e.g. ``[B, T]``.
      device: the TensorDict's device; None keeps each leaf where it is (a leaf
        on another device is copied there).
      dtypes: the dtypes to give the leaves back, e.g. the TensorDict the tree
        came from (its leaves' dtypes are used), or ``{key: torch.dtype}`` with
        nested keys as tuples (``("collector", "traj_ids")``). A leaf whose
        dtype differs is cast (a copy); keys the tree lacks are ignored. This
        undoes the int64 -> int32 narrowing of ``tensordict_to_pytree``.

    Returns:
      A TensorDict whose nested keys mirror ``tree``.

    Raises:
      TypeError: a leaf that is not an array (the message names its key), or
        ``dtypes`` that is neither a TensorDict nor a mapping of dtypes.
      RuntimeError: from TensorDict, for leaves whose leading dims differ from
        ``batch_size``.
    """
    wanted = _dtype_map(dtypes)

    def convert(node: Mapping[str, Any], prefix: tuple[str, ...]) -> dict[str, Any]:
        out = {}
        for key, value in node.items():
            if isinstance(value, Mapping):
                out[key] = convert(value, prefix + (key,))
                continue
            try:
                leaf = _leaf_to_torch(value)
            except TypeError as err:
                raise TypeError(f"key {_key_name(prefix + (key,))}: {err}") from None
            dtype = wanted.get(prefix + (key,))
            out[key] = leaf if dtype is None or dtype == leaf.dtype else leaf.to(dtype)
        return out

    return TensorDict(convert(tree, ()), batch_size=batch_size, device=device)


def _dtype_map(dtypes: Any) -> dict[tuple[str, ...], torch.dtype]:
    """``{nested key as a tuple: dtype}`` from a TensorDict or a mapping of dtypes."""
    if dtypes is None:
        return {}
    if isinstance(dtypes, TensorDictBase):
        items = dtypes.items(include_nested=True, leaves_only=True)
        pairs = [(key, value.dtype) for key, value in items if isinstance(value, torch.Tensor)]
    elif isinstance(dtypes, Mapping):
        pairs = list(dtypes.items())
    else:
        raise TypeError(
            f"dtypes must be a TensorDict or a mapping {{key: torch.dtype}}. "
            f"Got {type(dtypes).__name__}."
        )
    out = {}
    for key, dtype in pairs:
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtypes[{key!r}] must be a torch.dtype. Got {dtype!r}.")
        out[(key,) if isinstance(key, str) else tuple(key)] = dtype
    return out
