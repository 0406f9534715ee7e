"""Interleaved timing, thread settings and machine information.

Timing protocol: every implementation of a group is built and warmed up
(its first call compiles; one more call calibrates ``number``); then each repeat runs every implementation once, in an
order rotated from repeat to repeat (round-robin), so that a burst of load on
a shared machine hits all of them alike. A sample is the mean of ``number``
back-to-back calls (``number`` is calibrated so that a sample lasts at least
``min_sample_s``); the reported figure is the median sample.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from ._common import NotAvailable


def set_threads(threads: int) -> dict:
    """Gives torch and XLA the same thread budget. Call before jax or torch do any work.

    ``threads=1`` (the default): torch gets one intra-op thread
    (``torch.set_num_threads(1)``), and XLA:CPU one intra-op worker. XLA has no
    option for the size of its intra-op pool (its YNNPACK/Eigen matmuls use
    it whatever ``--xla_cpu_multi_thread_eigen`` says); it sizes the pool from
    the process's CPU affinity mask when the CPU client is created. So the
    client is created under a one-CPU mask, and the mask is then restored on
    every thread, so the process may still run on any core.
    ``threads=0``: each library's own default (all cores).

    Why one thread: on a machine shared with other jobs, torch's OpenMP
    barriers stall badly when another process holds a core (we measured a
    raw ``nn.LSTM`` train step 20x slower with 2 threads than with 1 on our
    loaded 2-core machine), and mixing budgets would compare the libraries'
    threading rather than their LSTMs.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    xla_threads = "default (from the CPU affinity mask)"
    if threads == 1 and hasattr(os, "sched_setaffinity"):
        cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(cpus)})
        try:
            import jax

            jax.devices()  # creates the CPU client and its intra-op pool: one worker
        finally:
            for task in os.listdir("/proc/self/task"):
                try:
                    os.sched_setaffinity(int(task), cpus)
                except OSError:
                    pass
        xla_threads = "1 (CPU client created under a one-CPU affinity mask, then restored)"
    return {
        "requested": threads,
        "torch_num_threads": torch.get_num_threads(),
        "xla_intra_op_threads": xla_threads,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_platforms": os.environ.get("JAX_PLATFORMS", ""),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    import jax

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "cores_available": affinity,
        "load_average_at_start": load,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "jax_backend": jax.default_backend(),
        "versions": {
            name: _version(name)
            for name in (
                "jax",
                "jaxlib",
                "flax",
                "numpy",
                "torch",
                "torchrl",
                "tensordict",
                "hoptorch",
                "jaxlstm",
            )
        },
    }


class Timer:
    """Runs groups of implementations interleaved; collects medians."""

    def __init__(self, repeats: int, min_sample_s: float, warmup: int = 1, log=print):
        self.repeats = repeats
        self.min_sample_s = min_sample_s
        self.warmup = warmup
        self.log = log

    def build(self, builders: dict[str, Callable[[], Any]]) -> tuple[dict, dict]:
        """Calls each builder; returns ``(benches, statuses)`` with n/a and errors recorded."""
        benches, statuses = {}, {}
        for name, builder in builders.items():
            try:
                benches[name] = builder()
            except NotAvailable as e:
                statuses[name] = {"status": "n/a", "reason": str(e)}
                self.log(f"    {name}: n/a ({e})")
            except Exception as e:  # noqa: BLE001 - a broken peer must not sink the run
                statuses[name] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
                self.log(f"    {name}: ERROR while building\n{traceback.format_exc()}")
        return benches, statuses

    def time_group(self, runs: dict[str, Callable[[], Any]]) -> dict[str, dict]:
        """Warms up, calibrates and times ``runs`` interleaved. Returns per-name results."""
        results: dict[str, dict] = {}
        live: dict[str, Callable[[], Any]] = {}
        number: dict[str, int] = {}
        for name, run in runs.items():
            try:
                t0 = time.perf_counter()
                run()
                first = time.perf_counter() - t0
                for _ in range(self.warmup - 1):
                    run()
                t0 = time.perf_counter()
                run()
                once = time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001 - recorded, the others still run
                results[name] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
                self.log(f"    {name}: ERROR while warming up\n{traceback.format_exc()}")
                continue
            live[name] = run
            number[name] = max(1, min(10_000, math.ceil(self.min_sample_s / max(once, 1e-7))))
            results[name] = {"status": "ok", "first_call_s": first, "number": number[name]}

        samples: dict[str, list[float]] = {name: [] for name in live}
        names = list(live)
        for r in range(self.repeats):
            order = names[r % len(names) :] + names[: r % len(names)] if names else []
            for name in order:
                run, k = live[name], number[name]
                try:
                    t0 = time.perf_counter()
                    for _ in range(k):
                        run()
                    samples[name].append((time.perf_counter() - t0) / k)
                except Exception as e:  # noqa: BLE001 - recorded, the others still run
                    results[name] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
                    self.log(f"    {name}: ERROR while timing\n{traceback.format_exc()}")
                    live.pop(name)
                    names.remove(name)
                    break
        for name, s in samples.items():
            if results[name]["status"] != "ok":
                continue
            results[name]["samples_s"] = s
            results[name]["median_s"] = statistics.median(s)
            results[name]["min_s"] = min(s)
        return results


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    if seconds >= 10e-6:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1e6:.2g} µs"
