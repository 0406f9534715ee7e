"""Every ```python block of README.md runs as written, each on its own.

Each block runs in a fresh interpreter from the repository root, so a block
that relies on a name defined in another block (or on the test process's
settings) fails here. Blocks are collected when this module is imported: a
snippet added to the README is tested without touching this file.
"""

from __future__ import annotations

import re
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


README_TEXT = README.read_text()
BLOCKS = python_blocks(README_TEXT)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


def test_block_extraction_handles_indented_and_adjacent_blocks():
    text = "a\n```python\nx = 1\n```\n- item\n\n  ```python\n  y = 2\n  ```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (7, "y = 2\n")]


@pytest.mark.parametrize("line, source", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs_as_written(line, source, run_python):
    run_python("-c", source, timeout=600)


def test_quick_start_runs_without_torch(run_python):
    # The core's quick start is pure JAX: it must not pull torch in.
    # The snapshot BLOCKS came from, so that line numbers agree.
    section_line = README_TEXT.count("\n", 0, README_TEXT.index("## Quick start"))
    (quick_start,) = [src for line, src in BLOCKS if line > section_line][:1]
    code = quick_start + "import sys\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    run_python("-c", code)
