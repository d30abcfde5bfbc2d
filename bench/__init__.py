"""Benchmarks: kf2v_tasks against the official dashscope SDK and against the floor (see run.py)."""
