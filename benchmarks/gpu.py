"""GPU comparison: W1-W4 plus torchrl's own GPU shapes, on one CUDA device (issue 7, item 7).

NOT RUN YET: no GPU was available when this was written; it is ready to run with
``bash benchmarks/gpu.sh`` (or ``python -m benchmarks.gpu``) on a machine with a CUDA
build of jax (``jax[cuda12]``) and of torch. It refuses to run on CPU.

Rows, each timed as the median of ``--repeats`` calls after warm-up (CUDA synchronised /
JAX results blocked on), in one process, interleaved per workload:

- ``jaxlstm hoisted`` / ``jaxlstm per_step``: ``jaxlstm.lstm_scan`` with that
  ``input_projection`` (custom backward for training);
- ``cudnn nn.LSTM``: raw ``torch.nn.LSTM`` on CUDA (cuDNN), no resets;
- ``torchrl pad`` / ``torchrl scan`` / ``torchrl triton``: torchrl's ``LSTMModule`` with
  that ``recurrent_backend``, on TensorDicts on the device (a backend torchrl refuses is
  reported as n/a with its error).

Workloads: W1-W4 (``benchmarks/_workloads.py``), and torchrl's GPU shapes
``tr_B128_T128_H256`` (I=64, 3% resets) and ``tr_B256_T128_I32_H512`` (2% resets), both
as training steps. The whole run is sized to finish in under 8 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._workloads import Workload, main_workloads, make_data, torch_layout_weights

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BACKENDS = ("pad", "scan", "triton")


def workloads() -> list[Workload]:
    extra = [
        Workload(
            "tr_B128_T128_H256",
            "train",
            batch=128,
            steps=128,
            input_size=64,
            hidden_size=256,
            reset_prob=0.03,
            description="torchrl GPU shape, 3% resets",
        ),
        Workload(
            "tr_B256_T128_I32_H512",
            "train",
            batch=256,
            steps=128,
            input_size=32,
            hidden_size=512,
            reset_prob=0.02,
            description="torchrl GPU shape",
        ),
    ]
    return main_workloads(False) + extra


def jax_runner(wl: Workload, data: Any, weights: dict, projection: str) -> Callable[[], Any]:
    import jax
    import jax.numpy as jnp

    import jaxlstm

    params = jax.device_put(jaxlstm.params_from_torch_state_dict(weights))
    x, is_init = jnp.asarray(data.x), jnp.asarray(data.is_init)
    if wl.kind == "step":
        state = jaxlstm.LSTM(wl.hidden_size).initial_state(wl.batch)

        @jax.jit
        def step(p, x_t, s, ii):
            y, states = jaxlstm.lstm_scan(
                p, x_t[:, None], s, ii[:, None], input_projection=projection
            )
            return y[:, 0], jax.tree.map(lambda a: a[:, 0], states)

        carry = [state]

        def run():
            y, carry[0] = step(params, x, carry[0], is_init)
            return jax.block_until_ready(y)

        return run
    if wl.kind == "train":
        ct = jnp.asarray(data.cotangent)

        @jax.jit
        @jax.grad
        def grad(p, x_, ii, ct_):
            return jnp.sum(jaxlstm.lstm_scan(p, x_, None, ii, input_projection=projection)[0] * ct_)

        return lambda: jax.block_until_ready(grad(params, x, is_init, ct))

    infer = jax.jit(
        lambda p, x_, ii: jaxlstm.lstm_scan(p, x_, None, ii, input_projection=projection)
    )
    return lambda: jax.block_until_ready(infer(params, x, is_init))


def torch_runners(
    wl: Workload, data: Any, weights: dict, device: str = "cuda"
) -> dict[str, Callable[[], Any]]:
    import torch
    from tensordict import TensorDict
    from torchrl.modules import LSTMModule, set_recurrent_mode

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
    out: dict[str, Callable[[], Any]] = {}

    lstm = torch.nn.LSTM(wl.input_size, wl.hidden_size, wl.num_layers, batch_first=True).to(dev)
    lstm.load_state_dict(sd)
    x = torch.from_numpy(data.x).to(dev)
    zeros = torch.zeros(wl.num_layers, wl.batch, wl.hidden_size, device=dev)
    if wl.kind == "step":
        carry = [(zeros, zeros)]

        def cudnn_step():
            with torch.no_grad():
                y, carry[0] = lstm(x[:, None], carry[0])
            sync()
            return y

        out["cudnn nn.LSTM"] = cudnn_step
    elif wl.kind == "train":
        ct = torch.from_numpy(data.cotangent).to(dev)

        def cudnn_train():
            lstm.zero_grad(set_to_none=True)
            lstm(x, (zeros, zeros))[0].backward(ct)
            sync()

        out["cudnn nn.LSTM"] = cudnn_train
    else:

        def cudnn_infer():
            with torch.no_grad():
                y = lstm(x, (zeros, zeros))[0]
            sync()
            return y

        out["cudnn nn.LSTM"] = cudnn_infer

    shape = (wl.num_layers, wl.hidden_size)
    for backend in BACKENDS:
        try:
            module = LSTMModule(
                input_size=wl.input_size,
                hidden_size=wl.hidden_size,
                num_layers=wl.num_layers,
                in_key="obs",
                out_key="embed",
                recurrent_backend=backend,
                device=dev,
            )
        except Exception as e:  # noqa: BLE001 - reported as n/a
            out[f"torchrl {backend}"] = e
            continue
        module.lstm.load_state_dict(sd)
        if wl.kind == "step":
            is_init = torch.from_numpy(data.is_init)[:, None].to(dev)
            state = [torch.zeros((wl.batch,) + shape, device=dev) for _ in "hc"]

            def step(module=module, is_init=is_init, state=state):
                td = TensorDict(
                    {
                        "obs": x,
                        "is_init": is_init,
                        "recurrent_state_h": state[0],
                        "recurrent_state_c": state[1],
                    },
                    batch_size=[wl.batch],
                    device=dev,
                )
                with torch.no_grad():
                    td = module(td)
                state[0], state[1] = (
                    td["next", "recurrent_state_h"],
                    td["next", "recurrent_state_c"],
                )
                sync()
                return td["embed"]

            out[f"torchrl {backend}"] = step
            continue
        steps = (wl.batch, wl.steps)
        td = TensorDict(
            {
                "obs": x,
                "is_init": torch.from_numpy(data.is_init)[..., None].to(dev),
                "recurrent_state_h": torch.zeros(steps + shape, device=dev),
                "recurrent_state_c": torch.zeros(steps + shape, device=dev),
            },
            batch_size=list(steps),
            device=dev,
        )
        if wl.kind == "train":
            ct = torch.from_numpy(data.cotangent).to(dev)

            def train(module=module, td=td, ct=ct):
                module.zero_grad(set_to_none=True)
                with set_recurrent_mode(True):
                    module(td.clone(False))["embed"].backward(ct)
                sync()

            out[f"torchrl {backend}"] = train
        else:

            def infer(module=module, td=td):
                with torch.no_grad(), set_recurrent_mode(True):
                    y = module(td.clone(False))["embed"]
                sync()
                return y

            out[f"torchrl {backend}"] = infer
    return out


def time_one(fn: Callable[[], Any], repeats: int, budget_s: float) -> dict:
    start = time.perf_counter()
    for _ in range(3):  # compile / autotune / warm up
        fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    return {"median_s": float(np.median(samples)), "min_s": float(min(samples)), "n": len(samples)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--budget-s", type=float, default=12.0, help="time cap per row (incl. warm-up)")
    p.add_argument("--name", default="gpu")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="check the script's logic on CPU with tiny shapes (times are meaningless)",
    )
    args = p.parse_args(argv)

    import jax
    import torch

    device = "cpu" if args.cpu_smoke else "cuda"
    if not args.cpu_smoke and (jax.default_backend() != "gpu" or not torch.cuda.is_available()):
        print(
            f"benchmarks.gpu needs a GPU for jax and torch (jax: {jax.default_backend()}, "
            f"torch cuda: {torch.cuda.is_available()}); not running."
        )
        return 2
    results: dict[str, dict] = {}
    start = time.perf_counter()
    todo = workloads()
    if args.cpu_smoke:
        todo = [
            w.replace(batch=min(w.batch, 4), steps=min(w.steps, 8), hidden_size=16)
            for w in main_workloads(True)
        ]
    for wl in todo:
        data, weights = make_data(wl), torch_layout_weights(wl)
        rows: dict[str, Callable[[], Any] | Exception] = {}
        for projection in ("hoisted", "per_step"):
            rows[f"jaxlstm {projection}"] = jax_runner(wl, data, weights, projection)
        rows.update(torch_runners(wl, data, weights, device))
        results[wl.name] = {}
        for name, fn in rows.items():
            if isinstance(fn, Exception):
                results[wl.name][name] = {"error": f"{type(fn).__name__}: {fn}"}
                continue
            try:
                results[wl.name][name] = time_one(fn, args.repeats, args.budget_s)
            except Exception as e:  # noqa: BLE001 - a backend may refuse a shape
                results[wl.name][name] = {"error": f"{type(e).__name__}: {e}"}
            r = results[wl.name][name]
            shown = f"{r['median_s'] * 1e3:9.3f} ms" if "median_s" in r else r["error"][:80]
            print(f"{wl.name:24s} {name:18s} {shown}", flush=True)
    lines = ["| workload | " + " | ".join(next(iter(results.values()))) + " |"]
    lines.append("|---|" + "---|" * len(next(iter(results.values()))))
    for wname, rows in results.items():
        cells = [
            f"{r['median_s'] * 1e3:.3f} ms" if "median_s" in r else "n/a" for r in rows.values()
        ]
        lines.append(f"| {wname} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)",
        "jax": jax.__version__,
        "torch": torch.__version__,
        "seconds": time.perf_counter() - start,
        "load": os.getloadavg(),
    }
    (args.out_dir / f"{args.name}.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1)
    )
    (args.out_dir / f"{args.name}.md").write_text(f"{meta}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
