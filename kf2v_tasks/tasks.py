"""The four Prefect tasks: validate frames, submit, poll until done, persist the video.

In the prefect-aws / prefect-gcp convention each comes twice: ``avalidate_frames``,
``asubmit_kf2v``, ``apoll_until_done`` and ``apersist_video`` are async tasks, and
``validate_frames``, ``submit_kf2v``, ``poll_until_done`` and ``persist_video`` are their
sync twins, which return values in a sync flow and can be awaited in an async one.
``.submit()`` and ``.map()`` work on all eight.

They take a ``DashScopeCredentials`` block or its saved name (``None``: the
``DASHSCOPE_API_KEY`` environment), never a client. Every task that talks to DashScope
shares the account's one quota in this process (:mod:`kf2v_tasks.account`): a ``.map``
over 100 pairs keeps within the account's tasks in flight. None of them caches
(``NO_CACHE``): idempotency comes from the ledger under ``ledger_root``, which survives
crashes, workers and Prefect transactions alike.

Retries: one layer, the client's (:class:`kf2v_tasks.retry.RetryPolicy`: at most 8 attempts
per request, only for errors that are safe to repeat, never a create whose outcome is
unknown). The tasks themselves set no Prefect retries, so a request is never sent 8×4
times and a retried poll never restarts its deadline.
"""

from __future__ import annotations

import re
from typing import Optional, Union

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from kf2v_tasks._twins import sync_twin
from kf2v_tasks.account import CredentialsLike, open_account
from kf2v_tasks.dashscope.models import GenerationOptions, TaskState
from kf2v_tasks.dashscope.polling import (
    DEFAULT_DEADLINE,
    DEFAULT_QUEUE_DEADLINE,
    PollSchedule,
    wait_for_task,
)
from kf2v_tasks.errors import TaskError, TaskTimeoutError
from kf2v_tasks.events import emit_video_persisted
from kf2v_tasks.generation.frames import FrameLimits, check_pair
from kf2v_tasks.generation.ledger import Ledger, record_outcome
from kf2v_tasks.generation.models import FramePair
from kf2v_tasks.generation.persist import PersistedVideo, persist_task_video
from kf2v_tasks.generation.pricing import PriceTable
from kf2v_tasks.generation.submit import AmbiguousPolicy, Submission, submit_generation
from kf2v_tasks.redaction import md_escape

__all__ = [
    "apersist_video",
    "apoll_until_done",
    "asubmit_kf2v",
    "avalidate_frames",
    "persist_video",
    "poll_until_done",
    "submit_kf2v",
    "validate_frames",
]

TaskRef = Union[Submission, str]


def _ledger(ledger_root: Optional[str], storage_options: Optional[dict]) -> Optional[Ledger]:
    return Ledger(ledger_root, storage_options=storage_options) if ledger_root else None


# ------------------------------------------------------------------ the cores


async def _validate(
    first_frame: str,
    last_frame: str,
    limits: Optional[FrameLimits],
    storage_options: Optional[dict],
    audio: Optional[str] = None,
    model: Optional[str] = None,
) -> FramePair:
    pair = await check_pair(
        first_frame,
        last_frame,
        limits=limits or (FrameLimits.for_model(model) if model else FrameLimits()),
        storage_options=storage_options,
        audio=audio,
        model=model,
    )
    logger = get_run_logger()
    for warning in pair.warnings:
        logger.warning(warning)
    return pair


async def _submit(
    frames: FramePair,
    prompt: Optional[str],
    negative_prompt: Optional[str],
    options: Optional[GenerationOptions],
    ledger_root: Optional[str],
    credentials: CredentialsLike,
    storage_options: Optional[dict],
    ambiguous_policy: AmbiguousPolicy,
) -> Submission:
    async with open_account(credentials) as account:
        slot = await account.take_slot()
        try:
            sub = await submit_generation(
                account.client,
                frames,
                prompt,
                negative_prompt,
                options,
                ledger=_ledger(ledger_root, storage_options),
                ambiguous_policy=ambiguous_policy,
                storage_options=storage_options,
            )
        except BaseException:
            account.limits.in_flight.release(slot)
            raise
        # The slot now belongs to the task: whoever sees it end frees it.
        account.limits.in_flight.bind(slot, sub.task_id)
    logger = get_run_logger()
    if sub.reused:
        logger.info("Reused task %s (the same work was submitted before)", sub.task_id)
    else:
        logger.info("Created task %s", sub.task_id)
    if sub.possible_duplicate:
        logger.warning("Task %s: possible duplicate after an ambiguous create", sub.task_id)
    return sub


