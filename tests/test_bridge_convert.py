"""torch <-> JAX conversion: what is shared (buffer pointers), what is copied, and dtypes.

Sharing is asserted by comparing ``jax.Array.unsafe_buffer_pointer()`` with
``torch.Tensor.data_ptr()``, and by the aliasing it implies (an in-place torch
write shows in the array).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tensordict import NonTensorData, TensorDict

import bridge

# dtypes that both libraries have without x64.
SHARED_DTYPES = [
    (torch.float32, jnp.float32),
    (torch.float16, jnp.float16),
    (torch.bfloat16, jnp.bfloat16),
    (torch.int32, jnp.int32),
    (torch.int16, jnp.int16),
    (torch.int8, jnp.int8),
    (torch.uint8, jnp.uint8),
    (torch.bool, jnp.bool_),
    (torch.complex64, jnp.complex64),
]
X64_DTYPES = [torch.int64, torch.float64, torch.complex128, torch.uint64]


def _sample(dtype: torch.dtype, shape=(3, 4)) -> torch.Tensor:
    values = torch.arange(int(np.prod(shape))).reshape(shape) % 7 - 3
    if dtype == torch.bool:
        return values > 0
    if dtype == torch.uint8:
        return (values + 3).to(dtype)
    return values.to(dtype)


def _shares(array: jax.Array, tensor: torch.Tensor) -> bool:
    return array.unsafe_buffer_pointer() == tensor.data_ptr()


@pytest.mark.parametrize("torch_dtype, jax_dtype", SHARED_DTYPES)
def test_contiguous_tensor_is_shared_with_its_dtype(torch_dtype, jax_dtype):
    tensor = _sample(torch_dtype)
    array = bridge.torch_to_jax(tensor)
    assert array.dtype == jnp.dtype(jax_dtype)
    assert array.shape == tuple(tensor.shape)
    assert _shares(array, tensor)
    if torch_dtype == torch.bfloat16:
        array, tensor = array.astype(jnp.float32), tensor.float()
    np.testing.assert_array_equal(np.asarray(array), tensor.numpy())


def test_shared_leaf_sees_later_in_place_writes():
    # The documented aliasing: the array is the tensor's memory.
    tensor = torch.zeros(2, 3)
    array = bridge.torch_to_jax(tensor)
    tensor.add_(5.0)
    np.testing.assert_array_equal(np.asarray(array), np.full((2, 3), 5.0, np.float32))


def test_zero_dim_and_empty_tensors():
    scalar = torch.tensor(3.5)
    array = bridge.torch_to_jax(scalar)
    assert array.shape == () and float(array) == 3.5 and _shares(array, scalar)
    empty = bridge.torch_to_jax(torch.zeros(0, 3))
    assert empty.shape == (0, 3)


def _base_and_view(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "transposed":
        base = torch.arange(12.0).reshape(3, 4)
        return base, base.t()
    if name == "strided-slice":
        base = torch.arange(12.0).reshape(3, 4)
        return base, base[:, ::2]
    if name == "expanded":
        base = torch.arange(4.0)
        return base, base.expand(3, 4)
    if name == "unaligned-offset":
        base = torch.arange(13.0)
        return base, base[1:]
    if name == "requires-grad":
        base = torch.arange(6.0).requires_grad_()
        return base, base
    if name == "conj-bit":
        base = torch.tensor([1 + 2j, 3 - 1j])
        return base, base.conj()
    raise ValueError(name)


@pytest.mark.parametrize(
    "name",
    ["transposed", "strided-slice", "expanded", "unaligned-offset", "requires-grad", "conj-bit"],
)
def test_unsharable_tensor_is_copied_with_correct_values(name):
    base, tensor = _base_and_view(name)
    expected = tensor.detach().resolve_conj().numpy().copy()
    array = bridge.torch_to_jax(tensor)
    assert not _shares(array, tensor)
    np.testing.assert_array_equal(np.asarray(array), expected)
    with torch.no_grad():
        base.add_(100.0)
    np.testing.assert_array_equal(np.asarray(array), expected)  # a copy: unaffected


def test_copy_true_always_copies():
    tensor = torch.arange(6.0)
    array = bridge.torch_to_jax(tensor, copy=True)
    assert not _shares(array, tensor)
    tensor.add_(1.0)
    np.testing.assert_array_equal(np.asarray(array), np.arange(6.0, dtype=np.float32))


@pytest.mark.parametrize("dtype", X64_DTYPES)
def test_64_bit_dtypes_raise_without_x64_instead_of_narrowing(dtype):
    # jnp.from_dlpack would turn int64 2**40 into int32 0: refuse rather than change values.
    with pytest.raises(TypeError, match="x64"):
        bridge.torch_to_jax(torch.zeros(2, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64, torch.complex128])
def test_64_bit_dtypes_are_kept_and_shared_with_x64(dtype):
    with jax.enable_x64(True):
        tensor = torch.tensor([2**40 + 1, 3]).to(dtype)
        array = bridge.torch_to_jax(tensor)
        assert array.dtype == jnp.dtype(str(dtype).removeprefix("torch."))
        assert _shares(array, tensor)
        np.testing.assert_array_equal(np.asarray(array), tensor.numpy())
        back = bridge.jax_to_torch(array)
        assert back.dtype == dtype and torch.equal(back, tensor)


@pytest.mark.parametrize("torch_dtype, jax_dtype", SHARED_DTYPES)
def test_jax_to_torch_shares_and_round_trips(torch_dtype, jax_dtype):
    tensor = _sample(torch_dtype)
    array = jnp.asarray(bridge.torch_to_jax(tensor, copy=True))
    back = bridge.jax_to_torch(array)
    assert back.dtype == torch_dtype
    assert back.data_ptr() == array.unsafe_buffer_pointer()
    assert torch.equal(back, tensor)


def test_jax_to_torch_rejects_dtypes_torch_lacks_and_non_arrays():
    with pytest.raises(TypeError, match="int4"):
        bridge.jax_to_torch(jnp.zeros(4, jnp.int4))
    with pytest.raises(TypeError, match="jax.Array"):
        bridge.jax_to_torch([1.0, 2.0])
    with pytest.raises(TypeError, match="torch.Tensor"):
        bridge.torch_to_jax(np.zeros(3))


def _nested_td() -> TensorDict:
    return TensorDict(
        {
            "obs": torch.randn(4, 5, 3),
            "done": torch.zeros(4, 5, 1, dtype=torch.bool),
            "next": {"obs": torch.randn(4, 5, 3), "reward": torch.randn(4, 5, 1)},
            ("next", "deep", "count"): torch.arange(20, dtype=torch.int32).reshape(4, 5),
        },
        batch_size=[4, 5],
    )


def test_tensordict_to_pytree_mirrors_nested_keys_and_shares_leaves():
    td = _nested_td()
    tree = bridge.tensordict_to_pytree(td)
    assert set(tree) == {"obs", "done", "next"}
    assert set(tree["next"]) == {"obs", "reward", "deep"}
    for key in td.keys(include_nested=True, leaves_only=True):
        key = key if isinstance(key, tuple) else (key,)
        leaf = tree
        for part in key:
            leaf = leaf[part]
        assert isinstance(leaf, jax.Array)
        assert leaf.dtype == jnp.dtype(str(td[key].dtype).removeprefix("torch."))
        assert _shares(leaf, td[key])
        np.testing.assert_array_equal(np.asarray(leaf), td[key].numpy())
    assert tree["done"].dtype == jnp.bool_


def test_tensordict_to_pytree_copy_copies_every_leaf():
    td = _nested_td()
    tree = bridge.tensordict_to_pytree(td, copy=True)
    assert not _shares(tree["obs"], td["obs"])
    assert not _shares(tree["next"]["deep"]["count"], td["next", "deep", "count"])
    td["obs"].add_(1.0)
    assert not np.array_equal(np.asarray(tree["obs"]), td["obs"].numpy())


def test_tensordict_to_pytree_names_the_key_it_cannot_convert():
    td = _nested_td()
    td["next", "deep", "steps"] = torch.zeros(4, 5, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"\('next', 'deep', 'steps'\).*x64"):
        bridge.tensordict_to_pytree(td)
    td = TensorDict({"label": NonTensorData("hi", batch_size=[2])}, [2])
    with pytest.raises(TypeError, match="'label'"):
        bridge.tensordict_to_pytree(td)


def test_pytree_to_tensordict_shares_and_round_trips():
    td = _nested_td()
    tree = jax.tree.map(jnp.copy, bridge.tensordict_to_pytree(td))
    back = bridge.pytree_to_tensordict(tree, batch_size=[4, 5])
    assert back.batch_size == torch.Size([4, 5])
    assert back["next", "deep", "count"].dtype == torch.int32
    assert back["done"].dtype == torch.bool
    assert back["obs"].data_ptr() == tree["obs"].unsafe_buffer_pointer()
    assert (back == td).all()


def test_pytree_to_tensordict_accepts_numpy_and_numbers_and_checks_batch():
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": jnp.ones(2, jnp.bool_)}}
    td = bridge.pytree_to_tensordict(tree, [2], device="cpu")
    assert td.device == torch.device("cpu")
    assert td["a"].data_ptr() == tree["a"].ctypes.data  # writable numpy: shared
    assert td["b", "c"].dtype == torch.bool
    with pytest.raises(TypeError, match=r"\('b', 'd'\)"):
        bridge.pytree_to_tensordict({"b": {"d": "text"}}, [])
    with pytest.raises(RuntimeError):
        bridge.pytree_to_tensordict(tree, [3])
