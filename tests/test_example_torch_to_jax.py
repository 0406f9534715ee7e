"""``examples/torch_policy_to_jax.py`` end to end: export in torch, then load and continue in
an interpreter where ``import torch`` fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchrl")
pytest.importorskip("gymnasium")
pytest.importorskip("optax")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "torch_policy_to_jax.py"

# Runs the script's JAX stage with torch blocked: any `import torch` raises ImportError.
_WITHOUT_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def _run(args: list[str]) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=SCRIPT.parents[1],
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def test_torch_policy_to_jax(tmp_path):
    out = _run([str(SCRIPT), "--stage", "torch", "--out-dir", str(tmp_path)])
    assert "module.0.lstm.weight_ih_l0" in out
    assert (tmp_path / "policy_state_dict.npz").exists()

    out = _run(["-c", _WITHOUT_TORCH, str(SCRIPT), "--stage", "jax", "--out-dir", str(tmp_path)])
    for check in [
        "LSTM output vs torch step mode",
        "LSTM output vs torch recurrent mode",
        "state c after every step",
        "policy action",
    ]:
        assert check in out, out
    assert "critic update" in out and "fine-tuned LSTM arrays" in out, out
