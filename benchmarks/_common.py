"""What every implementation's builder returns, and how it says it cannot run."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np


class NotAvailable(Exception):
    """The implementation cannot run this workload (missing package, unsupported mode)."""


@dataclasses.dataclass
class Bench:
    """One implementation prepared for one workload.

    ``run()`` performs one call and returns only when the work is done (JAX
    results are blocked on). For ``infer`` workloads it returns the outputs
    ``y [B, T, H]``, which the harness compares across implementations.
    """

    run: Callable[[], Any]
    resets: bool = True  # False for peers that ignore is_init (raw nn.LSTM, flax nn.RNN)
    note: str = ""


def to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)
