"""Fail fast, instead of hanging, in a process forked after JAX started.

XLA:CPU runs programs on thread pools that its client creates when JAX's
backend starts. ``fork()`` copies the parent's memory but not its threads, so
in the child those pools have no workers and the first program that uses them
waits forever (measured: the bridge's LSTM hung in 5 forked children out of 5;
JAX itself warns that fork is incompatible with it). Re-creating the backend in
the child would need JAX internals and still leaves jit's caches holding the
parent's executables, so the bridge refuses to run there, with a message that
says what to do. A child forked *before* JAX started its backend is a fresh
JAX process and works.
"""

from __future__ import annotations

import os

__all__ = ["check_not_forked"]

_forked_after_jax_started = False


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - a future JAX without this module
        return True  # assume the worst: refusing is safe, hanging is not
    checker = getattr(xla_bridge, "backends_are_initialized", None)
    return True if checker is None else bool(checker())


_parent_had_backend = False


def _before_fork() -> None:
    global _parent_had_backend
    _parent_had_backend = _backend_started()


def _after_fork_in_child() -> None:
    global _forked_after_jax_started
    _forked_after_jax_started = _forked_after_jax_started or _parent_had_backend


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def check_not_forked(what: str) -> None:
    """Raises if this process was forked from one whose JAX backend had started.

    Args:
      what: the caller, for the message (e.g. ``"bridge.LSTMModule"``).

    Raises:
      RuntimeError: in such a child, before any JAX call that could hang.
    """
    if _forked_after_jax_started:
        raise RuntimeError(
            f"{what} cannot run in this process: it was forked (multiprocessing start "
            "method 'fork') from a process whose JAX runtime had already started, and "
            "JAX's runtime threads do not survive fork(); the computation would hang. "
            "Start worker processes with 'spawn' or 'forkserver' instead, e.g. "
            "multiprocessing.set_start_method('spawn', force=True) or "
            "multiprocessing.get_context('spawn'); torchrl's collectors use 'spawn' "
            "unless a global start method was set."
        )
