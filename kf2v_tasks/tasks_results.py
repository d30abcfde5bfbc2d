"""The Prefect tasks after the work is submitted: wait for it to end, keep its video.

``apoll_until_done`` and ``apersist_video`` are async tasks; ``poll_until_done`` and
``persist_video`` their sync twins (see :mod:`kf2v_tasks.tasks`, which exports all the
package's tasks and says how they share the account's quota, cache nothing and retry).
The poll gives back the account's task in flight taken by the submit
(:mod:`kf2v_tasks.tasks_submit`) and records how the task ended in the ledger; the
persist streams the video to storage and records it there, so it is never paid again.

Example:
    ```python
    from prefect import flow
    from kf2v_tasks import submit_kf2v, validate_frames
    from kf2v_tasks.tasks_results import persist_video, poll_until_done

    @flow
    def finish(task_id: str):
        return persist_video(poll_until_done(task_id), "out/clip.mp4")

    sub = submit_kf2v(validate_frames("first.png", "last.png"), "a slow pan")
    finish(sub.task_id)   # e.g. in another flow run, later: the task id is all it needs
    ```
"""

from __future__ import annotations

import re
from typing import Optional, Union

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from kf2v_tasks._twins import sync_twin
from kf2v_tasks.credentials import aresolve_credentials
from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.dashscope.polling import (
    DEFAULT_DEADLINE,
    DEFAULT_QUEUE_DEADLINE,
    PollSchedule,
    wait_for_task,
)
from kf2v_tasks.dashscope.task_state import TaskState
from kf2v_tasks.errors import TaskError, TaskTimeoutError
from kf2v_tasks.events import emit_video_asset, emit_video_failed, emit_video_persisted
from kf2v_tasks.generation.models import FramePair
from kf2v_tasks.generation.outcome import record_outcome
from kf2v_tasks.generation.persist import persist_task_video
from kf2v_tasks.generation.persisted import PersistedVideo
from kf2v_tasks.generation.pricing import PriceTable
from kf2v_tasks.generation.submit import Submission
from kf2v_tasks.lanes.account import CredentialsLike, open_account
from kf2v_tasks.lanes.lane import release_task
from kf2v_tasks.lanes.ledger import ledger_for
from kf2v_tasks.redaction import md_escape

__all__ = ["TaskRef", "apersist_video", "apoll_until_done", "persist_video", "poll_until_done"]

TaskRef = Union[Submission, str]


# ------------------------------------------------------------------ helpers


def _failed(exc: BaseException, sub: Optional[Submission], task_id: Optional[str], **more) -> None:
    """``kf2v.video.failed`` for a standalone task that raised, as the batch says it."""
    emit_video_failed(
        error_code=getattr(exc, "code", None) or type(exc).__name__,
        error_message=str(exc),
        model=sub.model if sub else None,
        task_id=task_id,
        fingerprint=sub.fingerprint if sub else None,
        possible_duplicate=bool(sub and sub.possible_duplicate),
        **more,
    )


async def _video_artifact(video: PersistedVideo) -> None:
    """A markdown artifact describing the video, in the running flow (best effort)."""
    from prefect.artifacts import acreate_markdown_artifact

    rows = [
        ("path", video.path),
        ("bytes", video.bytes),
        ("sha256", video.sha256),
        ("task id", video.task_id),
        ("model", video.model),
        ("resolution", video.resolution),
        ("duration (s)", video.duration_seconds),
        ("cost", None if video.cost is None else f"{video.cost:.2f} {video.currency or ''}"),
        ("prompt", video.prompt),
        ("actual prompt", video.actual_prompt),
    ]
    table = "\n".join(f"| {k} | {md_escape(v)} |" for k, v in rows if v not in (None, ""))
    name = video.path.rsplit("/", 1)[-1]
    key = re.sub(r"[^a-z0-9-]+", "-", f"kf2v-video-{name}".lower()).strip("-")[:100]
    try:
        await acreate_markdown_artifact(
            markdown=f"# kf2v video {md_escape(name)}\n\n| | |\n|---|---|\n{table}\n",
            key=key,
            description=f"kf2v video {name}",
        )
    except Exception:  # the video is already safe; an artifact is a convenience
        get_run_logger().warning("could not create the artifact for %s", video.path)


# ------------------------------------------------------------------ poll_until_done

_POLL = dict(
    description="Waits for the task to end, polling rarely at first and more often later.",
    cache_policy=NO_CACHE,
)


