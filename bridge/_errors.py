"""Exception types of the bridge."""

from __future__ import annotations

__all__ = ["DtypeError"]


class DtypeError(TypeError, ValueError):
    """An input whose dtype does not match the module's parameters (or another input).

    A ``TypeError`` by nature, and a ``ValueError`` because torchrl's
    ``LSTMModule`` raises ``ValueError`` for the same mistake: code written for
    torchrl (``except ValueError``) catches it unchanged.
    """
