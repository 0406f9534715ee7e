"""The README's Quick start snippet runs as written (in a fresh interpreter, without torch)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def quick_start_code() -> str:
    text = README.read_text()
    section = text.index("## Quick start")
    start = text.index("```python", section) + len("```python")
    return text[start : text.index("```", start)]


def test_quick_start_runs():
    code = quick_start_code() + "\nimport sys\nassert 'torch' not in sys.modules\nprint('ok')\n"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
