"""The per-batch events: a batch finished; its budget left rows out."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

from kf2v_tasks.events.core import (
    BATCH_FINISHED,
    BUDGET_EXCEEDED,
    MAX_LISTED_ROWS,
    _emit,
    batch_resource,
    model_resource,
)
from kf2v_tasks.redaction import redact_url


def emit_batch_finished(
    *,
    batch_id: str,
    state: str,
    retryable: bool,
    attempt: int,
    output: str,
    models: Iterable[str] = (),
    **facts: Any,
) -> bool:
    """Emit ``kf2v.batch.finished``, once per batch, whether it ended Completed or Failed.

    Resource labels a trigger can match: ``kf2v.batch.state`` (how the flow run ends),
    ``kf2v.batch.retryable`` (``"true"`` when a re-run could make rows this one did not),
    ``kf2v.batch.attempt`` (``"1"`` for a first run) and ``kf2v.output``. ``facts`` is the
    payload: counts, costs, manifest, results.csv, failed row ids...
    """
    out = redact_url(output)
    resource = {
        "prefect.resource.id": f"kf2v.batch.{batch_id}",
        "prefect.resource.name": out.rstrip("/").rsplit("/", 1)[-1] or out,
        "kf2v.batch.state": state,
        "kf2v.batch.retryable": "true" if retryable else "false",
        "kf2v.batch.attempt": str(attempt),
        "kf2v.output": out,
    }
    payload = {
        "state": state,
        "attempt": attempt,
        "retryable": retryable,
        "output": output,
        "models": sorted(set(models)),
        **facts,
    }
    return _emit(
        BATCH_FINISHED, resource, payload, [model_resource(m) for m in sorted(set(models))]
    )


def emit_budget_exceeded(
    *,
    batch_id: str,
    max_cost: Optional[float],
    rows: list[str],
    output: str,
    models: Iterable[str] = (),
    **facts: Any,
) -> bool:
    """Emit ``kf2v.budget.exceeded``: ``max_cost`` left ``rows`` out of a batch (not submitted)."""
    out = redact_url(output)
    resource = {
        "prefect.resource.id": f"kf2v.batch.{batch_id}",
        "prefect.resource.name": out.rstrip("/").rsplit("/", 1)[-1] or out,
        "kf2v.output": out,
    }
    payload = {
        "max_cost": max_cost,
        "rows_left_out": len(rows),
        "row_ids": rows[:MAX_LISTED_ROWS],
        "output": output,
        **facts,
    }
    related = [batch_resource(batch_id)] + [model_resource(m) for m in sorted(set(models))]
    return _emit(BUDGET_EXCEEDED, resource, payload, related)
