"""The torch implementations: raw ``nn.LSTM``, torchrl's ``LSTMModule`` and our bridge.

torchrl and the bridge are called as in an RL loop: recurrent mode on a
``[B, T]`` TensorDict for training and inference, and one ``[B]``
TensorDict in, one out, per rollout step.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ._common import Bench, NotAvailable
from ._workloads import Data, Workload

IN_KEY, OUT_KEY = "obs", "embed"
H_KEY, C_KEY = "recurrent_state_h", "recurrent_state_c"


def _load(lstm: torch.nn.LSTM, weights: dict) -> None:
    lstm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})


def _train(forward: Callable[[], torch.Tensor], params: list, cotangent: torch.Tensor) -> Callable:
    def run():
        for p in params:
            p.grad = None
        forward().backward(cotangent)

    return run


def build_torch_lstm(wl: Workload, data: Data, weights: dict) -> Bench:
    """Raw ``torch.nn.LSTM`` (batch_first), without resets: one call over the sequence."""
    lstm = torch.nn.LSTM(wl.input_size, wl.hidden_size, wl.num_layers, batch_first=True)
    _load(lstm, weights)
    x = torch.from_numpy(data.x)
    zeros = torch.zeros(wl.num_layers, wl.batch, wl.hidden_size)
    if wl.kind == "step":
        x = x[:, None]
        carry = [(zeros, zeros)]

        def run():
            with torch.no_grad():
                y, carry[0] = lstm(x, carry[0])
            return y

        return Bench(run, resets=False)
    if wl.kind == "train":
        ct = torch.from_numpy(data.cotangent)
        return Bench(
            _train(lambda: lstm(x, (zeros, zeros))[0], list(lstm.parameters()), ct), resets=False
        )

    def infer():
        with torch.no_grad():
            return lstm(x, (zeros, zeros))[0]

    return Bench(infer, resets=False)


def _tensordict_runner(module: Any, wl: Workload, data: Data, recurrent_cm: Callable) -> Bench:
    """Drives a torchrl-style ``LSTMModule`` (torchrl's or the bridge's) on TensorDicts."""
    from tensordict import TensorDict

    shape = (wl.batch, wl.num_layers, wl.hidden_size)
    if wl.kind == "step":
        x = torch.from_numpy(data.x)
        is_init = torch.from_numpy(data.is_init)[:, None]
        carry = [torch.zeros(shape), torch.zeros(shape)]

        def run():
            # A rollout step: a fresh [B] TensorDict in, the next state read back out.
            td = TensorDict(
                {IN_KEY: x, "is_init": is_init, H_KEY: carry[0], C_KEY: carry[1]},
                batch_size=[wl.batch],
            )
            with torch.no_grad():
                out = module(td)
            carry[0] = out["next", H_KEY]
            carry[1] = out["next", C_KEY]
            return out[OUT_KEY]

        return Bench(run)

    steps = (wl.batch, wl.steps)
    td = TensorDict(
        {
            IN_KEY: torch.from_numpy(data.x),
            "is_init": torch.from_numpy(data.is_init)[..., None],
            H_KEY: torch.zeros(steps + shape[1:]),
            C_KEY: torch.zeros(steps + shape[1:]),
        },
        batch_size=list(steps),
    )
    if wl.kind == "train":
        ct = torch.from_numpy(data.cotangent)

        def forward():
            with recurrent_cm():
                return module(td)[OUT_KEY]

        return Bench(_train(forward, list(module.parameters()), ct))

    def infer():
        with torch.no_grad(), recurrent_cm():
            return module(td)[OUT_KEY]

    return Bench(infer)


def _torchrl_builder(**kwargs: Any) -> Callable[[Workload, Data, dict], Bench]:
    def build(wl: Workload, data: Data, weights: dict) -> Bench:
        from torchrl.modules import LSTMModule, set_recurrent_mode

        module = LSTMModule(
            input_size=wl.input_size,
            hidden_size=wl.hidden_size,
            num_layers=wl.num_layers,
            in_key=IN_KEY,
            out_key=OUT_KEY,
            **kwargs,
        )
        _load(module.lstm, weights)
        bench = _tensordict_runner(module, wl, data, lambda: set_recurrent_mode(True))
        if wl.kind == "step" and kwargs.get("recurrent_backend") == "scan":
            bench.note = "step mode ignores recurrent_backend: same path as pad"
        return bench

    return build


build_torchrl_pad = _torchrl_builder(recurrent_backend="pad")
build_torchrl_scan = _torchrl_builder(recurrent_backend="scan")
build_torchrl_python = _torchrl_builder(python_based=True)


def bridge_module_class() -> Any:
    """``bridge.LSTMModule``, or ``NotAvailable`` while the bridge is not written yet."""
    try:
        bridge = importlib.import_module("bridge")
    except ImportError as e:  # pragma: no cover - the package ships with jaxlstm
        raise NotAvailable(f"bridge does not import: {e}") from e
    cls = getattr(bridge, "LSTMModule", None)
    if cls is None:
        raise NotAvailable("not available: bridge.LSTMModule does not exist yet")
    return cls


def build_bridge(wl: Workload, data: Data, weights: dict) -> Bench:
    """``bridge.LSTMModule``: torchrl's interface, TensorDicts in and out, the JAX core inside."""
    from torchrl.modules import set_recurrent_mode

    cls = bridge_module_class()
    module = cls(
        input_size=wl.input_size,
        hidden_size=wl.hidden_size,
        num_layers=wl.num_layers,
        in_key=IN_KEY,
        out_key=OUT_KEY,
    )
    _load_bridge(module, weights)
    return _tensordict_runner(module, wl, data, lambda: set_recurrent_mode(True))


def _load_bridge(module: Any, weights: dict) -> None:
    # The bridge mirrors torchrl: its state dict uses torch's names under "lstm.".
    sd = module.state_dict()
    new = {}
    for key in sd:
        name = key.rsplit(".", 1)[-1]
        if name in weights:
            new[key] = torch.from_numpy(np.array(weights[name]))
    if len(new) != len(weights):
        raise NotAvailable(
            f"cannot map torch LSTM weights onto bridge.LSTMModule's state dict keys {list(sd)}"
        )
    module.load_state_dict(new, strict=False)


def torch_matmul(n: int) -> Callable[[], Any]:
    """One float32 ``[n, n] @ [n, n]`` in torch, for the peak matmul rate."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    return lambda: torch.matmul(a, b)


def saved_for_backward_bytes(wl: Workload, data: Data, weights: dict) -> int:
    """Bytes of the tensors raw ``nn.LSTM`` saves for its backward pass (autograd hooks)."""
    lstm = torch.nn.LSTM(wl.input_size, wl.hidden_size, wl.num_layers, batch_first=True)
    _load(lstm, weights)
    x = torch.from_numpy(data.x)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        # Keyed by storage: a tensor saved twice, or views of one buffer, count once.
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = lstm(x)
    del y
    return int(sum(seen.values()))
