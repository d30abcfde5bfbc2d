"""The per-video events: kept, failed or cancelled, possibly created twice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from kf2v_tasks.events.core import (
    VIDEO_FAILED,
    VIDEO_PERSISTED,
    VIDEO_POSSIBLE_DUPLICATE,
    _emit,
    _video_related,
    _video_resource,
)

if TYPE_CHECKING:
    from kf2v_tasks.generation.persisted import PersistedVideo


def emit_video_persisted(
    video: PersistedVideo,
    *,
    row_id: Optional[str] = None,
    row: Optional[int] = None,
    batch_id: Optional[str] = None,
) -> None:
    """Emit ``kf2v.video.persisted`` for ``video`` (best effort: the video is already safe).

    ``row_id``, ``row`` and ``batch_id`` are given when the video belongs to a batch row.
    """
    resource = _video_resource(
        fingerprint=video.fingerprint,
        task_id=video.task_id,
        output=video.path,
        row_id=row_id,
        model=video.model,
    )
    payload: dict[str, Any] = {
        "path": video.path,
        "output": video.path,
        "sha256": video.sha256,
        "bytes": video.bytes,
        "task_id": video.task_id,
        "row_id": row_id,
        "row": row,
    }
    facts = video.model_dump(
        mode="json", include={"cost", "currency", "resolution", "duration_seconds", "model"}
    )
    payload.update({k: v for k, v in facts.items() if v is not None})
    _emit(VIDEO_PERSISTED, resource, payload, _video_related(video.model, batch_id))


def emit_video_failed(
    *,
    error_code: Optional[str],
    error_message: Optional[str],
    billed: bool = False,
    status: str = "failed",
    output: Optional[str] = None,
    model: Optional[str] = None,
    task_id: Optional[str] = None,
    fingerprint: Optional[str] = None,
    row_id: Optional[str] = None,
    row: Optional[int] = None,
    cost: float = 0.0,
    possible_duplicate: bool = False,
    batch_id: Optional[str] = None,
) -> bool:
    """Emit ``kf2v.video.failed``: a video was not made (failed or cancelled); returns whether
    the event was handed to Prefect.

    ``billed``: the service charged for it (the task succeeded, keeping the video failed);
    ``error_message`` is redacted and cut to 1000 characters; ``possible_duplicate``: an
    ambiguous create happened, so a second task may exist.
    """
    resource = _video_resource(
        fingerprint=fingerprint, task_id=task_id, output=output, row_id=row_id, model=model
    )
    resource["kf2v.video.status"] = status
    payload = {
        "status": status,
        "error_code": error_code,
        "error_message": (error_message or "")[:1000],
        "billed": bool(billed),
        "cost": cost,
        "possible_duplicate": bool(possible_duplicate),
        "output": output,
        "model": model,
        "task_id": task_id,
        "row_id": row_id,
        "row": row,
    }
    return _emit(VIDEO_FAILED, resource, payload, _video_related(model, batch_id))


def emit_possible_duplicate(
    *,
    task_id: Optional[str],
    model: Optional[str] = None,
    fingerprint: Optional[str] = None,
    output: Optional[str] = None,
    row_id: Optional[str] = None,
    row: Optional[int] = None,
    status: Optional[str] = None,
    batch_id: Optional[str] = None,
) -> bool:
    """Emit ``kf2v.video.possible-duplicate``: a create had no clear answer and was retried.

    The work may have been created (and billed) twice; ``task_id`` is the task kept.
    """
    resource = _video_resource(
        fingerprint=fingerprint, task_id=task_id, output=output, row_id=row_id, model=model
    )
    payload = {
        "task_id": task_id,
        "status": status,
        "output": output,
        "model": model,
        "row_id": row_id,
        "row": row,
    }
    return _emit(VIDEO_POSSIBLE_DUPLICATE, resource, payload, _video_related(model, batch_id))
