"""Sequence-length buckets: a bounded number of compiled programs for any T.

XLA compiles one program per input shape. Replay buffers that sample slices of
varying length (torchrl's ``SliceSampler(strict_length=False)``) give a new T
on almost every batch, hence a compile on almost every call. The bridge pads T
up to a bucket instead: the padded steps are marked ``is_init`` (each starts a
new trajectory) and are cut off afterwards. An LSTM only looks backwards, so
the real steps' outputs are unchanged, the last real step stays a trajectory
end, and the gradients of the padded steps are zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

import torch

__all__ = ["TimeBuckets", "pad_time", "resolve_time_buckets", "time_bucket"]

TimeBuckets = Union[str, None, Callable[[int], int]]  # noqa: UP007 (a runtime alias)


def time_bucket(steps: int) -> int:
    """The default bucket of a sequence length: at most 4 buckets per octave.

    1, 2, 4, 8, then multiples of 8 up to 64 (16, 24, ..., 64), then 4 evenly
    spaced lengths per doubling (80, 96, 112, 128, 160, 192, ...). Padding adds
    at most 7 steps up to T=64 and less than 25% of T above, and the lengths
    1..1024 share 27 programs.

    Args:
      steps: the sequence length T, >= 1.

    Returns:
      The padded length, >= ``steps``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1. Got {steps}.")
    if steps <= 8:
        return 1 << (steps - 1).bit_length()
    granularity = max(8, 1 << (math.ceil(math.log2(steps)) - 3))
    return -(-steps // granularity) * granularity


def resolve_time_buckets(time_buckets: TimeBuckets) -> Callable[[int], int] | None:
    """``"auto"`` -> ``time_bucket``; None -> None (no padding); a callable as is."""
    if time_buckets == "auto":
        return time_bucket
    if time_buckets is None or callable(time_buckets):
        return time_buckets
    raise ValueError(
        f"time_buckets must be 'auto', None or a callable int -> int. Got {time_buckets!r}."
    )


def padded_length(bucket: Callable[[int], int], steps: int) -> int:
    """``bucket(steps)``, checked: a bucket shorter than the sequence would drop steps."""
    padded = int(bucket(steps))
    if padded < steps:
        raise ValueError(
            f"time_buckets returned {padded} for a sequence of T={steps} steps; "
            "a bucket must be >= T."
        )
    return padded


def pad_time(tensor: torch.Tensor | None, dim: int, padded: int, value=0) -> torch.Tensor | None:
    """Pads ``tensor`` along ``dim`` to ``padded`` entries filled with ``value``.

    Differentiable: torch's ``cat`` gives the padding a zero gradient.
    """
    if tensor is None:
        return None
    missing = padded - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    fill = torch.full(shape, value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([tensor, fill], dim=dim)
