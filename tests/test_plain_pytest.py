"""Plain ``pytest`` (the console script, not ``python -m pytest``) collects from the repo root.

torchrl's wheel installs a top-level ``benchmarks`` package. Without the repo
root first on ``sys.path`` (``pythonpath`` in pyproject.toml), plain ``pytest``
imports that one and collecting tests/test_benchmarks_smoke.py fails with
"cannot import name 'compare' from 'benchmarks'".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pytest_script() -> str:
    script = Path(sys.executable).with_name("pytest")
    if script.exists():
        return str(script)
    found = shutil.which("pytest")
    if found is None:
        pytest.skip("no pytest console script next to this interpreter or on PATH")
    return found


@pytest.mark.parametrize("how", ["pytest", "python -m pytest"])
def test_collection_from_the_repo_root(how):
    command = [_pytest_script()] if how == "pytest" else [sys.executable, "-m", "pytest"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [*command, "--collect-only", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "tests/test_benchmarks_smoke.py::" in result.stdout, output[-5000:]
    assert "error" not in result.stdout.splitlines()[-1], output[-5000:]
