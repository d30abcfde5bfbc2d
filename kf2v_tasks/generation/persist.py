"""Keeping a finished task's video: stream it to storage, write its sidecar, close its ledger entry.

Order matters for crash safety: the video is committed first (atomically), then the
sidecar, then the ledger says "persisted". A crash anywhere in between leaves the ledger
at "submitted", so a re-run re-attaches to the same task and downloads again — it never
generates again.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Optional

from pydantic import BaseModel

from kf2v_tasks.dashscope.models import TaskState, TaskStatus
from kf2v_tasks.errors import TaskExpiredError, UrlExpiredError

if TYPE_CHECKING:
    from kf2v_tasks.dashscope.client import Kf2vClient
    from kf2v_tasks.generation.ledger import Ledger
    from kf2v_tasks.generation.submit import Submission

logger = logging.getLogger("kf2v_tasks.generation.persist")


class PersistedVideo(BaseModel):
    """Where a video was kept and how to check it."""

    path: str
    sidecar_path: str
    sha256: str
    bytes: int
    task_id: str
    fingerprint: Optional[str] = None
    download_attempts: int = 1
    reused_existing: bool = False


def redact_url(url: Optional[str]) -> Optional[str]:
    """Drop the query string (signature, expiry) of a signed URL before it is written anywhere."""
    from kf2v_tasks.storage.download import redact_query

    return redact_query(url) if url else url


def build_sidecar(
    state: TaskState,
    *,
    sha256: str,
    size: int,
    path: str,
    submission: Optional[Submission] = None,
    timings: Optional[dict[str, Any]] = None,
    extra: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """The JSON document kept beside each video."""

    def iso(d: Optional[datetime]) -> Optional[str]:
        return d.isoformat() if d else None

    doc: dict[str, Any] = {
        "kf2v_sidecar_version": 1,
        "video": path,
        "sha256": sha256,
        "bytes": size,
        "task_id": state.task_id,
        "task_status": state.status.value,
        "query_request_id": state.request_id,
        "create_request_id": submission.request_id if submission else None,
        "fingerprint": submission.fingerprint if submission else None,
        "model": submission.model if submission else None,
        "parameters": submission.parameters if submission else None,
        "prompt": submission.prompt if submission else state.orig_prompt,
        "negative_prompt": submission.negative_prompt if submission else None,
        "orig_prompt": state.orig_prompt,
        "actual_prompt": state.actual_prompt,
        "usage": state.usage.model_dump(by_alias=True, exclude_none=True) if state.usage else None,
        "possible_duplicate": submission.possible_duplicate if submission else False,
        "video_source": redact_url(state.video_url),
        "timings": {
            "submitted_at": iso(submission.submitted_at) if submission else None,
            "service_submit_time": iso(state.submit_time),
            "service_scheduled_time": iso(state.scheduled_time),
            "service_end_time": iso(state.end_time),
            "persisted_at": datetime.now(UTC).isoformat(),
            **(timings or {}),
        },
        "status_history": [
            {"status": h.status.value, "seen_at": h.seen_at.isoformat()} for h in state.history
        ],
    }
    if extra:
        doc["extra"] = extra
    return doc


async def persist_task_video(
    state: TaskState,
    destination: str,
    *,
    client: Optional[Kf2vClient] = None,
    submission: Optional[Submission] = None,
    ledger: Optional[Ledger] = None,
    storage_options: Optional[dict] = None,
    extra: Optional[dict[str, Any]] = None,
) -> PersistedVideo:
    """Stream ``state.video_url`` to ``destination`` atomically and record it.

    Args:
        state: a SUCCEEDED task state (from ``poll_until_done``).
        destination: any fsspec URL or local path of the video.
        client: used to re-query the task when the signed URL has expired.
        submission: the submission, for the sidecar and the ledger.
        ledger: marks the fingerprint "persisted" once the files are committed.
        storage_options: fsspec options of the destination.
        extra: more fields for the sidecar (e.g. the manifest row).
    """
    from kf2v_tasks.storage.download import (
        read_json,
        sidecar_path,
        stream_to_storage,
        verify_file,
        write_json_atomic,
    )

    if state.status is not TaskStatus.SUCCEEDED or not state.video_url:
        raise ValueError(
            f"task {state.task_id} is {state.status.value}; only SUCCEEDED tasks have a video"
        )
    side = sidecar_path(destination)

    # A crash after the video was committed but before the ledger said so: keep the file.
    existing = await _existing_sidecar(read_json, side, storage_options)
    if (
        existing
        and existing.get("task_id") == state.task_id
        and await verify_file(
            destination, existing.get("sha256", ""), storage_options=storage_options
        )
    ):
        result = PersistedVideo(
            path=destination,
            sidecar_path=side,
            sha256=existing["sha256"],
            bytes=int(existing.get("bytes", 0)),
            task_id=state.task_id,
            fingerprint=submission.fingerprint if submission else None,
            download_attempts=0,
            reused_existing=True,
        )
        await _mark_persisted(ledger, submission, result)
        return result

    async def refresh_url() -> str:
        if client is None:
            raise UrlExpiredError(
                f"video URL of task {state.task_id} expired and no client to refresh it"
            )
        fresh = await client.get_task(state.task_id)
        if fresh.status is TaskStatus.SUCCEEDED and fresh.video_url:
            logger.info("refreshed the expired video URL of task %s", state.task_id)
            return fresh.video_url
        raise TaskExpiredError(
            state.task_id,
            f"task {state.task_id} is {fresh.status.value}; its video can no longer be fetched",
        )

    t0 = time.monotonic()
    result = await stream_to_storage(
        state.video_url,
        destination,
        storage_options=storage_options,
        refresh_url=refresh_url,
        http=client.download_http if client is not None else None,
    )
    download_seconds = time.monotonic() - t0
    sidecar = build_sidecar(
        state,
        sha256=result.sha256,
        size=result.bytes,
        path=destination,
        submission=submission,
        timings={"download_seconds": round(download_seconds, 3)},
        extra=extra,
    )
    await write_json_atomic(side, sidecar, storage_options=storage_options)
    persisted = PersistedVideo(
        path=destination,
        sidecar_path=side,
        sha256=result.sha256,
        bytes=result.bytes,
        task_id=state.task_id,
        fingerprint=submission.fingerprint if submission else None,
        download_attempts=result.attempts,
    )
    await _mark_persisted(ledger, submission, persisted)
    return persisted


async def _existing_sidecar(read_json, path: str, storage_options) -> Optional[dict]:
    try:
        return await read_json(path, storage_options=storage_options)
    except (FileNotFoundError, OSError, ValueError):
        return None


async def _mark_persisted(
    ledger: Optional[Ledger], submission: Optional[Submission], video: PersistedVideo
) -> None:
    if ledger is None or submission is None:
        return
    record = await ledger.get(submission.fingerprint)
    if record is None:
        return
    record.state = "persisted"
    record.terminal_status = TaskStatus.SUCCEEDED
    record.output_path = video.path
    record.sha256 = video.sha256
    record.bytes = video.bytes
    record.persisted_at = datetime.now(UTC)
    record.add_event("persisted", path=video.path)
    await ledger.put(record)


_UNREAD = object()


async def find_persisted(
    ledger: Optional[Ledger],
    fingerprint: str,
    destination: str,
    *,
    storage_options: Optional[dict] = None,
    record: Any = _UNREAD,
) -> Optional[PersistedVideo]:
    """The video of this work if an earlier run already kept it at ``destination``, intact.

    Checked without any DashScope call: the ledger says "persisted" at this path and the
    file still hashes to the recorded sha256. Pass ``record`` (possibly ``None``) when the
    caller has already read the ledger, to skip reading it again.
    """
    from kf2v_tasks.storage.download import sidecar_path, verify_file

    if ledger is None:
        return None
    if record is _UNREAD:
        record = await ledger.get(fingerprint)
    if record is None or record.state != "persisted" or record.output_path != destination:
        return None
    if not record.sha256 or not await verify_file(
        destination, record.sha256, storage_options=storage_options
    ):
        return None
    return PersistedVideo(
        path=destination,
        sidecar_path=sidecar_path(destination),
        sha256=record.sha256,
        bytes=record.bytes or 0,
        task_id=record.task_id or "",
        fingerprint=fingerprint,
        download_attempts=0,
        reused_existing=True,
    )
