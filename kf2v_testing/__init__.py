"""Test helpers for the suite, the benchmarks and the soak: a moto S3 server and an S3 fault proxy.

Not part of the installed package (it needs moto, a test-only dependency); importable from
the repository's root, which pytest puts on ``sys.path`` (``pythonpath`` in pyproject.toml).
"""
