"""Smoke test of ``python -m benchmarks.throughput --quick``: it runs and writes its figures.

No timing assertions: performance is checked by running the benchmark, never in tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("optax")
pytest.importorskip("gymnax")

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_quick_run_writes_every_point(tmp_path, run_python):
    run_python(
        "-m",
        "benchmarks.throughput",
        "--quick",
        "--out-dir",
        tmp_path,
        "--point-timeout",
        "400",
        env={"XLA_FLAGS": ""},  # the benchmark forces its own CPU devices
        timeout=900,
    )
    results = json.loads((tmp_path / "throughput_smoke.json").read_text())
    assert [(p["cell"], p["devices"], p["seeds"]) for p in results["points"]] == [
        ("lstm", 1, 1),
        ("lstm", 2, 2),
        ("gru", 2, 2),
    ]
    for point in results["points"]:
        for kind in ("jaxlstm", "purejaxrl"):
            assert point[kind]["steps_per_s"] > 0
        assert point["ratio"] == pytest.approx(
            point["jaxlstm"]["steps_per_s"] / point["purejaxrl"]["steps_per_s"]
        )
    assert "load average" in results["uptime_before"]
    table = (tmp_path / "throughput_smoke.md").read_text()
    assert "| lstm | 2 | 2 |" in table and "| gru | 2 | 2 |" in table
    assert "Target ratio >= 1.0" in table