async def _poll(
    task_id: TaskRef,
    credentials: CredentialsLike,
    schedule: Optional[PollSchedule],
    deadline_seconds: float,
    queue_deadline_seconds: float,
    raise_on_failure: bool,
    ledger_root: Optional[str],
    storage_options: Optional[dict],
) -> TaskState:
    fingerprint = task_id.fingerprint if isinstance(task_id, Submission) else None
    tid = task_id.task_id if isinstance(task_id, Submission) else task_id
    ledger = _ledger(ledger_root, storage_options) if fingerprint else None
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
                account.limits.in_flight.release(tid)  # it ended; a timeout is still running
            await record_outcome(ledger, fingerprint, exc)
            raise
        account.limits.in_flight.release(tid)
    await record_outcome(ledger, fingerprint, state)
    get_run_logger().info("Task %s ended %s", tid, state.status.value)
    return state


async def _persist(
    state: TaskState,
    destination: str,
    submission: Optional[Submission],
    credentials: CredentialsLike,
    ledger_root: Optional[str],
    storage_options: Optional[dict],
    extra: Optional[dict],
    price_table: Optional[PriceTable],
) -> PersistedVideo:
    # The client only refreshes an expired URL: a fresh URL downloads without credentials.
    async with open_account(credentials, optional=True) as account:
        video = await persist_task_video(
            state,
            destination,
            client=account.client if account else None,
            submission=submission,
            ledger=_ledger(ledger_root, storage_options),
            storage_options=storage_options,
            extra=extra,
            price_table=price_table,
        )
    get_run_logger().info(
        "Persisted %s (%d bytes, sha256 %s)", video.path, video.bytes, video.sha256[:12]
    )
    emit_video_persisted(video)
    await _video_artifact(video)
    return video


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


# ------------------------------------------------------------------ validate_frames

_VALIDATE = dict(
    name="Validate kf2v frames",
    description="Reads both frames and checks format, size, dimensions and decodability.",
    cache_policy=NO_CACHE,
)


@task(**_VALIDATE)
async def avalidate_frames(
    first_frame: str,
    last_frame: str,
    limits: Optional[FrameLimits] = None,
    storage_options: Optional[dict] = None,
    audio: Optional[str] = None,
    model: Optional[str] = None,
) -> FramePair:
    """Validate a first/last frame pair (and a driving audio) before any DashScope call (async).

    Frames may be local paths, ``file://``, ``http(s)://`` or any fsspec URL. Each
    frame's sha256, size and the form it will be sent in are returned; a bad frame
    raises :class:`~kf2v_tasks.errors.FrameValidationError` naming it and the reason.

    Args:
        first_frame: where the first frame is.
        last_frame: where the last frame is.
        limits: size and dimension limits (default: the model's, from the models table;
            kf2v: 240..8000 px, ≤ 10 MB).
        storage_options: fsspec options for remote frames (e.g. an S3 endpoint).
        audio: a driving audio (mp3/wav, path or URL), for models that take one
            (``wan2.7-i2v``); refused with the model that takes none.
        model: the model the frames (and audio) are for (default: wan2.2-kf2v-flash).

    Returns:
        A :class:`~kf2v_tasks.generation.models.FramePair` with warnings (alpha, aspect mismatch).

    Example:
        ```python
        import asyncio
        from prefect import flow
        from kf2v_tasks import avalidate_frames

        @flow
        async def check():
            pair = await avalidate_frames("first.png", "last.png")
            print(pair.first.sha256, pair.warnings)

        asyncio.run(check())
        ```
    """
    return await _validate(first_frame, last_frame, limits, storage_options, audio, model)


