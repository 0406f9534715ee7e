"""``benchmarks/gru.py`` runs every GRU peer at CI size and reports issue 8's targets.

A smoke test, not a timing test: it checks that each implementation builds and
runs in both workloads and that the target ratios come from this run.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torchrl")

from benchmarks import gru


def test_quick_run_times_every_peer_and_reports_the_targets():
    out = gru.run(quick=True, repeats=1, min_sample_s=0.01)
    assert set(out["results"]) == {"W1_train", "W4_step_B1"}
    for workload, results in out["results"].items():
        for name in gru.BUILDERS:
            assert results[name]["status"] == "ok", (workload, name, results[name])
            assert results[name]["median_s"] > 0
    assert [(t["peer"], t["bound"]) for t in out["targets"]] == [
        ("purejaxrl ScannedRNN GRU", 0.85),
        ("torchrl GRUModule pad", 0.15),
    ]
    for target in out["targets"]:
        ratio = target["ratio"]
        assert target["status"] == ("met" if ratio <= target["bound"] else "missed")
