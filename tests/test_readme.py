"""Every ```python block of README.md runs as written, each on its own.

Each block runs in a fresh interpreter from the repository root, so a block
that relies on a name defined in another block (or on the test process's
settings) fails here. Blocks are collected when this module is imported: a
snippet added to the README is tested without touching this file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# A fenced block: ```python (optionally indented, as inside a list item) ... ```
_BLOCK = re.compile(r"^([ \t]*)```python[ \t]*\n(.*?)^\1```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, dedented source)`` of every ```python block in ``text``."""
    blocks = []
    for match in _BLOCK.finditer(text):
        indent = match.group(1)
        lines = match.group(2).splitlines()
        source = "\n".join(line.removeprefix(indent) for line in lines)
        blocks.append((text.count("\n", 0, match.start()) + 1, source + "\n"))
    return blocks


BLOCKS = python_blocks(README.read_text())


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


def test_block_extraction_handles_indented_and_adjacent_blocks():
    text = "a\n```python\nx = 1\n```\n- item\n\n  ```python\n  y = 2\n  ```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (7, "y = 2\n")]


@pytest.mark.parametrize("line, source", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs_as_written(line, source):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, (
        f"README.md block at line {line} failed:\n{source}\n"
        f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    )