@task(name="Poll kf2v task until done (async)", **_POLL)
async def apoll_until_done(
    task_id: TaskRef,
    credentials: CredentialsLike = None,
    schedule: Optional[PollSchedule] = None,
    deadline_seconds: float = DEFAULT_DEADLINE,
    queue_deadline_seconds: float = DEFAULT_QUEUE_DEADLINE,
    raise_on_failure: bool = True,
    ledger_root: Optional[str] = None,
    storage_options: Optional[dict] = None,
) -> TaskState:
    """Poll a task until SUCCEEDED, FAILED, CANCELED or UNKNOWN (async).

    Polling starts slow and tightens (tasks take minutes) and shares the account's query
    budget. A task still PENDING after ``queue_deadline_seconds`` is cancelled (never
    billed); after ``deadline_seconds`` in all it raises
    :class:`~kf2v_tasks.errors.TaskTimeoutError` (the task may still finish: a later
    poll or re-run re-attaches to it). Durations are service seconds (divided by
    ``KF2V_TIME_SCALE``). The deadline is exact: the task has no Prefect retries that
    would restart it. A task that ends without a video, or times out, emits
    ``kf2v.video.failed``, as a batch row does.

    Args:
        task_id: the task id, or the :class:`~kf2v_tasks.generation.submit.Submission`
            from :func:`asubmit_kf2v` (then, with ``ledger_root``, how the task ended is
            recorded so a failed task is never reused).
        credentials: block, block name, or ``None`` for the environment.
        schedule: polling schedule.
        deadline_seconds: total wait before giving up.
        queue_deadline_seconds: time PENDING before the task is cancelled.
        raise_on_failure: raise for FAILED / CANCELED / UNKNOWN (default) or return the state.
        ledger_root: the ledger's folder (with a Submission; default: the shared one).
        storage_options: fsspec options of the ledger.

    Returns:
        The final :class:`~kf2v_tasks.dashscope.task_state.TaskState`, with its status history.

    Example:
        ```python
        import asyncio
        from prefect import flow
        from kf2v_tasks import apoll_until_done, asubmit_kf2v, avalidate_frames

        @flow
        async def wait():
            pair = await avalidate_frames("first.png", "last.png")
            state = await apoll_until_done(await asubmit_kf2v(pair, "a slow pan"))
            print(state.status, state.actual_prompt)

        asyncio.run(wait())
        ```
    """
    sub = task_id if isinstance(task_id, Submission) else None
    fingerprint = sub.fingerprint if sub else None
    tid = sub.task_id if sub else task_id
    ledger = ledger_for(ledger_root, storage_options) if fingerprint else None
    async with open_account(credentials) as account:
        try:
            state = await wait_for_task(
                account.client,
                tid,
                schedule=schedule,
                deadline=deadline_seconds,
                queue_deadline=queue_deadline_seconds,
                raise_on_failure=raise_on_failure,
            )
        except Exception as exc:
            if isinstance(exc, TaskError) and not isinstance(exc, TaskTimeoutError):
                release_task(tid)  # it ended; a timeout is still running
            await record_outcome(ledger, fingerprint, exc)
            _failed(exc, sub, tid)
            raise
        release_task(tid)
    await record_outcome(ledger, fingerprint, state)
    if state.status is not TaskStatus.SUCCEEDED:  # raise_on_failure=False: ended without video
        emit_video_failed(
            error_code=state.code or state.status.value,
            error_message=state.message or f"task ended {state.status.value}",
            status="cancelled" if state.status is TaskStatus.CANCELED else "failed",
            model=sub.model if sub else None,
            task_id=tid,
            fingerprint=fingerprint,
            possible_duplicate=bool(sub and sub.possible_duplicate),
        )
    get_run_logger().info("Task %s ended %s", tid, state.status.value)
    return state


poll_until_done = sync_twin(
    apoll_until_done,
    doc="""Poll a task until it ends; the sync twin of :func:`apoll_until_done`.

Example:
    ```python
    from prefect import flow
    from kf2v_tasks import poll_until_done, submit_kf2v, validate_frames

    @flow
    def both():
        pairs = validate_frames.map(["k1.png", "k2.png"], ["k2.png", "k3.png"])
        return poll_until_done.map(submit_kf2v.map(pairs, "a slow pan")).result()

    both()
    ```
""",
    name="Poll kf2v task until done",
    **_POLL,
)


# ------------------------------------------------------------------ persist_video

_PERSIST = dict(
    description="Streams the video to storage atomically with a sha256 and a JSON sidecar.",
    cache_policy=NO_CACHE,
    cache_result_in_memory=False,
)


