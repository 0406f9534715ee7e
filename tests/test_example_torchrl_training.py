"""``examples/torchrl_recurrent_training.py`` end to end with its CI settings.

Recurrent DQN from torchrl parts (MultiSyncCollector with spawned workers,
SliceSampler replay, DQNLoss with a target network) around ``bridge.LSTMModule``
must learn the memory task: chance is 0.5, a policy without memory cannot do
better, and the trained greedy policy must answer at least 90% of the
evaluation episodes right.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("torchrl")
pytest.importorskip("gymnasium")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "torchrl_recurrent_training.py"


@pytest.fixture(scope="module")
def ci_run(run_python) -> str:
    # run_python puts this checkout first on PYTHONPATH: the spawned workers import it too.
    return run_python(SCRIPT, "--ci", timeout=600).stdout


def test_recurrent_dqn_learns_the_memory_task(ci_run):
    match = re.search(r"RESULT before=([\d.]+) after=([\d.]+)", ci_run)
    assert match, ci_run
    before, after = float(match.group(1)), float(match.group(2))
    assert before <= 0.65, ci_run
    assert after >= 0.9, ci_run


def test_workers_receive_the_updated_weights(ci_run):
    # The workers act with their own copies of the policy: their success rises
    # only if update_policy_weights_() delivers the trained weights (and the
    # annealed epsilon).
    collected = [float(x) for x in re.findall(r"collected success ([\d.]+)", ci_run)]
    assert len(collected) >= 10, ci_run
    assert min(collected[:2]) < 0.8 and sum(collected[-3:]) / 3 >= 0.85, collected
