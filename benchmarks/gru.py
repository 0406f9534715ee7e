"""GRU benchmarks: ``jaxlstm.GRU`` and ``bridge.GRUModule`` against their peers.

Peers, on the same shapes, weights and data, timed interleaved in one run:

- torchrl's ``GRUModule`` (``recurrent_backend="pad"`` and ``python_based=True``)
  and ``bridge.GRUModule``, driven with TensorDicts as in an RL loop;
- raw ``torch.nn.GRU`` (no resets: it has no ``is_init``);
- flax ``nn.RNN(nn.GRUCell)`` (no resets);
- purejaxrl's ``ScannedRNN`` with a ``GRUCell`` (resets with ``jnp.where``);
- ``jaxlstm.GRU`` (resets inside the scan, hand-written backward).

Workloads: W1 train (forward + backward, B64 T128 I64 H256, resets 1/50) and
W4 step (one step per call, B=1), or CI-sized shapes with ``--quick``.
Prints the median time per call and issue 8's target ratios (GRU W1 <= 0.85x
purejaxrl's GRU ``ScannedRNN`` and <= 0.15x torchrl ``GRUModule`` pad), each
marked met or missed from this run's numbers.

Run: ``python -m benchmarks.gru [--quick] [--repeats N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxlstm

from ._harness import Timer, fmt_time, machine_info
from ._workloads import Data, Workload, make_data

IN_KEY, OUT_KEY, STATE_KEY = "obs", "embed", "recurrent_state"


def workloads(quick: bool) -> list[Workload]:
    if quick:
        shape = {"batch": 8, "steps": 16, "input_size": 8, "hidden_size": 16}
    else:
        shape = {"batch": 64, "steps": 128, "input_size": 64, "hidden_size": 256}
    step = {"steps": 1, "input_size": shape["input_size"], "hidden_size": shape["hidden_size"]}
    return [
        Workload("W1_train", "train", reset_prob=1 / 50, **shape),
        Workload("W4_step_B1", "step", batch=1, **step),
    ]


def gru_weights(wl: Workload, seed: int = 0) -> dict[str, np.ndarray]:
    """``nn.GRU``'s own initialisation, as numpy arrays shared by every peer."""
    torch.manual_seed(seed)
    gru = torch.nn.GRU(wl.input_size, wl.hidden_size, batch_first=True)
    return {k: v.numpy().copy() for k, v in gru.state_dict().items()}


def _block(tree: Any) -> Any:
    return jax.block_until_ready(tree)


# --- JAX ---------------------------------------------------------------------


def _jax_train(loss: Callable, params: Any, *args: Any) -> Callable[[], Any]:
    grad = jax.jit(jax.grad(loss))
    return lambda: _block(grad(params, *args))


def build_jaxlstm(wl: Workload, data: Data, weights: dict) -> Callable[[], Any]:
    params = jax.device_put(jaxlstm.params_from_torch_state_dict(weights))
    model = jaxlstm.GRU(wl.hidden_size, recurrent_mode=wl.kind != "step")
    x, is_init = jnp.asarray(data.x), jnp.asarray(data.is_init)
    if wl.kind == "step":
        step = jax.jit(model.apply)
        state = [model.initial_state((wl.batch,))]

        def run():
            y, state[0] = step(params, x, state[0], is_init)
            return _block(y)

        return run
    ct = jnp.asarray(data.cotangent)

    def loss(p, x_, ii, ct_):
        return jnp.sum(model.apply(p, x_, None, ii)[0] * ct_)

    return _jax_train(loss, params, x, is_init, ct)


def build_flax_rnn(wl: Workload, data: Data, weights: dict) -> Callable[[], Any]:
    cell = nn.GRUCell(wl.hidden_size)
    x = jnp.asarray(data.x)
    if wl.kind == "step":
        carry0 = jnp.zeros((wl.batch, wl.hidden_size))
        params = cell.init(jax.random.key(0), carry0, x)
        step = jax.jit(cell.apply)
        carry = [carry0]

        def run():
            carry[0], y = step(params, carry[0], x)
            return _block(y)

        return run
    rnn = nn.RNN(cell)
    params = rnn.init(jax.random.key(0), x)
    ct = jnp.asarray(data.cotangent)

    def loss(p, x_, ct_):
        return jnp.sum(rnn.apply(p, x_) * ct_)

    return _jax_train(loss, params, x, ct)


class ScannedGRU(nn.Module):
    """purejaxrl's ``ScannedRNN`` (its GRU): time-major, resets to zeros with ``jnp.where``."""

    hidden_size: int

    @functools.partial(
        nn.scan, variable_broadcast="params", in_axes=0, out_axes=0, split_rngs={"params": False}
    )
    @nn.compact
    def __call__(self, carry, inputs):
        x, resets = inputs
        carry = jnp.where(resets[:, None], jnp.zeros_like(carry), carry)
        return nn.GRUCell(self.hidden_size)(carry, x)


def build_scanned_rnn(wl: Workload, data: Data, weights: dict) -> Callable[[], Any]:
    model = ScannedGRU(wl.hidden_size)
    zeros = jnp.zeros((wl.batch, wl.hidden_size))
    if wl.kind == "step":
        x, resets = jnp.asarray(data.x)[None], jnp.asarray(data.is_init)[None]
        params = model.init(jax.random.key(0), zeros, (x, resets))
        step = jax.jit(model.apply)
        carry = [zeros]

        def run():
            carry[0], y = step(params, carry[0], (x, resets))
            return _block(y)

        return run
    x = jnp.asarray(np.swapaxes(data.x, 0, 1))  # its native layout, prepared untimed
    resets = jnp.asarray(np.swapaxes(data.is_init, 0, 1))
    ct = jnp.asarray(np.swapaxes(data.cotangent, 0, 1))
    params = model.init(jax.random.key(0), zeros, (x, resets))

    def loss(p, x_, r_, ct_):
        return jnp.sum(model.apply(p, zeros, (x_, r_))[1] * ct_)

    return _jax_train(loss, params, x, resets, ct)


