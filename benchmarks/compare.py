"""jaxlstm against its peers, in one process, interleaved.

Usage::

    python -m benchmarks.compare                 # full run (several minutes on 2 cores)
    python -m benchmarks.compare --quick         # CI smoke run, tiny shapes, < 60 s
    python -m benchmarks.compare --repeats 7 --workloads W1_train,W4_step_B1 \\
        --out-dir /tmp/bench --name mine

Each group of implementations is timed round-robin (see ``_harness``), so a
burst of load on a shared machine hits every implementation alike; medians
over the repeats and ratios to a reference (``--reference``, default
torchrl's pad backend) are reported. Results go to
``<out-dir>/<name>.json``, ``<name>.md`` and ``<name>.png``.

Implementations:
  ours:  jaxlstm (``jaxlstm.LSTM``, pure JAX, jitted), bridge
         (``bridge.LSTMModule`` called from torch on TensorDicts).
  peers: torchrl ``LSTMModule`` with the pad / scan / python_based backends,
         raw ``torch.nn.LSTM`` (no resets), flax ``nn.RNN(OptimizedLSTMCell)``
         (no resets), a purejaxrl-style ``ScannedRNN`` (resets).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# name -> (label, family, resets honoured, module, builder)
IMPLEMENTATIONS: dict[str, tuple[str, str, bool, str, str]] = {
    "jaxlstm": ("jaxlstm.LSTM (pure JAX, jit)", "ours", True, "_jax_impls", "build_jaxlstm"),
    "bridge": (
        "bridge.LSTMModule (torch, TensorDict)",
        "ours",
        True,
        "_torch_impls",
        "build_bridge",
    ),
    "torchrl_pad": ("torchrl LSTMModule, pad", "peer", True, "_torch_impls", "build_torchrl_pad"),
    "torchrl_scan": (
        "torchrl LSTMModule, scan",
        "peer",
        True,
        "_torch_impls",
        "build_torchrl_scan",
    ),
    "torchrl_python": (
        "torchrl LSTMModule, python_based",
        "peer",
        True,
        "_torch_impls",
        "build_torchrl_python",
    ),
    "torch_lstm": ("torch.nn.LSTM (no resets)", "peer", False, "_torch_impls", "build_torch_lstm"),
    "flax_rnn": (
        "flax nn.RNN(OptimizedLSTMCell) (no resets)",
        "peer",
        False,
        "_jax_impls",
        "build_flax_rnn",
    ),
    "scanned_rnn": (
        "purejaxrl-style ScannedRNN (resets)",
        "peer",
        True,
        "_jax_impls",
        "build_scanned_rnn",
    ),
}

# Peers in the sweeps, beside ours.
RESET_SWEEP_IMPLS = ("jaxlstm", "scanned_rnn", "torchrl_pad")
PROBE = "matmul_probe"  # the peak measured inside a group (see Run.time_builders)
SEQ_SWEEP_IMPLS = ("jaxlstm", "flax_rnn", "torch_lstm")
SEQ_SWEEP_IMPLS_QUICK = ("jaxlstm", "torch_lstm")  # every JAX point is a compile
RESET_RATES = (0.0, 0.02, 0.5)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes, few repeats: a CI smoke run")
    p.add_argument(
        "--repeats", type=int, default=None, help="samples per implementation (5; quick 2)"
    )
    p.add_argument(
        "--workloads",
        default="all",
        help="comma-separated workload names or prefixes (W1,W4_step_B1,...) or 'all'",
    )
    p.add_argument("--impls", default="all", help="comma-separated implementation names or 'all'")
    p.add_argument("--reference", default="torchrl_pad", help="implementation the ratios are to")
    p.add_argument("--no-sweeps", action="store_true", help="skip the reset / T / memory sweeps")
    p.add_argument("--no-levers", action="store_true", help="skip the design-lever variants")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for torch and XLA alike: 1 (default) or 0 for each library's default",
    )
    p.add_argument(
        "--min-sample-s",
        type=float,
        default=None,
        help="a sample repeats a call until it lasts this long (0.05; quick 0.002)",
    )
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default=None, help="result file stem (default: cpu, or quick)")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.min_sample_s is None:
        args.min_sample_s = 0.002 if args.quick else 0.05
    if args.name is None:
        args.name = "quick" if args.quick else "cpu"
    if args.threads < 0:
        p.error("--threads must be >= 0")
    return args


def _select(spec: str, names: list[str], what: str) -> list[str]:
    if spec == "all":
        return list(names)
    chosen = []
    for token in spec.split(","):
        token = token.strip()
        hits = [n for n in names if n.startswith(token)]
        if not hits:
            raise SystemExit(f"unknown {what} {token!r}; choose from {names}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


class Run:
    """One benchmark run: the state shared by every section."""

    def __init__(self, args: argparse.Namespace):
        from . import _harness

        self.args = args
        self.log = lambda msg: print(msg, flush=True)
        self.timer = _harness.Timer(args.repeats, args.min_sample_s, log=self.log)
        self.fmt = _harness.fmt_time
        self.probe_n = 256 if args.quick else 512

    def builder(self, impl: str) -> Callable:
        import importlib

        *_, module, attr = IMPLEMENTATIONS[impl]
        return getattr(importlib.import_module(f"benchmarks.{module}"), attr)

    def time_builders(
        self, builders: dict[str, Callable[[], Any]], probe: bool = False
    ) -> tuple[dict, dict]:
        """Builds and times a group interleaved; returns ``(results, benches)``.

        With ``probe``, a float32 matmul in XLA and in torch runs in the same
        round-robin, and ``results[PROBE]`` holds the peak rate measured under
        the very load the group saw (a shared machine's load drifts over a run,
        so a peak measured once at the start can under- or overstate it).
        """
        builders = dict(builders)
        n = self.probe_n
        if probe:
            from . import _jax_impls, _torch_impls

            builders["__probe_xla"] = lambda: _bench(_jax_impls.xla_matmul(n))
            builders["__probe_torch"] = lambda: _bench(_torch_impls.torch_matmul(n))
        benches, results = self.timer.build(builders)
        results.update(self.timer.time_group({k: b.run for k, b in benches.items()}))
        for name, bench in benches.items():
            if bench.note:
                results[name]["note"] = bench.note
        if probe:
            rates = {}
            for lib in ("xla", "torch"):
                r = results.pop(f"__probe_{lib}")
                benches.pop(f"__probe_{lib}", None)
                if r.get("status") == "ok":
                    rates[lib] = 2.0 * n**3 / r["median_s"]
            results[PROBE] = {
                "n": n,
                "flops_per_s": rates,
                "peak_flops_per_s": max(rates.values()) if rates else None,
            }
        return results, benches


def peak_matmul(run: Run) -> dict:
    from . import _jax_impls, _torch_impls

    """Peak float32 matmul rate at the start of the run (the bounds use each group's probe)."""
    n = 256 if run.args.quick else 2048
    run.log(f"[peak] float32 {n}x{n} matmul, XLA and torch")
    results, _ = run.time_builders(
        {
            "xla": lambda: _bench(_jax_impls.xla_matmul(n)),
            "torch": lambda: _bench(_torch_impls.torch_matmul(n)),
        }
    )
    flops = 2.0 * n**3
    out = {"n": n, "flops": flops}
    for name, r in results.items():
        if r["status"] == "ok":
            r["flops_per_s"] = flops / r["median_s"]
            run.log(f"    {name}: {r['flops_per_s'] / 1e9:.1f} GFLOP/s")
        out[name] = r
    rates = [r["flops_per_s"] for r in results.values() if r["status"] == "ok"]
    out["peak_flops_per_s"] = max(rates) if rates else None
    return out


def _bench(fn: Callable[[], Any]):
    from ._common import Bench

    return Bench(fn)


def main_workloads(run: Run, impls: list[str]) -> dict:
    from . import _workloads
    from ._common import to_numpy

    names = [w.name for w in _workloads.main_workloads(run.args.quick)]
    selected = _select(run.args.workloads, names, "workload")
    out = {}
    for wl in _workloads.main_workloads(run.args.quick):
        if wl.name not in selected:
            continue
        run.log(f"[{wl.name}] {wl.description}: {wl.shapes()}")
        data = _workloads.make_data(wl)
        weights = _workloads.torch_layout_weights(wl)
        results, benches = run.time_builders(
            _impl_builders(run, impls, wl, data, weights), probe=True
        )
        probe = results.pop(PROBE)
        peak = probe["peak_flops_per_s"]
        entry = {
            "shapes": wl.shapes(),
            "description": wl.description,
            "flops": wl.flops,
            "matmul_probe": probe,
            "matmul_bound_s": wl.flops / peak if peak else None,
            "results": {impl: results[impl] for impl in impls},
        }
        if wl.kind == "infer":
            entry["parity"] = _parity(wl, data, weights, benches, to_numpy)
        _add_ratios(entry, run.args.reference)
        _log_group(run, entry["results"], entry["matmul_bound_s"])
        out[wl.name] = entry
    return out


def _impl_builders(run: Run, impls: list[str], wl, data, weights) -> dict[str, Callable]:
    return {impl: functools.partial(run.builder(impl), wl, data, weights) for impl in impls}


def _parity(wl, data, weights, benches: dict, to_numpy) -> dict:
    """Max |y - y_jaxlstm| per implementation: every row must compute the same function."""
    import numpy as np

    import jaxlstm

    params = jaxlstm.params_from_torch_state_dict(weights)
    reference = {
        True: np.asarray(jaxlstm.lstm_scan(params, data.x, None, data.is_init)[0]),
        False: np.asarray(jaxlstm.lstm_scan(params, data.x, None, None)[0]),
    }
    out = {}
    for name, bench in benches.items():
        try:
            y = to_numpy(bench.run())
            err = float(np.max(np.abs(y - reference[bench.resets])))
            out[name] = {"max_abs_diff": err, "ok": bool(err < 1e-4)}
        except Exception as e:  # noqa: BLE001
            out[name] = {"error": f"{type(e).__name__}: {e}", "ok": False}
    return out


def _add_ratios(entry: dict, reference: str) -> None:
    results = entry["results"]
    ref = results.get(reference, {}).get("median_s")
    bound = entry.get("matmul_bound_s")
    for r in results.values():
        if r.get("status") != "ok":
            continue
        if ref:
            r["ratio_vs_reference"] = r["median_s"] / ref
        if bound:
            r["x_matmul_bound"] = r["median_s"] / bound


def _log_group(run: Run, results: dict, bound: float | None = None) -> None:
    for name, r in results.items():
        if r.get("status") == "ok":
            extra = ""
            if "ratio_vs_reference" in r:
                extra += f"  {r['ratio_vs_reference']:.3f}x ref"
            if "x_matmul_bound" in r:
                extra += f"  {r['x_matmul_bound']:.1f}x bound"
            run.log(f"    {name:<28} {run.fmt(r['median_s']):>10}{extra}")
        else:
            run.log(f"    {name:<28} {r.get('status')}: {r.get('reason') or r.get('error')}")
    if bound:
        run.log(f"    {'(matmul bound)':<28} {run.fmt(bound):>10}")


def sweeps(run: Run, impls: list[str]) -> dict:
    from . import _jax_impls, _torch_impls, _workloads

    base = _workloads.main_workloads(run.args.quick)[0]  # W1
    out: dict[str, Any] = {}

    # Reset rate: one compiled program whatever the resets, so ours must stay flat.
    run.log(f"[sweep resets] W1 train with reset rates {RESET_RATES}")
    builders, cells = {}, {}
    for rate in RESET_RATES:
        wl = base.replace(reset_prob=rate)
        data = _workloads.make_data(wl)
        weights = _workloads.torch_layout_weights(wl)
        for impl in RESET_SWEEP_IMPLS:
            if impl not in impls:
                continue
            key = f"{impl}@{rate:g}"
            builders[key] = lambda impl=impl, wl=wl, data=data, weights=weights: run.builder(impl)(
                wl, data, weights
            )
            cells[key] = (impl, rate)
    before = _jax_impls.compiled_programs(("train", "jaxlstm"))
    results, _ = run.time_builders(builders)
    # Ours must run every reset pattern with the one program compiled for W1.
    new_programs = _jax_impls.compiled_programs(("train", "jaxlstm")) - before
    _log_group(run, results)
    run.log(f"    jaxlstm programs compiled for the {len(RESET_RATES)} reset rates: {new_programs}")
    table: dict[str, dict] = {}
    for key, (impl, rate) in cells.items():
        table.setdefault(impl, {})[f"{rate:g}"] = results[key]
    out["reset_rate"] = {
        "rates": list(RESET_RATES),
        "workload": base.shapes(),
        "results": table,
        "jaxlstm_programs_compiled": new_programs,
        "note": "0 new programs: every rate reuses the program compiled for W1_train",
    }

    # Sequence length: a scan's cost must grow linearly in T.
    seq_lens = (
        (base.steps, 2 * base.steps, 4 * base.steps)
        if run.args.quick
        else (32, 64, 128, 256, 512, 1024)
    )
    run.log(f"[sweep T] W1 train at T in {seq_lens}")
    builders, cells = {}, {}
    for steps in seq_lens:
        wl = base.replace(steps=steps)
        data = _workloads.make_data(wl)
        weights = _workloads.torch_layout_weights(wl)
        for impl in SEQ_SWEEP_IMPLS_QUICK if run.args.quick else SEQ_SWEEP_IMPLS:
            if impl not in impls:
                continue
            key = f"{impl}@T{steps}"
            builders[key] = lambda impl=impl, wl=wl, data=data, weights=weights: run.builder(impl)(
                wl, data, weights
            )
            cells[key] = (impl, steps, wl)
    results, _ = run.time_builders(builders, probe=True)
    probe = results.pop(PROBE)
    peak = probe["peak_flops_per_s"]
    _log_group(run, results)
    table = {}
    for key, (impl, steps, wl) in cells.items():
        r = results[key]
        if r.get("status") == "ok" and peak:
            r["x_matmul_bound"] = r["median_s"] / (wl.flops / peak)
        table.setdefault(impl, {})[str(steps)] = r
    out["seq_len"] = {
        "T": list(seq_lens),
        "matmul_probe": probe,
        "workload": base.shapes(),
        "results": table,
        "linearity": {impl: _linearity(seq_lens, rows) for impl, rows in table.items()},
    }
    for impl, fit in out["seq_len"]["linearity"].items():
        if fit:
            run.log(
                f"    {impl}: per step {run.fmt(fit['per_step_s'])}, r^2 {fit['r2']:.4f}, "
                f"per-step cost at T={seq_lens[-1]} / at T={seq_lens[len(seq_lens) // 2]}: "
                f"{fit['per_step_ratio_long_vs_mid']:.2f}"
            )

    # Memory at long T, with and without remat.
    long_t = 4 * base.steps if run.args.quick else 1024
    wl = base.replace(steps=long_t)
    data = _workloads.make_data(wl)
    weights = _workloads.torch_layout_weights(wl)
    run.log(f"[sweep memory] W1 train at T={long_t}, remat off/on")
    mem: dict[str, Any] = {
        "T": long_t,
        "workload": wl.shapes(),
        "what": (
            "jaxlstm: XLA's compiled memory analysis of jit(grad(loss)) "
            "(jit(f).lower(...).compile().memory_analysis()): the buffer sizes XLA planned "
            "before running; temp = scratch for intermediates incl. the activations kept for "
            "the backward pass; total = temp + arguments + outputs - aliased. "
            "torch_lstm: bytes of the tensors nn.LSTM saves for backward "
            "(autograd saved_tensors_hooks). Neither is a measured RSS."
        ),
    }
    builders = {}
    for backward in ("custom", "auto"):
        for remat in (False, True):
            label = f"jaxlstm backward={backward} remat={remat}"

            def build(remat=remat, backward=backward, label=label):
                bench, stats = _jax_impls.train_with_memory_stats(
                    wl, data, weights, remat=remat, backward=backward
                )
                mem[label] = stats
                return bench

            builders[label] = build
    try:
        mem["torch_lstm_saved_for_backward_bytes"] = _torch_impls.saved_for_backward_bytes(
            wl, data, weights
        )
    except Exception as e:  # noqa: BLE001
        mem["torch_lstm_saved_for_backward_bytes"] = None
        mem["torch_error"] = f"{type(e).__name__}: {e}"
    results, _ = run.time_builders(builders)
    mem["time"] = results
    for label in builders:
        stats = mem.get(label, {})
        run.log(
            f"    {label:<38}: temp {stats.get('temp_size_in_bytes', 0) / 2**20:8.1f} MiB "
            f"({stats.get('temp_per_row_step_bytes', 0) / 1024:6.2f} KiB per row-step), "
            f"total {stats.get('total_bytes', 0) / 2**20:8.1f} MiB, "
            f"time {run.fmt(results[label].get('median_s'))}"
        )
    if mem.get("torch_lstm_saved_for_backward_bytes"):
        run.log(
            f"    torch nn.LSTM saved for backward: "
            f"{mem['torch_lstm_saved_for_backward_bytes'] / 2**20:.1f} MiB"
        )
    mem["deep"] = deep_memory(run)
    out["memory"] = mem
    return out


def _linearity(seq_lens, rows: dict) -> dict | None:
    import numpy as np

    pts = [(t, rows[str(t)]["median_s"]) for t in seq_lens if rows.get(str(t), {}).get("median_s")]
    if len(pts) < 3:
        return None
    t, s = np.array(pts, float).T
    slope, intercept = np.polyfit(t, s, 1)
    pred = slope * t + intercept
    r2 = 1.0 - np.sum((s - pred) ** 2) / max(np.sum((s - s.mean()) ** 2), 1e-30)
    per_step = s / t
    mid = len(t) // 2
    return {
        "per_step_s": float(slope),
        "intercept_s": float(intercept),
        "r2": float(r2),
        "per_step_s_each_T": [float(v) for v in per_step],
        "per_step_ratio_long_vs_mid": float(per_step[-1] / per_step[mid]),
    }


def deep_memory(run: Run) -> dict:
    """Planned memory at depth (L=8, B=64, T=1024; issue 11), compiled only (not timed):
    XLA's memory analysis of jit(grad) for each backward, with and without remat, beside
    the bytes torch's nn.LSTM saves for its backward."""
    from . import _jax_impls, _torch_impls, _workloads

    base = _workloads.main_workloads(run.args.quick)[0]
    wl = base.replace(num_layers=2 if run.args.quick else 8, steps=16 if run.args.quick else 1024)
    data = _workloads.make_data(wl)
    weights = _workloads.torch_layout_weights(wl)
    out: dict[str, Any] = {"workload": wl.shapes()}
    run.log(f"[sweep memory at depth] L={wl.num_layers} B={wl.batch} T={wl.steps} (compile only)")
    for backward in ("custom", "auto"):
        for remat in (False, True):
            label = f"jaxlstm backward={backward} remat={remat}"
            _, stats = _jax_impls.train_with_memory_stats(
                wl, data, weights, remat=remat, backward=backward
            )
            out[label] = stats
            run.log(
                f"    {label:<38}: temp {stats['temp_size_in_bytes'] / 2**20:8.1f} MiB "
                f"({stats['temp_per_row_step_bytes'] / 1024:6.2f} KiB per row-step), "
                f"total {stats['total_bytes'] / 2**20:8.1f} MiB"
            )
    try:
        torch_bytes = _torch_impls.saved_for_backward_bytes(wl, data, weights)
    except Exception as e:  # noqa: BLE001
        torch_bytes = None
        out["torch_error"] = f"{type(e).__name__}: {e}"
    out["torch_lstm_saved_for_backward_bytes"] = torch_bytes
    if torch_bytes:
        run.log(f"    torch nn.LSTM saved for backward: {torch_bytes / 2**20:.1f} MiB")
        for label in [k for k in out if k.startswith("jaxlstm")]:
            out[label]["total_vs_torch"] = out[label]["total_bytes"] / torch_bytes
    return out


def levers(run: Run) -> dict:
    """The options of the core (backward, input projection, unroll), per workload, against
    the module's defaults. They are options of ``jaxlstm.lstm_scan``: no forked math."""
    from . import _jax_impls, _workloads

    names = [w.name for w in _workloads.main_workloads(run.args.quick)]
    selected = _select(run.args.workloads, names, "workload")
    quick = run.args.quick
    unrolls = (1,) if quick else (1, 2, 4)
    out = {}
    for wl in _workloads.main_workloads(quick):
        if wl.name not in selected or (quick and wl.name != names[0]):
            continue  # quick: one workload, enough to exercise every kind of variant
        data = _workloads.make_data(wl)
        weights = _workloads.torch_layout_weights(wl)
        args = (wl, data, weights)
        builders: dict[str, Callable] = {
            "core default (LSTM module)": functools.partial(_jax_impls.build_jaxlstm, *args)
        }
        backwards = ("custom", "auto") if wl.kind == "train" else ("custom",)
        for backward in backwards:
            for proj in ("per_step", "hoisted"):
                for unroll in unrolls if wl.kind != "step" else (1,):
                    builders[f"core {backward} {proj} unroll={unroll}"] = functools.partial(
                        _jax_impls.build_jaxlstm,
                        *args,
                        input_projection=proj,
                        unroll=unroll,
                        backward=backward,
                    )
        run.log(f"[levers {wl.name}] {len(builders)} variants")
        results, benches = run.time_builders(builders, probe=True)
        probe = results.pop(PROBE)
        peak = probe["peak_flops_per_s"]
        default = "core default (LSTM module)"
        parity = _lever_parity(benches, default) if wl.kind != "step" and default in benches else {}
        for name, p in parity.items():
            results[name]["parity"] = p
            if not p["ok"]:
                run.log(f"    {name}: PARITY FAILURE vs {default}: {p}")
        ref = results[default].get("median_s")
        for r in results.values():
            if r.get("status") == "ok" and ref:
                r["ratio_vs_core_default"] = r["median_s"] / ref
            if r.get("status") == "ok" and peak:
                r["x_matmul_bound"] = r["median_s"] / (wl.flops / peak)
        _log_group(run, results)
        best = min(
            (k for k, r in results.items() if r.get("status") == "ok"),
            key=lambda k: results[k]["median_s"],
            default=None,
        )
        out[wl.name] = {
            "shapes": wl.shapes(),
            "matmul_probe": probe,
            "matmul_bound_s": wl.flops / peak if peak else None,
            "results": results,
            "fastest": best,
        }
        if best:
            run.log(f"    fastest: {best}")
        from jaxlstm._scan import default_backward

        same = results.get(f"core {default_backward()} per_step unroll=1", {}).get(
            "ratio_vs_core_default"
        )
        if same is not None and jax_backend() == "cpu":
            # On CPU the module's default is this backward, per_step, unroll=1: the same
            # program timed twice, so their spread is this group's noise floor.
            out[wl.name]["noise_floor"] = abs(same - 1.0)
            run.log(f"    noise floor (same program timed twice): {abs(same - 1.0):.1%}")
    return out


def jax_backend() -> str:
    import jax

    return jax.default_backend()


def _flat_outputs(out: Any) -> dict:
    """Leaves of a run's output by their last key (grads of either parameter tree, or y)."""
    import jax
    import numpy as np

    if isinstance(out, dict):
        leaves = jax.tree_util.tree_flatten_with_path(out)[0]
        return {str(path[-1].key): np.asarray(v) for path, v in leaves}
    return {"y": np.asarray(out)}


def _lever_parity(benches: dict, reference: str) -> dict:
    """Max |output - reference| / max |reference| per variant (weight gradients for train,
    y for infer), each leaf scaled by its own magnitude."""
    import numpy as np

    ref = _flat_outputs(benches[reference].run())
    scale = {k: max(float(np.max(np.abs(v))), 1e-30) for k, v in ref.items()}
    out = {}
    for name, bench in benches.items():
        try:
            got = _flat_outputs(bench.run())
            err = max(float(np.max(np.abs(got[k] - ref[k]))) / scale[k] for k in ref)
            out[name] = {"max_rel_diff": err, "ok": bool(err < 1e-4)}
        except Exception as e:  # noqa: BLE001
            out[name] = {"error": f"{type(e).__name__}: {e}", "ok": False}
    return out


def targets(run: Run, workloads: dict, sweep: dict | None) -> list[dict]:
    """The issue's targets, as PASS/MISS lines (measured in this run)."""

    def median(wname: str, impl: str) -> float | None:
        return workloads.get(wname, {}).get("results", {}).get(impl, {}).get("median_s")

    def best_jax_peer(wname: str) -> float | None:
        peers = [median(wname, impl) for impl in ("flax_rnn", "scanned_rnn")]
        peers = [p for p in peers if p is not None]
        return min(peers) if peers else None

    w1 = next((k for k in workloads if k.startswith("W1")), "W1_train")
    w2 = next((k for k in workloads if k.startswith("W2")), "W2_train")
    w3 = next((k for k in workloads if k.startswith("W3")), "W3_infer")
    step1 = "W4_step_B1"
    checks = [
        ("W1 jaxlstm / flax nn.RNN", median(w1, "jaxlstm"), median(w1, "flax_rnn"), 0.85),
        ("W1 jaxlstm / ScannedRNN", median(w1, "jaxlstm"), median(w1, "scanned_rnn"), 0.80),
        ("W1 jaxlstm / raw nn.LSTM", median(w1, "jaxlstm"), median(w1, "torch_lstm"), 1.2),
        ("W1 jaxlstm / torchrl pad", median(w1, "jaxlstm"), median(w1, "torchrl_pad"), 0.15),
        ("W2 jaxlstm / best JAX peer", median(w2, "jaxlstm"), best_jax_peer(w2), 1.0),
        ("W3 jaxlstm / best JAX peer", median(w3, "jaxlstm"), best_jax_peer(w3), 1.0),
        (
            "W4 B=1 step jaxlstm / ScannedRNN",
            median(step1, "jaxlstm"),
            median(step1, "scanned_rnn"),
            0.75,
        ),
        (
            "W4 B=1 step jaxlstm / torchrl step",
            median(step1, "jaxlstm"),
            median(step1, "torchrl_pad"),
            0.15,
        ),
        (
            "W4 B=1 step bridge / torchrl step",
            median(step1, "bridge"),
            median(step1, "torchrl_pad"),
            0.4,
        ),
    ]
    if sweep:
        rows = sweep["reset_rate"]["results"].get("jaxlstm", {})
        checks.append(
            (
                "W1 jaxlstm 50% resets / 0% resets",
                rows.get("0.5", {}).get("median_s"),
                rows.get("0", {}).get("median_s"),
                1.05,
            )
        )
        mem = sweep["memory"]
        for remat in (False, True):
            custom = mem.get(f"jaxlstm backward=custom remat={remat}", {})
            auto = mem.get(f"jaxlstm backward=auto remat={remat}", {})
            checks.append(
                (
                    f"T={mem['T']} planned temp, custom / auto backward, remat={remat}",
                    custom.get("temp_size_in_bytes"),
                    auto.get("temp_size_in_bytes"),
                    1.0,
                )
            )
    out = []
    for name, num, den, limit in checks:
        if num is None or den is None:
            item = {"target": name, "limit": limit, "value": None, "result": "N/A"}
        else:
            value = num / den
            item = {
                "target": name,
                "limit": limit,
                "value": value,
                "result": "PASS" if value <= limit else "MISS",
            }
        out.append(item)
        value = "n/a" if item["value"] is None else f"{item['value']:.3f}"
        run.log(f"{item['result']:<4}  {name} = {value} (target <= {limit})")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Threads must be fixed before jax (XLA_FLAGS) and torch do any work.
    from . import _harness

    threads = _harness.set_threads(args.threads)
    start = time.perf_counter()
    impls = _select(args.impls, list(IMPLEMENTATIONS), "implementation")
    run = Run(args)
    run.log(f"benchmarks.compare: threads {threads}, repeats {args.repeats}, quick={args.quick}")
    info = _harness.machine_info()
    run.log(
        f"machine: {info['cpu_model']}, {info['cores_available']} cores, load {info['load_average_at_start']}"
    )

    peak = peak_matmul(run)
    workloads = main_workloads(run, impls)
    sweep = None if args.no_sweeps else sweeps(run, impls)
    lever = None if args.no_levers else levers(run)
    run.log("[targets]")
    target_lines = targets(run, workloads, sweep)

    result = {
        "name": args.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.compare "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "repeats": args.repeats,
        "min_sample_s": args.min_sample_s,
        "threads": threads,
        "machine": info,
        "reference": args.reference,
        "protocol": (
            "one process; per group every implementation is built and warmed up (compiled), "
            "then timed round-robin in an order rotated each repeat; a sample is the mean of "
            "`number` back-to-back calls; figures are medians over `repeats` samples. "
            "train = forward + backward (weight gradients of sum(y * cotangent)); "
            "infer = forward returning outputs and final state; step = one step per call "
            "carrying the state (torchrl and bridge: a [B] TensorDict in, one out, no_grad)."
        ),
        "implementations": {
            name: {"label": label, "family": family, "resets": resets}
            for name, (label, family, resets, _, _) in IMPLEMENTATIONS.items()
            if name in impls
        },
        "peak_matmul": peak,
        "workloads": workloads,
        "sweeps": sweep,
        "levers": lever,
        "targets": target_lines,
        "wall_s": time.perf_counter() - start,
    }
    from . import _report

    paths = _report.write(result, args.out_dir, args.name)
    run.log(f"wrote {', '.join(str(p) for p in paths)} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
