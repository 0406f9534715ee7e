"""``examples/torch_policy_to_jax.py`` end to end: export in torch, then load and continue in
an interpreter where ``import torch`` fails."""

from __future__ import annotations

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


@pytest.fixture
def run(run_python):
    """Runs ``python *args`` (600 s limit); returns stdout + stderr."""

    def run_script(args: list[str], returncode: int = 0) -> str:
        result = run_python(*args, returncode=returncode, timeout=600)
        return result.stdout + result.stderr

    return run_script


def test_torch_policy_to_jax(tmp_path, run):
    out = run([str(SCRIPT), "--stage", "torch", "--out-dir", str(tmp_path)])
    assert "module.0.lstm.weight_ih_l0" in out
    assert (tmp_path / "policy_state_dict.npz").exists()

    out = run(["-c", _WITHOUT_TORCH, str(SCRIPT), "--stage", "jax", "--out-dir", str(tmp_path)])
    for check in [
        "LSTM output vs torch step mode",
        "LSTM output vs torch recurrent mode",
        "state c after every step",
        "policy action",
    ]:
        assert check in out, out
    assert "critic update" in out and "fine-tuned LSTM arrays" in out, out


def test_jax_stage_before_export_says_what_to_run(tmp_path, run):
    out = run([str(SCRIPT), "--stage", "jax", "--out-dir", str(tmp_path)], returncode=1)
    assert "FileNotFoundError" not in out and "Traceback" not in out, out
    assert "policy_state_dict.npz, rollout.npz are missing" in out, out
    assert f"--stage torch --out-dir {tmp_path}" in out, out


def test_all_stages_save_finetuned_weights_torchrl_loads(tmp_path, run):
    import numpy as np
    import torch

    out = run([str(SCRIPT), "--out-dir", str(tmp_path)])
    assert "the fine-tuned policy loads into torchrl" in out, out
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import torch_policy_to_jax as example
    finally:
        sys.path.pop(0)
    original = dict(np.load(tmp_path / "policy_state_dict.npz"))
    tuned = dict(np.load(tmp_path / "finetuned_policy_state_dict.npz"))
    assert tuned.keys() == original.keys()
    # The LSTM was fine-tuned, the actor head kept.
    assert not np.array_equal(
        tuned["module.0.lstm.weight_hh_l0"], original["module.0.lstm.weight_hh_l0"]
    )
    np.testing.assert_array_equal(
        tuned["module.1.module.0.weight"], original["module.1.module.0.weight"]
    )
    # torch's own state_dict file loads, strictly, into the torchrl policy.
    policy = example.build_torch_policy(example.Config(), 3)
    policy.load_state_dict(torch.load(tmp_path / "finetuned_policy_state_dict.pt"))
    np.testing.assert_array_equal(
        policy.state_dict()["module.0.lstm.weight_hh_l0"].numpy(),
        tuned["module.0.lstm.weight_hh_l0"],
    )
    value_head = np.load(tmp_path / "value_head.npz")
    assert value_head["weight"].shape == (1, 32) and value_head["bias"].shape == (1,)


def test_options_have_help(tmp_path, run):
    out = " ".join(run([str(SCRIPT), "--help"]).split())  # argparse wraps the help lines
    for text in (
        "load them, check, fine-tune and save",
        "where the .npz/.pt files go",
        "critic fine-tuning steps in JAX",
    ):
        assert text in out, out
