"""Smoke test of the benchmark suite: ``python -m benchmarks.compare --quick`` runs end to end.

It checks that the run writes its JSON, markdown and plot, and that they hold
every implementation and every workload. There are no timing assertions:
performance is checked by running the benchmarks, never in timed tests.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from benchmarks import compare
from benchmarks._workloads import main_workloads

ROOT = Path(__file__).resolve().parents[1]
NAME = "smoke"


def _bridge_exists() -> bool:
    if importlib.util.find_spec("bridge") is None:
        return False
    import bridge

    return hasattr(bridge, "LSTMModule")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, run_python) -> tuple[Path, dict, str]:
    out_dir = tmp_path_factory.mktemp("benchmarks")
    proc = run_python(
        "-m", "benchmarks.compare", "--quick", "--out-dir", out_dir, "--name", NAME, timeout=1800
    )
    result = json.loads((out_dir / f"{NAME}.json").read_text())
    return out_dir, result, proc.stdout


def test_writes_json_markdown_and_plot(quick_run):
    out_dir, _, _ = quick_run
    for suffix in ("json", "md", "png"):
        path = out_dir / f"{NAME}.{suffix}"
        assert path.is_file() and path.stat().st_size > 0, f"missing {path}"


def test_every_implementation_ran_every_workload(quick_run):
    _, result, _ = quick_run
    workloads = [w.name for w in main_workloads(quick=True)]
    assert sorted(result["workloads"]) == sorted(workloads)
    assert sorted(result["implementations"]) == sorted(compare.IMPLEMENTATIONS)
    allowed_na = set() if _bridge_exists() else {"bridge"}
    for wname in workloads:
        rows = result["workloads"][wname]["results"]
        assert sorted(rows) == sorted(compare.IMPLEMENTATIONS), wname
        for impl, row in rows.items():
            if impl in allowed_na and row["status"] == "n/a":
                assert "not available" in row["reason"]
                continue
            assert row["status"] == "ok", f"{impl} on {wname}: {row}"
            assert row["median_s"] > 0 and len(row["samples_s"]) == result["repeats"]
        assert result["workloads"][wname]["matmul_bound_s"] > 0


def test_inference_outputs_agree_across_implementations(quick_run):
    # Guards the benchmark itself: every row computes the same function.
    _, result, _ = quick_run
    parity = result["workloads"]["W3_infer"]["parity"]
    for impl, p in parity.items():
        assert p["ok"], f"{impl}: {p}"


def test_markdown_names_every_implementation_and_workload(quick_run):
    out_dir, result, _ = quick_run
    text = (out_dir / f"{NAME}.md").read_text()
    for label, *_ in compare.IMPLEMENTATIONS.values():
        assert label in text
    for wname in result["workloads"]:
        assert wname in text


def test_sweeps_levers_and_targets_are_reported(quick_run):
    _, result, stdout = quick_run
    sweeps = result["sweeps"]
    assert set(sweeps["reset_rate"]["results"]["jaxlstm"]) == {"0", "0.02", "0.5"}
    assert len(sweeps["seq_len"]["results"]["jaxlstm"]) == len(sweeps["seq_len"]["T"])
    for backward in ("custom", "auto"):
        for remat in (False, True):
            label = f"jaxlstm backward={backward} remat={remat}"
            assert sweeps["memory"][label]["total_bytes"] > 0
            assert sweeps["memory"]["deep"][label]["temp_per_row_step_bytes"] > 0
    assert result["levers"] and all(lv["fastest"] for lv in result["levers"].values())
    for lv in result["levers"].values():
        for name, row in lv["results"].items():
            assert row["status"] == "ok", f"lever {name}: {row}"
            assert row.get("parity", {"ok": True})["ok"], f"lever {name}: {row['parity']}"
    assert len(result["targets"]) == 12
    for target in result["targets"]:
        assert target["result"] in ("PASS", "MISS", "N/A")
        assert f"{target['result']:<4}  {target['target']}" in stdout
    assert result["peak_matmul"]["peak_flops_per_s"] > 0
    assert result["machine"]["cpu_model"] and result["machine"]["versions"]["jax"]
