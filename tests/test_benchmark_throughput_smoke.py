"""Smoke test of ``python -m benchmarks.throughput --quick``: it runs and writes its figures.

No timing assertions: performance is checked by running the benchmark, never in tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("optax")
pytest.importorskip("gymnax")

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_quick_run_writes_every_point(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)  # the benchmark forces its own CPU devices
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.throughput", "--quick", "--out-dir", str(tmp_path),
         "--point-timeout", "400"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = json.loads((tmp_path / "throughput_smoke.json").read_text())
    assert [(p["cell"], p["devices"], p["seeds"]) for p in results["points"]] == [
        ("lstm", 1, 1), ("lstm", 2, 2), ("gru", 2, 2)]
    for point in results["points"]:
        for kind in ("jaxlstm", "purejaxrl"):
            assert point[kind]["steps_per_s"] > 0
        assert point["ratio"] == pytest.approx(
            point["jaxlstm"]["steps_per_s"] / point["purejaxrl"]["steps_per_s"])
    assert "load average" in results["uptime_before"]
    table = (tmp_path / "throughput_smoke.md").read_text()
    assert "| lstm | 2 | 2 |" in table and "| gru | 2 | 2 |" in table
    assert "Target ratio >= 1.0" in table
