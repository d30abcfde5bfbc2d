"""Prefect events for automations: one ``kf2v.video.persisted`` per video kept.

The batch and the standalone ``persist_video`` task emit the same event, so an automation
("when a video lands, run the next deployment") works whichever way the video was made.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from kf2v_tasks.generation.persist import PersistedVideo

logger = logging.getLogger("kf2v_tasks.events")

VIDEO_PERSISTED = "kf2v.video.persisted"


def video_resource_id(video: PersistedVideo) -> str:
    """The event resource of a video: its work fingerprint, else its task id."""
    return f"kf2v.video.{video.fingerprint or video.task_id}"


def emit_video_persisted(
    video: PersistedVideo, *, row_id: Optional[str] = None, row: Optional[int] = None
) -> None:
    """Emit ``kf2v.video.persisted`` for ``video`` (best effort: the video is already safe).

    Args:
        video: the persisted video.
        row_id: the manifest row id, when the video belongs to a batch row.
        row: the manifest row number.

    Example:
        ```python
        from kf2v_tasks.events import emit_video_persisted
        emit_video_persisted(video, row_id="sunrise", row=2)
        ```
    """
    try:
        from prefect.events import emit_event

        name = row_id or video.path.rsplit("/", 1)[-1]
        resource = {"prefect.resource.id": video_resource_id(video), "prefect.resource.name": name}
        if row_id:
            resource["kf2v.row.id"] = row_id
        payload = {
            "path": video.path,
            "sha256": video.sha256,
            "bytes": video.bytes,
            "task_id": video.task_id,
        }
        facts = video.model_dump(
            mode="json", include={"cost", "currency", "resolution", "duration_seconds", "model"}
        )
        payload.update({k: v for k, v in facts.items() if v is not None})
        if row_id is not None:
            payload["row_id"] = row_id
        if row is not None:
            payload["row"] = row
        emit_event(event=VIDEO_PERSISTED, resource=resource, payload=payload)
    except Exception:  # events are best effort; the video is already safe
        logger.warning("could not emit %s for %s", VIDEO_PERSISTED, video.path, exc_info=True)
