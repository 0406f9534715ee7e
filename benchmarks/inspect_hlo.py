"""What XLA compiles for one W1 train step: the loop bodies of ours and the JAX peers.

``python -m benchmarks.inspect_hlo [--workload W1_train] [--out-dir DIR]`` compiles
``jit(grad(sum(y * cotangent)))`` for ``jaxlstm`` (custom and automatic backward,
per-step and hoisted projection), flax ``nn.RNN(OptimizedLSTMCell)`` and the
purejaxrl-style ``ScannedRNN`` (the same builders the comparison uses), and prints, per
program: XLA's planned scratch (``memory_analysis``) and, for every while-loop body of
the optimised HLO, what runs each step: the dots (``ynn`` = XLA:CPU's YNNPACK kernels,
``dot`` = its Eigen path), the per-step stores into ``[T, ...]`` buffers
(dynamic-update-slice) with their element types, the copies and the other fusions. The
full optimised HLO texts are written to ``--out-dir``. This is how the explanation in
``benchmarks/README.md`` was found; it times nothing.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path


def programs(workload: str) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import jaxlstm

    from . import _jax_impls, _workloads

    wl = next(w for w in _workloads.main_workloads(False) if w.name.startswith(workload))
    data, weights = _workloads.make_data(wl), _workloads.torch_layout_weights(wl)
    params = jaxlstm.params_from_torch_state_dict(weights)
    x, ii, ct = jnp.asarray(data.x), jnp.asarray(data.is_init), jnp.asarray(data.cotangent)
    out = {}
    for backward in ("custom", "auto"):
        for proj in ("per_step", "hoisted"):

            def loss(p, x_, ii_, ct_, backward=backward, proj=proj):
                y, _ = jaxlstm.lstm_scan(p, x_, None, ii_, backward=backward, input_projection=proj)
                return jnp.sum(y * ct_)

            out[f"jaxlstm_{backward}_{proj}"] = (jax.grad(loss), (params, x, ii, ct))
    cell = {"cell": _jax_impls.flax_cell_params(weights, wl.hidden_size)}
    rnn = nn.RNN(nn.OptimizedLSTMCell(wl.hidden_size), return_carry=True)
    out["flax_rnn"] = (
        jax.grad(lambda p, x_, ct_: jnp.sum(rnn.apply({"params": p}, x_)[1] * ct_)),
        (cell, x, ct),
    )
    model = _jax_impls.ScannedRNN(wl.hidden_size)
    zeros = jnp.zeros((wl.batch, wl.hidden_size))
    out["scanned_rnn"] = (
        jax.grad(
            lambda p, x_, r_, ct_: jnp.sum(
                model.apply({"params": p}, (zeros, zeros), (x_, r_))[1] * ct_
            )
        ),
        (cell, jnp.swapaxes(x, 0, 1), jnp.swapaxes(ii, 0, 1), jnp.swapaxes(ct, 0, 1)),
    )
    return out


def loop_bodies(hlo: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if m:
            current = m.group(1)
            comps[current] = []
        elif line.startswith("}"):
            current = None
        elif current:
            comps[current].append(line.strip())
    bodies = [
        re.search(r"body=%?([\w.\-]+)", line).group(1)
        for lines in comps.values()
        for line in lines
        if " while(" in line
    ]
    return {b: comps[b] for b in bodies}


def summarise(lines: list[str]) -> dict:
    counts: collections.Counter = collections.Counter()
    for line in lines:
        if " = " not in line or "parameter(" in line or "get-tuple-element(" in line:
            continue
        rhs = line.split(" = ", 1)[1]
        shape = rhs.split(" ")[0]
        if " dot(" in rhs:
            counts[f"dot (Eigen) -> {shape}"] += 1
        elif "ynn_fusion" in line.split(" = ", 1)[0]:
            counts[f"ynn dot -> {shape}"] += 1
        elif "dynamic-update-slice" in line.split(" = ", 1)[0]:
            counts[f"per-step store into {shape}"] += 1
        elif " copy(" in rhs:
            counts[f"copy {shape}"] += 1
        elif "fusion(" in rhs:
            counts["other fusions"] += 1
        elif "concatenate(" in rhs:
            counts[f"concatenate -> {shape}"] += 1
    return dict(counts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.inspect_hlo")
    p.add_argument("--workload", default="W1_train")
    p.add_argument("--out-dir", type=Path, default=Path("/tmp/jaxlstm_hlo"))
    args = p.parse_args(argv)
    import jax

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, (fn, fargs) in programs(args.workload).items():
        compiled = jax.jit(fn).lower(*fargs).compile()
        text = compiled.as_text()
        (args.out_dir / f"{name}.hlo").write_text(text)
        mem = compiled.memory_analysis()
        print(f"{name}: planned scratch {mem.temp_size_in_bytes / 2**20:.1f} MiB")
        for body, lines in loop_bodies(text).items():
            print(f"  loop body {body}:")
            for what, n in sorted(summarise(lines).items()):
                print(f"    {n:3d} x {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
