"""Reusable Prefect flows built from kf2v_tasks (installed as the ``kf2v_flows`` package)."""
