"""Parameters in ``torch.nn.LSTM``'s / ``torch.nn.GRU``'s names and layout, and their conversion.

A parameter tree is ``{"params": {"weight_ih_l0": [4H, I], "weight_hh_l0":
[4H, H], "bias_ih_l0": [4H], "bias_hh_l0": [4H], ...}}``: exactly the arrays of
``nn.LSTM.state_dict()``, so exchanging weights with torch is a copy of each
array, bit for bit. Nothing here imports torch: a state dict of numpy arrays
(from ``np.load`` of an ``.npz``, or safetensors) converts just as well.
A GRU's tree has the same names with 3 gates (``[3H, I]``, ...); the
converters tell the two apart by the shapes (``infer_cell``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from ._cell import GRU_CELL, LSTM_CELL, lstm_projected_cell

_NAME = re.compile(
    r"^(?P<prefix>.*?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)"
    r"_l(?P<layer>\d+)(?P<reverse>_reverse)?$"
)


def param_name(kind: str, layer: int) -> str:
    """torch's name of one layer's array, e.g. ``param_name("weight_ih", 0)``."""
    return f"{kind}_l{layer}"


def unwrap_params(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """``{"params": inner}`` -> ``inner``; an inner dict is returned as is."""
    if "params" in params and isinstance(params["params"], Mapping):
        return params["params"]
    return params


def _describe(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}{tuple(np.shape(v))}" for k, v in params.items())


def param_shapes(
    input_size: int,
    hidden_size: int,
    num_layers: int,
    bias: bool,
    *,
    cell: Any = LSTM_CELL,
    bidirectional: bool = False,
) -> dict[str, tuple[int, ...]]:
    """The parameter table: torch's name -> shape of every array, layer by layer.

    Names and order are ``torch.nn.LSTM``'s (``weight_ih_l0, weight_hh_l0,
    bias_ih_l0, bias_hh_l0, weight_ih_l1, ...``). The module declares its
    parameters from this table, params are validated against it, and the
    bridge and the benchmarks take their name lists from it. Bidirectional
    layers add torch's ``_reverse`` arrays after each layer's forward ones,
    and layer ``k + 1`` reads both directions' outputs (``2 * W_y`` features).
    """
    directions = ("", "_reverse") if bidirectional else ("",)
    shapes = {}
    for layer in range(num_layers):
        in_l = input_size if layer == 0 else len(directions) * cell.carry_widths(hidden_size)[0]
        for suffix in directions:
            for kind, shape in cell.layer_param_shapes(in_l, hidden_size, bias).items():
                shapes[param_name(kind, layer) + suffix] = shape
    return shapes


class ParamSpec(NamedTuple):
    """What a validated parameter dict describes (static)."""

    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    dtype: Any  # the parameters' common dtype (jnp.result_type of all arrays)
    directions: int = 1  # 2 for bidirectional layers (torch's _reverse arrays)


def check_params(params: Mapping[str, Any], *, cell: Any = LSTM_CELL) -> ParamSpec:
    """Validates a parameter dict against the table; returns what it describes.

    Raises:
      ValueError: missing or extra arrays, wrong shapes, 0-d arrays, H = 0.
      TypeError: non-floating (integer, bool, complex) arrays.
    """
    params = unwrap_params(params)
    layers = 0
    while param_name("weight_ih", layers) in params:
        layers += 1
    first_hh = param_name("weight_hh", 0)
    if layers == 0 or first_hh not in params:
        raise ValueError(
            "params must hold torch.nn.LSTM arrays named weight_ih_l0, weight_hh_l0, "
            f"[bias_ih_l0, bias_hh_l0], ... Got keys: [{_describe(params)}]."
        )
    for name, value in params.items():
        if np.ndim(value) == 0:
            raise ValueError(
                f"params[{name!r}] must be an array of torch.nn.LSTM's shape. Got a 0-d value."
            )
        dtype = jnp.result_type(value)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"params[{name!r}] must have a real floating dtype (float32, bfloat16, ...). "
                f"Got dtype={dtype}."
            )
    hidden = int(np.shape(params[first_hh])[-1])
    first_hr = param_name("weight_hr", 0)
    if first_hr in params and np.ndim(params[first_hr]) == 2:
        # A projected LSTM: weight_hh is [4H, P]; H is weight_hr's [P, H] last axis.
        hidden = int(np.shape(params[first_hr])[-1])
    if hidden <= 0:
        raise ValueError(
            f"params[{first_hh!r}] has hidden_size={hidden} (shape "
            f"{tuple(np.shape(params[first_hh]))}); hidden_size must be >= 1."
        )
    has_bias = param_name("bias_ih", 0) in params
    bidirectional = param_name("weight_ih", 0) + "_reverse" in params
    input_size = int(np.shape(params[param_name("weight_ih", 0)])[-1])
    shapes = param_shapes(
        input_size, hidden, layers, has_bias, cell=cell, bidirectional=bidirectional
    )
    if set(params) != set(shapes):
        raise ValueError(
            f"params must hold exactly {sorted(shapes)} for a {layers}-layer {cell.name.upper()} "
            f"{'with' if has_bias else 'without'} bias. Got keys: {sorted(params)}."
        )
    for name, shape in shapes.items():
        if tuple(np.shape(params[name])) != shape:
            raise ValueError(
                f"params[{name!r}] must have shape {shape} (hidden_size={hidden}, "
                f"input_size={input_size}). Got {tuple(np.shape(params[name]))}."
            )
    dtype = jnp.result_type(*(params[name] for name in shapes))
    return ParamSpec(input_size, hidden, layers, has_bias, dtype, 2 if bidirectional else 1)


def infer_cell(params: Mapping[str, Any]) -> Any:
    """The cell whose table a parameter dict follows, from its shapes alone.

    ``weight_hh_l0`` is ``[gates * H, H]``: 4 gates is an LSTM, 3 a GRU.
    Anything else is left to ``check_params`` (as an LSTM) to report.
    """
    params = unwrap_params(params)
    w_hh = params.get(param_name("weight_hh", 0))
    if w_hh is not None and np.ndim(w_hh) == 2:
        rows, hidden = np.shape(w_hh)
        if hidden > 0 and rows == GRU_CELL.gates * hidden:
            return GRU_CELL
    return lstm_cell_for(params)


def lstm_cell_for(params: Mapping[str, Any]) -> Any:
    """The LSTM cell of a parameter dict: projected when it holds ``weight_hr_l0 [P, H]``."""
    w_hr = unwrap_params(params).get(param_name("weight_hr", 0))
    if w_hr is not None and np.ndim(w_hr) == 2 and np.shape(w_hr)[0] > 0:
        return lstm_projected_cell(int(np.shape(w_hr)[0]))
    return LSTM_CELL


def lstm_dims(params: Mapping[str, Any]) -> tuple[int, int, int, bool]:
    """``(input_size, hidden_size, num_layers, bias)`` of a validated parameter dict."""
    spec = check_params(params)
    return spec.input_size, spec.hidden_size, spec.num_layers, spec.bias


def layer_weights(
    params: Mapping[str, Any], spec: ParamSpec, *, cell: Any = LSTM_CELL
) -> tuple[Any, ...]:
    """Splits a validated parameter dict into the cell's per-layer weights (not cast).

    Bidirectional: per layer, a ``(forward, reverse)`` pair.
    """
    params = unwrap_params(params)

    def one(k, suffix):
        names = {kind: param_name(kind, k) + suffix for kind in cell.kinds}
        return cell.weights(
            {kind: jnp.asarray(params[n]) for kind, n in names.items() if n in params}, spec.bias
        )

    if spec.directions == 2:
        return tuple((one(k, ""), one(k, "_reverse")) for k in range(spec.num_layers))
    return tuple(one(k, "") for k in range(spec.num_layers))


def _to_numpy(value: Any) -> np.ndarray:
    # torch tensors are accepted without importing torch: detach them first,
    # since np.asarray refuses a tensor that requires grad.
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if hasattr(value, "numpy"):
            return value.numpy()
    return np.asarray(value)


def params_from_torch_state_dict(
    state_dict: Mapping[str, Any], prefix: str | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Builds ``jaxlstm.LSTM`` / ``jaxlstm.GRU`` parameters from a torch state dict.

    The cell is recognised from the shapes (``weight_hh_l0`` ``[4H, H]``: LSTM,
    ``[3H, H]``: GRU).

    Args:
      state_dict: arrays keyed by torch's names (``weight_ih_l0``, ...), possibly
        under a prefix (``"lstm."`` for torchrl's ``LSTMModule``, or deeper in a
        policy's state dict). Values may be numpy arrays, anything
        ``np.asarray`` accepts, or torch tensors (no torch import is needed).
        Keys that are not LSTM arrays are ignored.
      prefix: the prefix of the LSTM's keys. ``None`` finds it, and raises if
        the dict holds the arrays of more than one LSTM.

    Returns:
      ``{"params": {name: np.ndarray}}``, to pass straight to ``LSTM.apply``.
      Arrays keep their dtype and values bit for bit.

    Raises:
      ValueError: no LSTM arrays, several candidate prefixes, or inconsistent
        shapes.
    """
    found: dict[str, dict[str, Any]] = {}
    for key, value in state_dict.items():
        m = _NAME.match(str(key))
        if m is None or (prefix is not None and m["prefix"] != prefix):
            continue
        found.setdefault(m["prefix"], {})[key[len(m["prefix"]) :]] = value
    if not found:
        where = f" under prefix {prefix!r}" if prefix is not None else ""
        raise ValueError(
            f"state_dict holds no torch.nn.LSTM arrays (weight_ih_l0, ...){where}. "
            f"Got keys: {list(state_dict)[:20]}."
        )
    if len(found) > 1:
        raise ValueError(
            "state_dict holds the arrays of several LSTMs, under prefixes "
            f"{sorted(found)}; pass prefix= to choose one."
        )
    (arrays,) = found.values()
    params = {name: _to_numpy(value) for name, value in arrays.items()}
    check_params(params, cell=infer_cell(params))
    return {"params": params}


def params_to_torch_state_dict(
    params: Mapping[str, Any], prefix: str = ""
) -> dict[str, np.ndarray]:
    """The inverse of ``params_from_torch_state_dict``.

    Args:
      params: ``{"params": {...}}`` as returned by ``LSTM.init`` (or the inner
        dict).
      prefix: prepended to each name, e.g. ``"lstm."`` for torchrl's
        ``LSTMModule``.

    Returns:
      ``{prefix + name: np.ndarray}``; ``torch.from_numpy`` of each value loads
      into ``nn.LSTM.load_state_dict`` bit for bit.
    """
    params = unwrap_params(params)
    check_params(params, cell=infer_cell(params))
    return {prefix + name: np.asarray(value) for name, value in params.items()}
