"""Parameters in ``torch.nn.LSTM``'s names and layout, and their conversion.

A parameter tree is ``{"params": {"weight_ih_l0": [4H, I], "weight_hh_l0":
[4H, H], "bias_ih_l0": [4H], "bias_hh_l0": [4H], ...}}``: exactly the arrays of
``nn.LSTM.state_dict()``, so exchanging weights with torch is a copy of each
array, bit for bit. Nothing here imports torch: a state dict of numpy arrays
(from ``np.load`` of an ``.npz``, or safetensors) converts just as well.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._cell import LayerWeights

_NAME = re.compile(
    r"^(?P<prefix>.*?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)"
    r"_l(?P<layer>\d+)(?P<reverse>_reverse)?$"
)


def param_name(kind: str, layer: int) -> str:
    """torch's name of one LSTM array, e.g. ``param_name("weight_ih", 0)``."""
    return f"{kind}_l{layer}"


def unwrap_params(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """``{"params": inner}`` -> ``inner``; an inner dict is returned as is."""
    if "params" in params and isinstance(params["params"], Mapping):
        return params["params"]
    return params


def _describe(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}{tuple(np.shape(v))}" for k, v in params.items())


def param_shapes(
    input_size: int, hidden_size: int, num_layers: int, bias: bool
) -> dict[str, tuple[int, ...]]:
    """torch's name -> shape of every array of a ``torch.nn.LSTM``, layer by layer."""
    gates = 4 * hidden_size
    shapes = {}
    for layer in range(num_layers):
        in_l = input_size if layer == 0 else hidden_size
        shapes[param_name("weight_ih", layer)] = (gates, in_l)
        shapes[param_name("weight_hh", layer)] = (gates, hidden_size)
        if bias:
            shapes[param_name("bias_ih", layer)] = (gates,)
            shapes[param_name("bias_hh", layer)] = (gates,)
    return shapes


def lstm_dims(params: Mapping[str, Any]) -> tuple[int, int, int, bool]:
    """Validates a parameter dict and returns ``(input_size, hidden_size, num_layers, bias)``.

    Accepts either ``{"params": {...}}`` or the inner dict.
    """
    params = unwrap_params(params)
    layers = 0
    while param_name("weight_ih", layers) in params:
        layers += 1
    if layers == 0:
        raise ValueError(
            "params must hold torch.nn.LSTM arrays named weight_ih_l0, weight_hh_l0, "
            f"[bias_ih_l0, bias_hh_l0], ... Got keys: [{_describe(params)}]."
        )
    has_bias = param_name("bias_ih", 0) in params
    hidden = int(np.shape(params[param_name("weight_hh", 0)])[-1])
    input_size = int(np.shape(params[param_name("weight_ih", 0)])[-1])
    shapes = param_shapes(input_size, hidden, layers, has_bias)
    if set(params) != set(shapes):
        raise ValueError(
            f"params must hold exactly {sorted(shapes)} for a {layers}-layer LSTM "
            f"{'with' if has_bias else 'without'} bias. Got keys: {sorted(params)}."
        )
    for name, shape in shapes.items():
        if tuple(np.shape(params[name])) != shape:
            raise ValueError(
                f"params[{name!r}] must have shape {shape} (hidden_size={hidden}, "
                f"input_size={input_size}). Got {tuple(np.shape(params[name]))}."
            )
    return input_size, hidden, layers, has_bias


def layer_weights(params: Mapping[str, Any], dtype: Any = None) -> list[LayerWeights]:
    """Splits a validated parameter dict into per-layer ``LayerWeights``.

    The two torch biases are summed once here, outside the time loop.
    """
    import jax.numpy as jnp

    params = unwrap_params(params)
    _, _, layers, has_bias = lstm_dims(params)

    def cast(a):
        return jnp.asarray(a, dtype) if dtype is not None else jnp.asarray(a)

    out = []
    for layer in range(layers):
        bias = None
        if has_bias:
            bias = jnp.asarray(params[param_name("bias_ih", layer)]) + jnp.asarray(
                params[param_name("bias_hh", layer)]
            )
        out.append(
            LayerWeights(
                cast(params[param_name("weight_ih", layer)]),
                cast(params[param_name("weight_hh", layer)]),
                bias,
            )
        )
    return out


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
    """Builds ``jaxlstm.LSTM`` parameters from a ``torch.nn.LSTM`` state dict.

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
        shapes. NotImplementedError: bidirectional or projected (``proj_size``)
        LSTMs.
    """
    found: dict[str, dict[str, Any]] = {}
    for key, value in state_dict.items():
        m = _NAME.match(str(key))
        if m is None or (prefix is not None and m["prefix"] != prefix):
            continue
        if m["reverse"]:
            raise NotImplementedError(
                f"state_dict key {key!r}: bidirectional LSTMs are not supported."
            )
        if m["kind"] == "weight_hr":
            raise NotImplementedError(
                f"state_dict key {key!r}: LSTMs with proj_size > 0 are not supported."
            )
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
    lstm_dims(params)
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
    lstm_dims(params)
    return {prefix + name: np.asarray(value) for name, value in params.items()}
