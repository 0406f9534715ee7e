"""Benchmarks: jaxlstm against its peers, measured in one interleaved run.

Run ``python -m benchmarks.compare`` (``--quick`` for a CI-sized smoke run).
The results land in ``benchmarks/results/<name>.{json,md,png}``.

Nothing here is imported by ``jaxlstm`` or ``bridge``; performance is checked
by running this package, never by timed unit tests.
"""