validate_frames = sync_twin(
    avalidate_frames,
    doc="""Validate a first/last frame pair; the sync twin of :func:`avalidate_frames`.

Returns the :class:`~kf2v_tasks.generation.models.FramePair` in a sync flow; in an
async flow it is the async task and must be awaited.

Example:
    ```python
    from prefect import flow
    from kf2v_tasks import validate_frames

    @flow
    def check():
        pair = validate_frames("first.png", "last.png")
        pairs = validate_frames.map(["a1.png", "b1.png"], ["a2.png", "b2.png"]).result()
        return pair, pairs

    check()
    ```
""",
    **_VALIDATE,
)


# ------------------------------------------------------------------ submit_kf2v

_SUBMIT = dict(
    name="Submit kf2v task",
    description="Creates the kf2v task, or reuses a still-valid task for the same work.",
    cache_policy=NO_CACHE,
)


@task(**_SUBMIT)
async def asubmit_kf2v(
    frames: FramePair,
    prompt: Optional[str] = None,
    negative_prompt: Optional[str] = None,
    options: Optional[GenerationOptions] = None,
    ledger_root: Optional[str] = None,
    credentials: CredentialsLike = None,
    storage_options: Optional[dict] = None,
    ambiguous_policy: AmbiguousPolicy = AmbiguousPolicy.RETRY_ONCE,
) -> Submission:
    """Create the remote task, never paying twice for the same work (async).

    The work's fingerprint (model, parameters, prompts, both frames' sha256) is looked up
    in the ledger under ``ledger_root`` first; a task submitted less than 24 h ago that
    has not failed is reused instead of creating another. The create waits for one of the
    account's in-flight slots, shared by every kf2v task in this process; the slot is freed
    when :func:`apoll_until_done` sees the task end (or, if nobody polls it, when a later
    submitter finds it ended).

    Args:
        frames: the pair returned by :func:`avalidate_frames`.
        prompt: text prompt (≤ 800 characters; longer is truncated by the service).
        negative_prompt: what to avoid (≤ 500 characters).
        options: model, resolution, seed, prompt_extend, watermark.
        ledger_root: folder or URL for the durable record (usually the output folder);
            without it nothing protects a re-run from paying again.
        credentials: a ``DashScopeCredentials`` block, a saved block's name, or ``None``
            for ``DASHSCOPE_API_KEY``.
        storage_options: fsspec options, for the ledger and for re-reading frames.
        ambiguous_policy: after a create whose outcome is unknown: one guarded retry
            (reported as a possible duplicate), or fail.

    Returns:
        The :class:`~kf2v_tasks.generation.submit.Submission` (task id, fingerprint, reused?).

    Example:
        ```python
        import asyncio
        from prefect import flow
        from kf2v_tasks import avalidate_frames, asubmit_kf2v

        @flow
        async def one():
            pair = await avalidate_frames("first.png", "last.png")
            sub = await asubmit_kf2v(pair, "a slow pan", ledger_root="out/")
            print(sub.task_id, sub.reused)

        asyncio.run(one())
        ```
    """
    return await _submit(
        frames,
        prompt,
        negative_prompt,
        options,
        ledger_root,
        credentials,
        storage_options,
        ambiguous_policy,
    )


submit_kf2v = sync_twin(
    asubmit_kf2v,
    doc="""Create the remote task; the sync twin of :func:`asubmit_kf2v`.

Example:
    ```python
    from prefect import flow
    from kf2v_tasks import validate_frames, submit_kf2v

    @flow
    def one():
        pair = validate_frames("first.png", "last.png")
        return submit_kf2v(pair, "a slow pan", ledger_root="out/")

    one()
    ```
""",
    **_SUBMIT,
)


# ------------------------------------------------------------------ poll_until_done

_POLL = dict(
    name="Poll kf2v task until done",
    description="Waits for the task to end, polling rarely at first and more often later.",
    cache_policy=NO_CACHE,
)


