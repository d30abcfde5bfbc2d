"""The core of the kf2v events: their names, redaction, and the resources they share."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from kf2v_tasks.redaction import redact_text, redact_url, scrub

logger = logging.getLogger("kf2v_tasks.events")

VIDEO_PERSISTED = "kf2v.video.persisted"
VIDEO_FAILED = "kf2v.video.failed"
VIDEO_POSSIBLE_DUPLICATE = "kf2v.video.possible-duplicate"
BATCH_FINISHED = "kf2v.batch.finished"
BUDGET_EXCEEDED = "kf2v.budget.exceeded"

#: Tag of a flow run that re-runs a batch (``kf2v-attempt:2``); absent on a first run.
ATTEMPT_TAG = "kf2v-attempt:"
#: Tag prefix of a shard run (kf2v_tasks.batch.sharding): its parent reports the batch.
SHARD_TAG = "kf2v-shard:"
#: Row ids listed at most in a batch event's payload (the rest are in results.csv).
MAX_LISTED_ROWS = 100
#: Who materializes kf2v assets (the ``asset-materialized-by`` related resource).
MATERIALIZED_BY = "kf2v"


def attempt_tag(attempt: int) -> str:
    """The tag that marks a run as attempt ``attempt`` of a batch."""
    return f"{ATTEMPT_TAG}{attempt}"


def attempt_from_tags(tags: Iterable[str]) -> int:
    """Which attempt of a batch a run with ``tags`` is (1 when untagged)."""
    found = [int(t[len(ATTEMPT_TAG) :]) for t in tags if re.fullmatch(r"kf2v-attempt:\d+", t)]
    return max(found, default=1)


def is_shard(tags: Iterable[str]) -> bool:
    """Whether a run with ``tags`` is one shard of a batch (its parent reports the batch)."""
    return any(t.startswith(SHARD_TAG) for t in tags)


def _label(value: Any) -> str:
    return redact_text(str(value))


def _emit(
    event: str,
    resource: Mapping[str, Any],
    payload: Mapping[str, Any],
    related: Iterable[Mapping[str, Any]] = (),
) -> bool:
    """Emit one event, every string redacted; False (logged) when it could not be sent."""
    try:
        from prefect.events import emit_event

        res = {k: _label(v) for k, v in resource.items() if v is not None}
        rel = [{k: _label(v) for k, v in r.items() if v is not None} for r in related]
        body = scrub({k: v for k, v in payload.items() if v is not None})
        return emit_event(event=event, resource=res, related=rel, payload=body) is not None
    except Exception:  # events are best effort: the work itself is done
        logger.warning("could not emit %s", event, exc_info=True)
        return False


def model_resource(model: str) -> dict[str, str]:
    """The related resource of a model (role ``model``)."""
    return {
        "prefect.resource.id": f"kf2v.model.{model}",
        "prefect.resource.role": "model",
        "prefect.resource.name": model,
    }


def batch_resource(batch_id: str) -> dict[str, str]:
    """The related resource of a batch (role ``batch``), for its rows' events."""
    return {"prefect.resource.id": f"kf2v.batch.{batch_id}", "prefect.resource.role": "batch"}


def _video_resource(
    *,
    fingerprint: Optional[str],
    task_id: Optional[str],
    output: Optional[str],
    row_id: Optional[str],
    model: Optional[str],
) -> dict[str, Any]:
    out = redact_url(output) if output else None
    ident = fingerprint or task_id or out or "unknown"
    name = row_id or (out.rsplit("/", 1)[-1] if out else ident)
    return {
        "prefect.resource.id": f"kf2v.video.{ident}",
        "prefect.resource.name": name,
        "kf2v.row.id": row_id,
        "kf2v.output": out,
        "kf2v.model": model,
        "kf2v.task.id": task_id,
    }


def _video_related(model: Optional[str], batch_id: Optional[str]) -> list[dict[str, str]]:
    related = [model_resource(model)] if model else []
    if batch_id:
        related.append(batch_resource(batch_id))
    return related
