"""bridge: the torch side of jaxlstm.

``LSTMModule`` and ``GRUModule`` stand in for ``torchrl.modules.LSTMModule`` and
``GRUModule`` (same constructor, keys, outputs, ``state_dict`` and gradients) and
compute with ``jaxlstm``; the two are one class that differs by a table.
The conversion helpers move tensors and TensorDicts to and from JAX, sharing
memory through DLPack where possible (see ``bridge._convert`` for the aliasing
rules). ``DtypeError`` (a ``TypeError`` and a ``ValueError``) is raised for
inputs whose dtype does not match.

Imports torch, tensordict and jaxlstm; never torchrl (``make_tensordict_primer``
imports it when called).
"""

from ._buckets import time_bucket as time_bucket
from ._convert import jax_to_torch as jax_to_torch
from ._convert import pytree_to_tensordict as pytree_to_tensordict
from ._convert import tensordict_to_pytree as tensordict_to_pytree
from ._convert import torch_to_jax as torch_to_jax
from ._errors import DtypeError as DtypeError
from ._module import GRUModule as GRUModule
from ._module import LSTMModule as LSTMModule
