"""jaxlstm: a JAX/Flax LSTM with torchrl ``LSTMModule`` semantics.

Pure JAX: this package never imports torch. The torch side lives in ``bridge``.
"""

from ._cell import LayerWeights as LayerWeights
from ._cell import lstm_cell as lstm_cell
from ._module import LSTM as LSTM
from ._params import params_from_torch_state_dict as params_from_torch_state_dict
from ._params import params_to_torch_state_dict as params_to_torch_state_dict
from ._scan import lstm_scan as lstm_scan
from ._state import LSTMState as LSTMState

# Training helpers: R2D2 burn-in and truncated-BPTT chunks.
from ._training import Chunks as Chunks
from ._training import lstm_burn_in as lstm_burn_in
from ._training import split_chunks as split_chunks

__version__ = "0.1.0"