@task(**_POLL)
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
    would restart it.

    Args:
        task_id: the task id, or the :class:`~kf2v_tasks.generation.submit.Submission`
            from :func:`asubmit_kf2v` (then, with ``ledger_root``, how the task ended is
            recorded so a failed task is never reused).
        credentials: block, block name, or ``None`` for the environment.
        schedule: polling schedule.
        deadline_seconds: total wait before giving up.
        queue_deadline_seconds: time PENDING before the task is cancelled.
        raise_on_failure: raise for FAILED / CANCELED / UNKNOWN (default) or return the state.
        ledger_root: the ledger's folder (with a Submission).
        storage_options: fsspec options of the ledger.

    Returns:
        The final :class:`~kf2v_tasks.dashscope.models.TaskState`, with its status history.

    Example:
        ```python
        import asyncio
        from prefect import flow
        from kf2v_tasks import apoll_until_done

        @flow
        async def wait(task_id: str):
            state = await apoll_until_done(task_id)
            print(state.status, state.actual_prompt)

        asyncio.run(wait("a-task-id"))
        ```
    """
    return await _poll(
        task_id,
        credentials,
        schedule,
        deadline_seconds,
        queue_deadline_seconds,
        raise_on_failure,
        ledger_root,
        storage_options,
    )


poll_until_done = sync_twin(
    apoll_until_done,
    doc="""Poll a task until it ends; the sync twin of :func:`apoll_until_done`.

Example:
    ```python
    from prefect import flow
    from kf2v_tasks import poll_until_done

    @flow
    def wait(task_ids: list[str]):
        return poll_until_done.map(task_ids).result()

    wait(["task-1", "task-2"])
    ```
""",
    **_POLL,
)


# ------------------------------------------------------------------ persist_video

_PERSIST = dict(
    name="Persist kf2v video",
    description="Streams the video to storage atomically with a sha256 and a JSON sidecar.",
    cache_policy=NO_CACHE,
    cache_result_in_memory=False,
)


@task(**_PERSIST)
async def apersist_video(
    state: TaskState,
    destination: str,
    submission: Optional[Submission] = None,
    credentials: CredentialsLike = None,
    ledger_root: Optional[str] = None,
    storage_options: Optional[dict] = None,
    extra: Optional[dict] = None,
    price_table: Optional[PriceTable] = None,
) -> PersistedVideo:
    """Stream a SUCCEEDED task's video to any fsspec destination, atomically (async).

    The video is written under a temporary name and committed only when complete and
    hashed, so the final path never holds a partial file. An interrupted download
    resumes (HTTP Range) or restarts, never the generation; an expired URL is refreshed by
    querying the task again. A JSON sidecar (task id, request ids, prompts incl.
    ``actual_prompt``, parameters, usage, cost, timings, sha256, bytes) is written beside
    the video (``out/cat.mp4`` → ``out/cat.json``), a ``kf2v.video.persisted`` event is
    emitted and a markdown artifact describes the video, as the batch does.

    Args:
        state: the final state from :func:`apoll_until_done`.
        destination: video path or URL (``out/cat.mp4``, ``s3://bucket/cat.mp4``…).
        submission: the :func:`asubmit_kf2v` result, for the sidecar and ledger.
        credentials: block, block name or ``None``; used only to refresh an expired URL.
        ledger_root: the ledger's folder, to mark the work persisted.
        storage_options: fsspec options of the destination.
        extra: more fields for the sidecar.
        price_table: prices per model and resolution, for the video's cost.

    Returns:
        A :class:`~kf2v_tasks.generation.persist.PersistedVideo`: path, sha256, bytes,
        sidecar, model, resolution, duration, prompts and cost.

    Example:
        ```python
        import asyncio
        from prefect import flow
        from kf2v_tasks import apoll_until_done, apersist_video

        @flow
        async def keep(task_id: str):
            state = await apoll_until_done(task_id)
            video = await apersist_video(state, "s3://my-bucket/videos/cat.mp4")
            print(video.sha256, video.cost)

        asyncio.run(keep("a-task-id"))
        ```
    """
    return await _persist(
        state,
        destination,
        submission,
        credentials,
        ledger_root,
        storage_options,
        extra,
        price_table,
    )


persist_video = sync_twin(
    apersist_video,
    doc="""Stream a SUCCEEDED task's video to storage; the sync twin of :func:`apersist_video`.

Example:
    ```python
    from prefect import flow
    from kf2v_tasks import poll_until_done, persist_video

    @flow
    def keep(task_id: str):
        state = poll_until_done(task_id)
        return persist_video(state, "out/cat.mp4")

    keep("a-task-id")
    ```
""",
    **_PERSIST,
)
