"""Keeping a finished task's video: stream it to storage, preview it, write its sidecar, close
its ledger entry.

Order matters for crash safety: video (atomically), previews, sidecar, then the ledger says
"persisted". A crash in between leaves the ledger at "submitted", so a re-run re-attaches
and downloads again, never generates again. A video whose previews fail is still kept (it
was paid for); the record has none and the next run makes them from the stored file
(:func:`find_persisted`), with no DashScope call. Keeping a video (or failing to) releases
this process's claim on the fingerprint (:mod:`kf2v_tasks.generation.claims`).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Optional

from kf2v_tasks import clock
from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.dashscope.task_state import TaskState
from kf2v_tasks.errors import DownloadError, TaskExpiredError, UrlExpiredError
from kf2v_tasks.generation.claims import release_claim, wait_for_other_holder
from kf2v_tasks.generation.ledger import Ledger, LedgerRecord
from kf2v_tasks.generation.ledger_state import TASK_TTL, TASK_TTL_MARGIN, utc
from kf2v_tasks.generation.link_life import (
    download_patience,
    link_expiry,
    rerun_by,
    still_at_service,
)
from kf2v_tasks.generation.persisted import (
    PersistedVideo,
    previews_or_none,
    read_sidecar,
    recorded_previews,
)
from kf2v_tasks.generation.pricing import PriceTable
from kf2v_tasks.generation.sidecar import (
    build_sidecar,
    remember_sidecar,
    video_facts,
    written_sidecar,
)
from kf2v_tasks.generation.submit import Submission

if TYPE_CHECKING:
    from kf2v_tasks.dashscope.client import Kf2vClient

__all__ = ["persist_task_video"]

logger = logging.getLogger("kf2v_tasks.generation.persist")


async def persist_task_video(
    state: TaskState,
    destination: str,
    *,
    client: Optional[Kf2vClient] = None,
    submission: Optional[Submission] = None,
    ledger: Optional[Ledger] = None,
    storage_options: Optional[dict] = None,
    extra: Optional[dict[str, Any]] = None,
    price_table: Optional[PriceTable] = None,
    deadline: Optional[float] = None,
) -> PersistedVideo:
    """Stream ``state.video_url`` to ``destination`` atomically and record it.

    The video is paid for, so a transient failure never ends the download while the URL can
    still work: it retries (refreshing an expired URL) until 24 service hours after the task
    ended (:func:`link_expiry`) or ``deadline``. A permanent answer ends it sooner; the error
    says the video is still at the service and a re-run fetches it (nothing paid twice).

    Args:
        client: re-queries the task when the signed URL has expired.
        ledger: marks the fingerprint "persisted" once the files are committed.
        extra: more fields for the sidecar (e.g. the manifest row).
        price_table: prices for the video's cost (default: the built-in table).
        deadline: a :func:`kf2v_tasks.clock.now` reading after which the download starts no
            new wait; ``None``: the URL's life.

    Raises:
        ValueError: ``state`` is not SUCCEEDED with a video URL.
        DownloadError: not fetchable now; the message says until when it stays at the service.
        TaskExpiredError: the service no longer has the task: its video is gone.
    """
    fingerprint = submission.fingerprint if submission else None
    try:
        # Another run re-attached to the same task may be keeping this video right now:
        # let it finish (bounded), then its committed file is found below, not fetched again.
        await wait_for_other_holder(ledger, fingerprint)
        return await _persist(
            state,
            destination,
            client,
            submission,
            ledger,
            storage_options,
            extra,
            price_table,
            deadline,
        )
    finally:
        # Not kept: how the task ended, if put off to be written with "persisted", alone.
        await _flush_outcome(ledger, fingerprint)
        # Kept or failed, this row's work is over: the next run may take the fingerprint.
        await release_claim(ledger, fingerprint)


async def _flush_outcome(ledger: Optional[Ledger], fingerprint: Optional[str]) -> None:
    if ledger is None or not fingerprint:
        return
    try:
        await ledger.flush(fingerprint)
    except Exception as exc:  # the record still says "submitted": reused just the same
        logger.warning("could not record how the task of %s ended: %s", fingerprint[:12], exc)


async def _persist(
    state: TaskState,
    destination: str,
    client: Optional[Kf2vClient],
    submission: Optional[Submission],
    ledger: Optional[Ledger],
    storage_options: Optional[dict],
    extra: Optional[dict[str, Any]],
    price_table: Optional[PriceTable],
    deadline: Optional[float] = None,
) -> PersistedVideo:
    from kf2v_tasks.storage.download import stream_to_storage
    from kf2v_tasks.storage.files import read_json, sidecar_path, verify_file, write_json_atomic

    if state.status is not TaskStatus.SUCCEEDED or not state.video_url:
        raise ValueError(
            f"task {state.task_id} is {state.status.value}; only SUCCEEDED tasks have a video"
        )
    prices = price_table
    side = sidecar_path(destination)
    fingerprint = submission.fingerprint if submission else None
    facts = video_facts(state, submission, prices).model_dump()

    # A crash after the video was committed but before the ledger said so: keep the file.
    existing = written_sidecar(side) or {}
    if not existing and not _created_here(submission):
        existing = await read_sidecar(read_json, side, storage_options)
    if (
        existing.get("task_id") == state.task_id
        and existing.get("sha256")
        and await verify_file(destination, existing["sha256"], storage_options=storage_options)
    ):
        previews = recorded_previews(existing) or await previews_or_none(
            destination, storage_options
        )
        result = PersistedVideo(
            path=destination,
            sidecar_path=side,
            sha256=existing["sha256"],
            bytes=int(existing.get("bytes", 0)),
            task_id=state.task_id,
            fingerprint=fingerprint,
            download_attempts=0,
            reused_existing=True,
            previews=previews,
            **facts,
        )
        await _mark_persisted(ledger, fingerprint, result)
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
    expires = link_expiry(state, submission)
    try:
        stored = await stream_to_storage(
            state.video_url,
            destination,
            storage_options=storage_options,
            refresh_url=refresh_url,
            http=client.download_http if client is not None else None,
            patience=download_patience(expires, deadline),
        )
    except UrlExpiredError:
        raise
    except DownloadError as exc:
        raise DownloadError(
            still_at_service(state.task_id, rerun_by(expires, submission), exc)
        ) from exc
    download_seconds = time.monotonic() - t0
    previews = await previews_or_none(destination, storage_options, stored.bytes)
    sidecar = build_sidecar(
        state,
        sha256=stored.sha256,
        size=stored.bytes,
        path=destination,
        submission=submission,
        timings={"download_seconds": round(download_seconds, 3)},
        extra=extra,
        price_table=prices,
    )
    if previews is not None:
        sidecar["previews"] = previews.model_dump(mode="json")
    await write_json_atomic(side, sidecar, storage_options=storage_options)
    remember_sidecar(side, sidecar)
    persisted = PersistedVideo(
        path=destination,
        sidecar_path=side,
        sha256=stored.sha256,
        bytes=stored.bytes,
        task_id=state.task_id,
        fingerprint=fingerprint,
        download_attempts=stored.attempts,
        previews=previews,
        **facts,
    )
    await _mark_persisted(ledger, fingerprint, persisted)
    return persisted


def _created_here(submission: Optional[Submission]) -> bool:
    """Whether this submission created its still-deliverable task, so no sidecar of it can be
    in storage unless we wrote it (or a re-attached run kept it: we fetch again, nothing
    paid). A task past its lifetime could not be fetched again: its sidecar is always sought.
    """
    if submission is None or submission.reused:
        return False
    age = datetime.now(UTC) - (utc(submission.submitted_at) or datetime.now(UTC))
    # Service time, as the ledger counts a task's lifetime (KF2V_TIME_SCALE compresses it).
    return age * clock.time_scale() < TASK_TTL - TASK_TTL_MARGIN


async def _mark_persisted(
    ledger: Optional[Ledger], fingerprint: Optional[str], video: PersistedVideo
) -> None:
    if ledger is None or not fingerprint:
        return

    def change(record: LedgerRecord) -> bool:
        if record.task_id != video.task_id:
            # The work was re-created since: this record follows another task now.
            logger.warning(
                "fingerprint %s follows task %s, not %s; the ledger is left as it is",
                fingerprint[:12],
                record.task_id,
                video.task_id,
            )
            return False
        record.persisted(
            video.path,
            video.sha256,
            video.bytes,
            model=video.model,
            resolution=video.resolution,
            duration_seconds=video.duration_seconds,
            cost=video.cost,
            currency=video.currency,
            previews=video.previews,
        )
        return True

    # On S3 a conditional write, without a read when this run wrote the record last.
    await ledger.modify(fingerprint, change)
