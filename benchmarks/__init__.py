"""bbverify benchmarks: run ``python -m benchmarks`` (``--quick`` for a smoke run).

Every figure comes from one process on one machine, so the ratios between
rows mean something even when the absolute numbers drift. See README.md.
"""
