"""Writes a run's results: JSON (everything), a markdown table, and a PNG of the sweeps."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ._harness import fmt_time


def write(result: dict, out_dir: Path, name: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    paths[0].write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    paths[1].write_text(markdown(result))
    if result.get("sweeps"):
        png = out_dir / f"{name}.png"
        plot(result, png)
        paths.append(png)
    return paths


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _cell(r: dict | None, ratio_key: str | None = "ratio_vs_reference") -> str:
    if not r:
        return "—"
    status = r.get("status")
    if status == "n/a":
        return "n/a"
    if status != "ok":
        return "error"
    text = fmt_time(r["median_s"])
    if ratio_key and ratio_key in r:
        text += f" ({r[ratio_key]:.3g}×)"
    return text


def markdown(result: dict) -> str:
    m = result["machine"]
    v = m["versions"]
    lines = [
        f"# Benchmark `{result['name']}`",
        "",
        f"- Command: `{result['command'].strip()}`; {result['created']}; "
        f"{result['repeats']} repeats, wall {result['wall_s']:.0f} s.",
        f"- Machine: {m['cpu_model']}, {m['cores_available']} cores available "
        f"(load average at start {_load(m)}), {m['platform']}.",
        f"- Threads: torch {result['threads']['torch_num_threads']}, XLA intra-op "
        f"{result['threads'].get('xla_intra_op_threads')}, XLA flags "
        f"`{result['threads']['xla_flags'] or '(default)'}`.",
        f"- Versions: jax {v.get('jax')}, flax {v.get('flax')}, torch {v.get('torch')}, "
        f"torchrl {v.get('torchrl')}, tensordict {v.get('tensordict')}, "
        f"Python {m['python']}.",
        f"- Protocol: {result['protocol']}",
    ]
    peak = result["peak_matmul"]
    if peak.get("peak_flops_per_s"):
        parts = [
            f"{k} {peak[k]['flops_per_s'] / 1e9:.1f} GFLOP/s"
            for k in ("xla", "torch")
            if peak.get(k, {}).get("status") == "ok"
        ]
        lines.append(
            f"- Peak float32 matmul at the start ({peak['n']}×{peak['n']}): {', '.join(parts)}. "
            f"The matmul bound of a workload is its FLOPs (forward 2·B·T·4H·(I+H) per "
            f"layer, train 3×) at the peak rate measured inside its own group: a float32 "
            f"matmul in XLA and in torch timed round-robin with the implementations "
            f"(the higher of the two), because the load on a shared machine drifts."
        )
    workloads = result["workloads"]
    impls = result["implementations"]
    ref = result["reference"]
    if workloads:
        lines += [
            "",
            f"## Median time per call (ratio to `{ref}`)",
            "",
            "| implementation | " + " | ".join(workloads) + " |",
            "|---|" + "---|" * len(workloads),
        ]
        for name, meta in impls.items():
            row = [_cell(w["results"].get(name)) for w in workloads.values()]
            lines.append(f"| {meta['label']} | " + " | ".join(row) + " |")
        bound = [fmt_time(w.get("matmul_bound_s")) for w in workloads.values()]
        lines.append("| *matmul bound* | " + " | ".join(bound) + " |")
        probes = [w.get("matmul_probe", {}).get("peak_flops_per_s") for w in workloads.values()]
        lines.append(
            "| *(peak in group, GFLOP/s)* | "
            + " | ".join("—" if p is None else f"{p / 1e9:.0f}" for p in probes)
            + " |"
        )
        lines += [
            "",
            "Time as a multiple of the matmul bound:",
            "",
            "| implementation | " + " | ".join(workloads) + " |",
            "|---|" + "---|" * len(workloads),
        ]
        for name, meta in impls.items():
            row = []
            for w in workloads.values():
                r = w["results"].get(name, {})
                row.append(f"{r['x_matmul_bound']:.1f}×" if "x_matmul_bound" in r else "—")
            lines.append(f"| {name} | " + " | ".join(row) + " |")
        lines += [
            "",
            "Shapes: "
            + "; ".join(
                f"{k}: B={w['shapes']['B']} T={w['shapes']['T']} I={w['shapes']['I']} "
                f"H={w['shapes']['H']} L={w['shapes']['L']} resets={w['shapes']['reset_prob']:.3g}"
                for k, w in workloads.items()
            )
            + ".",
        ]
        notes = []
        for name in impls:
            for wname, w in workloads.items():
                r = w["results"].get(name, {})
                if r.get("status") == "n/a":
                    notes.append(f"`{name}` on {wname}: {r.get('reason')}")
                elif r.get("status") == "error":
                    notes.append(f"`{name}` on {wname}: ERROR {r.get('error')}")
        for wname, w in workloads.items():
            for name, p in w.get("parity", {}).items():
                if not p.get("ok"):
                    notes.append(f"parity `{name}` on {wname}: {p}")
        if notes:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in sorted(set(notes))]
        parity = {
            k: v for w in workloads.values() for k, v in w.get("parity", {}).items() if v.get("ok")
        }
        if parity:
            worst = max(p["max_abs_diff"] for p in parity.values())
            lines += [
                "",
                f"Parity (inference outputs vs `jaxlstm`, resets where honoured): all within "
                f"{worst:.1e}.",
            ]
    if result.get("targets"):
        lines += ["", "## Targets", "", "| target | measured | limit | |", "|---|---|---|---|"]
        for t in result["targets"]:
            value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
            lines.append(f"| {t['target']} | {value} | ≤ {t['limit']} | {t['result']} |")
    sweeps = result.get("sweeps")
    if sweeps:
        lines += _sweep_md(sweeps)
    levers = result.get("levers")
    if levers:
        lines += [
            "",
            "## Design levers of our scan (ratio to the core's default)",
            "",
            "`core <backward> <projection> unroll=<n>` rows call `jaxlstm.lstm_scan` with that "
            "`backward`, `input_projection` and `unroll` (options of the core; no forked math). "
            "The last column is the largest difference of the variant's weight gradients "
            "(train) or outputs (infer) from the default's, relative to their magnitude. "
            "On CPU `core auto per_step unroll=1` is the default's own program timed again: "
            "its distance from 1.000 is the noise floor of the group.",
            "",
        ]
        for wname, lv in levers.items():
            lines += [
                f"### {wname} (matmul bound {fmt_time(lv.get('matmul_bound_s'))}"
                + (
                    f", noise floor {lv['noise_floor']:.1%})"
                    if lv.get("noise_floor") is not None
                    else ")"
                ),
                "",
                "| variant | median | × default | × bound | outputs vs default |",
                "|---|---|---|---|---|",
            ]
            for label, r in sorted(
                lv["results"].items(), key=lambda kv: kv[1].get("median_s", math.inf)
            ):
                ratio = r.get("ratio_vs_core_default")
                bound = r.get("x_matmul_bound")
                parity = r.get("parity", {})
                check = (
                    f"{parity['max_rel_diff']:.1e}"
                    if "max_rel_diff" in parity
                    else parity.get("error", "")
                )
                lines.append(
                    f"| {label} | {_cell(r, None)} | {'' if ratio is None else f'{ratio:.3f}'} "
                    f"| {'' if bound is None else f'{bound:.2f}'} | {check} |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


def _load(m: dict) -> str:
    load = m.get("load_average_at_start")
    return "n/a" if not load else ", ".join(f"{x:.1f}" for x in load)


def _sweep_md(sweeps: dict) -> list[str]:
    lines = []
    rr = sweeps["reset_rate"]
    rates = [f"{r:g}" for r in rr["rates"]]
    lines += [
        "",
        "## Reset-rate sweep (W1 train)",
        "",
        f"jaxlstm compiled {rr.get('jaxlstm_programs_compiled', '?')} new program(s) for these "
        "rates: every rate runs the program compiled for W1_train.",
        "",
        "| implementation | "
        + " | ".join(f"{float(r) * 100:g}% resets" for r in rates)
        + " | max/min |",
        "|---|" + "---|" * (len(rates) + 1),
    ]
    for impl, rows in rr["results"].items():
        meds = [rows.get(r, {}).get("median_s") for r in rates]
        ok = [m for m in meds if m]
        spread = f"{max(ok) / min(ok):.2f}" if len(ok) > 1 else "—"
        lines.append(
            f"| {impl} | " + " | ".join(_cell(rows.get(r), None) for r in rates) + f" | {spread} |"
        )
    sl = sweeps["seq_len"]
    lines += [
        "",
        "## Sequence-length sweep (W1 train shapes)",
        "",
        "| implementation | " + " | ".join(f"T={t}" for t in sl["T"]) + " | per step (fit) | r² |",
        "|---|" + "---|" * (len(sl["T"]) + 2),
    ]
    for impl, rows in sl["results"].items():
        fit = sl["linearity"].get(impl) or {}
        lines.append(
            f"| {impl} | "
            + " | ".join(_cell(rows.get(str(t)), None) for t in sl["T"])
            + f" | {fmt_time(fit.get('per_step_s'))} | {fit.get('r2', float('nan')):.4f} |"
        )
    mem = sweeps["memory"]
    lines += [
        "",
        f"## Memory at T={mem['T']} (W1 train shapes)",
        "",
        "| | temp | temp per row-step | total | time per train step |",
        "|---|---|---|---|---|",
    ]
    for label, stats in _jaxlstm_memory_rows(mem):
        t = mem.get("time", {}).get(label, {})
        lines.append(
            f"| {label} | {_mib(stats.get('temp_size_in_bytes'))} | "
            f"{_kib(stats.get('temp_per_row_step_bytes'))} | "
            f"{_mib(stats.get('total_bytes'))} | {_cell(t, None)} |"
        )
    if mem.get("torch_lstm_saved_for_backward_bytes"):
        lines.append(
            f"| torch nn.LSTM, saved for backward | "
            f"{_mib(mem['torch_lstm_saved_for_backward_bytes'])} | | | |"
        )
    deep = mem.get("deep")
    if deep:
        w = deep["workload"]
        lines += [
            "",
            f"### At depth: L={w.get('L')}, B={w.get('B')}, T={w.get('T')} (compiled, not timed)",
            "",
            "| | temp | temp per row-step | total | total / torch saved |",
            "|---|---|---|---|---|",
        ]
        for label, stats in _jaxlstm_memory_rows(deep):
            ratio = stats.get("total_vs_torch")
            lines.append(
                f"| {label} | {_mib(stats.get('temp_size_in_bytes'))} | "
                f"{_kib(stats.get('temp_per_row_step_bytes'))} | {_mib(stats.get('total_bytes'))} | "
                + ("—" if ratio is None else f"{ratio:.2f}")
                + " |"
            )
        if deep.get("torch_lstm_saved_for_backward_bytes"):
            lines.append(
                f"| torch nn.LSTM, saved for backward | "
                f"{_mib(deep['torch_lstm_saved_for_backward_bytes'])} | | | 1.00 |"
            )
    lines += ["", f"What is measured: {mem['what']}"]
    return lines


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:.1f} MiB"


def _kib(n: float | None) -> str:
    return "—" if n is None else f"{n / 2**10:.2f} KiB"


def _jaxlstm_memory_rows(mem: dict) -> list[tuple[str, dict]]:
    return [(k, v) for k, v in mem.items() if k.startswith("jaxlstm ") and isinstance(v, dict)]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    sweeps = result["sweeps"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))

    ax = axes[0]
    rr = sweeps["reset_rate"]
    rates = [f"{r:g}" for r in rr["rates"]]
    width = 0.8 / max(len(rr["results"]), 1)
    for k, (impl, rows) in enumerate(rr["results"].items()):
        meds = [(rows.get(r, {}).get("median_s") or math.nan) * 1e3 for r in rates]
        ax.bar([i + k * width for i in range(len(rates))], meds, width, label=impl)
    ax.set_xticks([i + width * (len(rr["results"]) - 1) / 2 for i in range(len(rates))])
    ax.set_xticklabels([f"{float(r) * 100:g}%" for r in rates])
    ax.set_xlabel("reset rate")
    ax.set_ylabel("ms per train step (W1)")
    ax.set_title("Reset rate (ours must stay flat)")
    ax.legend(fontsize=8)

    ax = axes[1]
    sl = sweeps["seq_len"]
    for impl, rows in sl["results"].items():
        pts = [(t, rows.get(str(t), {}).get("median_s")) for t in sl["T"]]
        pts = [(t, s * 1e3) for t, s in pts if s]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=impl)
    ts = sl["T"]
    ref = sl["results"].get("jaxlstm", {}).get(str(ts[0]), {}).get("median_s")
    if ref:
        ax.plot(ts, [ref * 1e3 * t / ts[0] for t in ts], "k:", label="linear from T0")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter(""))
    ax.set_xlabel("T")
    ax.set_ylabel("ms per train step")
    ax.set_title("Sequence length (must grow linearly)")
    ax.legend(fontsize=8)

    ax = axes[2]
    mem = sweeps["memory"]
    labels, temps, totals = [], [], []
    for label, stats in _jaxlstm_memory_rows(mem):
        labels.append(label.replace("jaxlstm backward=", "").replace(" remat=", "\nremat="))
        temps.append((stats.get("temp_size_in_bytes") or 0) / 2**20)
        totals.append((stats.get("total_bytes") or 0) / 2**20)
    xs = list(range(len(labels)))
    ax.bar(xs, totals, 0.6, label="total (XLA memory analysis)", color="tab:blue")
    ax.bar(xs, temps, 0.35, label="temp", color="tab:orange")
    if mem.get("torch_lstm_saved_for_backward_bytes"):
        labels.append("torch saved")
        ax.bar(
            [len(xs)], [mem["torch_lstm_saved_for_backward_bytes"] / 2**20], 0.6, color="tab:gray"
        )
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_ylabel("MiB")
    ax.set_title(f"Train-step memory at T={mem['T']}")
    ax.legend(fontsize=8)

    m = result["machine"]
    fig.suptitle(f"{result['name']}: {m['cpu_model']}, {m['cores_available']} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