# --- torch -------------------------------------------------------------------


def _torch_train(forward: Callable[[], torch.Tensor], params: list, ct: torch.Tensor):
    def run():
        for p in params:
            p.grad = None
        forward().backward(ct)

    return run


def build_torch_gru(wl: Workload, data: Data, weights: dict) -> Callable[[], Any]:
    gru = torch.nn.GRU(wl.input_size, wl.hidden_size, batch_first=True)
    gru.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    x = torch.from_numpy(data.x)
    if wl.kind == "step":
        x = x[:, None]
        h = [torch.zeros(1, wl.batch, wl.hidden_size)]

        def run():
            with torch.no_grad():
                y, h[0] = gru(x, h[0])
            return y

        return run
    return _torch_train(lambda: gru(x)[0], list(gru.parameters()), torch.from_numpy(data.cotangent))


def _tensordict_runner(module: Any, wl: Workload, data: Data) -> Callable[[], Any]:
    from tensordict import TensorDict
    from torchrl.modules import set_recurrent_mode

    state_shape = (wl.batch, 1, wl.hidden_size)
    if wl.kind == "step":
        x = torch.from_numpy(data.x)
        is_init = torch.from_numpy(data.is_init)[:, None]
        state = [torch.zeros(state_shape)]

        def run():
            td = TensorDict(
                {IN_KEY: x, "is_init": is_init, STATE_KEY: state[0]}, batch_size=[wl.batch]
            )
            with torch.no_grad():
                out = module(td)
            state[0] = out["next", STATE_KEY]
            return out[OUT_KEY]

        return run
    td = TensorDict(
        {
            IN_KEY: torch.from_numpy(data.x),
            "is_init": torch.from_numpy(data.is_init)[..., None],
            STATE_KEY: torch.zeros((wl.batch, wl.steps) + state_shape[1:]),
        },
        batch_size=[wl.batch, wl.steps],
    )

    def forward():
        with set_recurrent_mode(True):
            return module(td)[OUT_KEY]

    return _torch_train(forward, list(module.parameters()), torch.from_numpy(data.cotangent))


def _gru_module_builder(cls_path: str, **kwargs: Any) -> Callable:
    def build(wl: Workload, data: Data, weights: dict) -> Callable[[], Any]:
        if cls_path == "bridge":
            from bridge import GRUModule
        else:
            from torchrl.modules import GRUModule
        module = GRUModule(wl.input_size, wl.hidden_size, in_key=IN_KEY, out_key=OUT_KEY, **kwargs)
        module.gru.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        return _tensordict_runner(module, wl, data)

    return build


BUILDERS = {
    "jaxlstm.GRU": build_jaxlstm,
    "bridge.GRUModule": _gru_module_builder("bridge"),
    "torchrl GRUModule pad": _gru_module_builder("torchrl", recurrent_backend="pad"),
    "torchrl GRUModule python": _gru_module_builder("torchrl", python_based=True),
    "torch nn.GRU (no resets)": build_torch_gru,
    "flax nn.RNN(GRUCell) (no resets)": build_flax_rnn,
    "purejaxrl ScannedRNN GRU": build_scanned_rnn,
}

TARGETS = [
    ("W1_train", "jaxlstm.GRU", "purejaxrl ScannedRNN GRU", 0.85),
    ("W1_train", "jaxlstm.GRU", "torchrl GRUModule pad", 0.15),
]


def run(quick: bool, repeats: int, min_sample_s: float) -> dict:
    timer = Timer(repeats=repeats, min_sample_s=min_sample_s)
    results: dict[str, dict] = {}
    for wl in workloads(quick):
        data, weights = make_data(wl), gru_weights(wl)
        print(f"{wl.name}: {wl.shapes()}")
        benches, statuses = timer.build(
            {name: functools.partial(b, wl, data, weights) for name, b in BUILDERS.items()}
        )
        timed = timer.time_group(benches)
        results[wl.name] = {**statuses, **timed}
        for name in BUILDERS:
            r = results[wl.name].get(name, {})
            print(f"  {name:36s} {fmt_time(r.get('median_s')):>10s}  {r.get('status', '')}")
    targets = []
    for wl_name, ours, peer, bound in TARGETS:
        a = results.get(wl_name, {}).get(ours, {}).get("median_s")
        b = results.get(wl_name, {}).get(peer, {}).get("median_s")
        ratio = None if a is None or b is None else a / b
        status = "n/a" if ratio is None else ("met" if ratio <= bound else "missed")
        targets.append(
            {
                "workload": wl_name,
                "ours": ours,
                "peer": peer,
                "bound": bound,
                "ratio": ratio,
                "status": status,
            }
        )
        shown = "—" if ratio is None else f"{ratio:.2f}"
        print(f"target {wl_name} {ours} / {peer} <= {bound}: {shown} ({status})")
    return {"machine": machine_info(), "results": results, "targets": targets}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized shapes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-sample-s", type=float, default=0.2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    out = run(args.quick, args.repeats, args.min_sample_s)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main()
