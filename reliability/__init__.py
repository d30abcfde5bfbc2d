"""Reliability proofs for kf2v: fault soak, crash-and-resume, and the audit that checks them.

``python -m reliability.soak`` runs the full soak and writes ``RELIABILITY.md``; the
fast versions of the same checks run in the normal test suite (``tests/test_reliability_*``).
"""