@task(name="Persist kf2v video (async)", **_PERSIST)
async def apersist_video(
    state: TaskState,
    destination: str,
    submission: Optional[Submission] = None,
    credentials: CredentialsLike = None,
    ledger_root: Optional[str] = None,
    storage_options: Optional[dict] = None,
    extra: Optional[dict] = None,
    price_table: Optional[PriceTable] = None,
    frames: Optional[FramePair] = None,
) -> PersistedVideo:
    """Stream a SUCCEEDED task's video to any fsspec destination, atomically (async).

    The video is written under a temporary name and committed only when complete and
    hashed, so the final path never holds a partial file. An interrupted download
    resumes (HTTP Range) or restarts, never the generation; an expired URL is refreshed by
    querying the task again. A JSON sidecar (task id, request ids, prompts incl.
    ``actual_prompt``, parameters, usage, cost, timings, sha256, bytes) is written beside
    the video (``out/cat.mp4`` → ``out/cat.json``), a ``kf2v.video.persisted`` event is
    emitted, the video is recorded as a Prefect asset (its ``frames`` and audio
    upstream) and a markdown artifact describes the video, as the batch does. If keeping
    it fails, ``kf2v.video.failed`` says so (billed: the task succeeded).

    Args:
        state: the final state from :func:`apoll_until_done`.
        destination: video path or URL (``out/cat.mp4``, ``s3://bucket/cat.mp4``…).
        submission: the :func:`asubmit_kf2v` result, for the sidecar and ledger.
        credentials: block, block name or ``None``; used only to refresh an expired URL.
        ledger_root: the ledger's folder, to mark the work persisted (default: the shared one).
        storage_options: fsspec options of the destination.
        extra: more fields for the sidecar.
        price_table: prices per model and resolution, for the video's cost.
        frames: the pair from :func:`avalidate_frames`: the video's asset dependencies.

    Returns:
        A :class:`~kf2v_tasks.generation.persist.PersistedVideo`: path, sha256, bytes,
        sidecar, model, resolution, duration, prompts and cost.

    Example:
        ```python
        import asyncio
        from prefect import flow
        from kf2v_tasks import apersist_video, apoll_until_done, asubmit_kf2v, avalidate_frames

        @flow
        async def keep():
            sub = await asubmit_kf2v(await avalidate_frames("first.png", "last.png"), "a pan")
            state = await apoll_until_done(sub)
            video = await apersist_video(state, "out/pan.mp4", submission=sub)  # or s3://...
            print(video.sha256, video.cost)

        asyncio.run(keep())
        ```
    """
    # The client only refreshes an expired URL: a fresh URL downloads without credentials.
    try:
        if price_table is None and credentials:  # priced in the region of the block in use
            price_table = PriceTable.default((await aresolve_credentials(credentials)).region)
        async with open_account(credentials, optional=True) as account:
            video = await persist_task_video(
                state,
                destination,
                client=account.client if account else None,
                submission=submission,
                ledger=ledger_for(ledger_root, storage_options),
                storage_options=storage_options,
                extra=extra,
                price_table=price_table,
            )
    except Exception as exc:  # the task succeeded, so it is billed; only keeping it failed
        _failed(exc, submission, state.task_id, billed=True, output=destination)
        raise
    get_run_logger().info(
        "Persisted %s (%d bytes, sha256 %s)", video.path, video.bytes, video.sha256[:12]
    )
    emit_video_persisted(video)
    emit_video_asset(
        video.path,
        upstream=frames.sources if frames else [],
        name=video.path.rsplit("/", 1)[-1],
        metadata={"sha256": video.sha256, "bytes": video.bytes, "task_id": video.task_id,
                  "model": video.model, "cost": video.cost},
    )  # fmt: skip
    await _video_artifact(video)
    return video


persist_video = sync_twin(
    apersist_video,
    doc="""Stream a SUCCEEDED task's video to storage; the sync twin of :func:`apersist_video`.

Example:
    ```python
    from prefect import flow
    from kf2v_tasks import persist_video, poll_until_done, submit_kf2v, validate_frames

    @flow
    def keep():
        sub = submit_kf2v(validate_frames("first.png", "last.png"), "a slow pan")
        return persist_video(poll_until_done(sub), "out/pan.mp4", submission=sub)

    assert keep().path.endswith("pan.mp4")
    ```
""",
    name="Persist kf2v video",
    **_PERSIST,
)
