"""jaxlstm: a JAX/Flax LSTM and GRU with torchrl ``LSTMModule``/``GRUModule`` semantics.

Pure JAX: this package never imports torch. The torch side lives in ``bridge``.

The design, in the order a call goes through it:

- ``_cell``: a cell is a parameter table, a carry, one step and its
  hand-written VJP (``LSTM_CELL`` and ``GRU_CELL``; ``lstm_cell`` and
  ``gru_cell`` run one step).
- ``_prepare``: checks and normalises a call's inputs once per trace (one dtype
  rule; ``is_init`` -> bool ``[T, N]``; an explicit reset target).
- ``_loop``: the cell-agnostic loop: layers over time, resets as one ``where``,
  dropout, remat, unroll, per-step states, and the custom backward.
- ``_bidir``: bidirectional layers on that loop (the reverse direction runs
  over flipped time with resets at trajectory ends).
- ``_scan``: the jitted core, ``lstm_scan`` and ``gru_scan``; ``_module``: the
  Flax ``LSTM`` and ``GRU`` (one module class, two cells); ``_torchrl``:
  torchrl's ``LSTMModule``/``GRUModule`` semantics (``torchrl_apply``,
  ``torchrl_gru_apply``).
- ``_params``: the parameter table (``lstm_param_shapes``) and the converters.
"""

from ._cell import GRU_CELL as GRU_CELL
from ._cell import LSTM_CELL as LSTM_CELL
from ._cell import GRUWeights as GRUWeights
from ._cell import LayerWeights as LayerWeights
from ._cell import gru_cell as gru_cell
from ._cell import lstm_cell as lstm_cell
from ._cell import lstm_projected_cell as lstm_projected_cell
from ._module import GRU as GRU
from ._module import LSTM as LSTM
from ._params import param_shapes as lstm_param_shapes
from ._params import params_from_torch_state_dict as params_from_torch_state_dict
from ._params import params_to_torch_state_dict as params_to_torch_state_dict
from ._scan import gru_scan as gru_scan
from ._scan import lstm_scan as lstm_scan
from ._state import LSTMState as LSTMState
from ._torchrl import torchrl_apply as torchrl_apply
from ._torchrl import torchrl_gru_apply as torchrl_gru_apply

# Training helpers: R2D2 burn-in and truncated-BPTT chunks.
from ._training import Chunks as Chunks
from ._training import lstm_burn_in as lstm_burn_in
from ._training import split_chunks as split_chunks

__version__ = "0.1.0"
