"""The four Prefect tasks: validate frames, submit, poll until done, persist the video.

Each is a thin wrapper over a plain async function (``frames``, ``submission``,
``polling``, ``persistence``), usable on its own in any flow. None of them caches
(``NO_CACHE``): idempotency comes from the durable ledger, which survives crashes,
workers and Prefect transactions alike, not from Prefect's result cache.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Optional, Union

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from kf2v_tasks.credentials import DashScopeCredentials, aresolve_credentials
from kf2v_tasks.dashscope.limits import AccountLimits
from kf2v_tasks.dashscope.models import FramePair, GenerationOptions, TaskState, TaskStatus
from kf2v_tasks.dashscope.polling import (
    DEFAULT_DEADLINE,
    DEFAULT_QUEUE_DEADLINE,
    PollSchedule,
    wait_for_task,
)
from kf2v_tasks.errors import TaskTimeoutError, TransientError
from kf2v_tasks.generation.frames import FrameLimits, check_pair
from kf2v_tasks.generation.ledger import Ledger
from kf2v_tasks.generation.persist import PersistedVideo, persist_task_video
from kf2v_tasks.generation.submit import AmbiguousPolicy, Submission, submit_generation

CredentialsLike = Union[DashScopeCredentials, str, None]


async def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only errors classified as transient."""
    try:
        await state.aresult()
    except TaskTimeoutError:
        # Our own deadline passed; retrying would restart the clock and multiply it.
        return False
    except TransientError:
        return True
    except Exception:
        return False
    return False


@asynccontextmanager
async def client_scope(
    client=None,
    credentials: CredentialsLike = None,
    limits: Optional[AccountLimits] = None,
    optional: bool = False,
) -> AsyncIterator[Any]:
    """Use ``client`` if given, else open one from ``credentials`` (block, block name or env).

    With ``optional``, no credentials anywhere yields ``None`` instead of raising.
    """
    if client is not None:
        yield client
        return
    try:
        resolved = await aresolve_credentials(credentials)
    except ValueError:
        if not optional or credentials is not None:
            raise
        yield None
        return
    async with resolved.get_client(limits=limits) as owned:
        yield owned


def _ledger(ledger_root: Optional[str], storage_options: Optional[dict]) -> Optional[Ledger]:
    return Ledger(ledger_root, storage_options=storage_options) if ledger_root else None


@task(
    name="Validate kf2v frames",
    description="Reads both frames and checks format, size, dimensions and decodability.",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=retry_transient,
)
async def validate_frames(
    first_frame: str,
    last_frame: str,
    limits: Optional[FrameLimits] = None,
    storage_options: Optional[dict] = None,
    row_id: Optional[str] = None,
) -> FramePair:
    """Validate a first/last frame pair before any DashScope call is made.

    Frames may be local paths, ``file://``, ``http(s)://`` or any fsspec URL. Each
    frame's sha256, size and the form it will be sent in are returned; a bad frame
    raises :class:`~kf2v_tasks.errors.FrameValidationError` naming it and the reason.

    Args:
        first_frame: where the first frame is.
        last_frame: where the last frame is.
        limits: size and dimension limits (default: 240..8000 px, ≤ 10 MB).
        storage_options: fsspec options for remote frames (e.g. S3 credentials).
        row_id: the manifest row, for task run names and logs.

    Returns:
        A :class:`~kf2v_tasks.dashscope.models.FramePair` with warnings (alpha, aspect mismatch).

    Example:
        ```python
        from prefect import flow
        from kf2v_tasks import validate_frames

        @flow
        async def check():
            pair = await validate_frames("first.png", "last.png")
            print(pair.first.sha256, pair.warnings)
        ```
    """
    pair = await check_pair(
        first_frame, last_frame, limits=limits or FrameLimits(), storage_options=storage_options
    )
    logger = get_run_logger()
    for warning in pair.warnings:
        logger.warning(warning)
    return pair


@task(
    name="Submit kf2v task",
    description="Creates the kf2v task, or reuses a still-valid task for the same work.",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
)
async def submit_kf2v(
    frames: FramePair,
    prompt: Optional[str] = None,
    negative_prompt: Optional[str] = None,
    options: Optional[GenerationOptions] = None,
    ledger_root: Optional[str] = None,
    credentials: CredentialsLike = None,
    storage_options: Optional[dict] = None,
    ambiguous_policy: AmbiguousPolicy = AmbiguousPolicy.RETRY_ONCE,
    row_id: Optional[str] = None,
    client: Any = None,
    limits: Optional[AccountLimits] = None,
) -> Submission:
    """Create the remote task — never paying twice for the same work.

    The request's fingerprint (model, parameters, prompts, both frames' sha256) is looked
    up in the ledger under ``ledger_root`` first; a task submitted less than 24 h ago that
    has not FAILED is reused instead of creating another.

    Args:
        frames: the pair returned by :func:`validate_frames`.
        prompt: text prompt (≤ 800 characters; longer is truncated by the service).
        negative_prompt: what to avoid (≤ 500 characters).
        options: model, resolution, seed, prompt_extend, watermark.
        ledger_root: folder or URL for the durable record (usually the output folder).
        credentials: a ``DashScopeCredentials`` block, a saved block's name, or ``None``
            for ``DASHSCOPE_API_KEY``.
        storage_options: fsspec options, for the ledger and for re-reading frames.
        ambiguous_policy: what an ambiguous create (the POST may have arrived) leads to.
        row_id: recorded in the ledger for readers.
        client: an open ``Kf2vClient`` to share (flows pass one); else one is opened.
        limits: the account quota shared with other tasks of the run.

    Example:
        ```python
        from prefect import flow
        from kf2v_tasks import validate_frames, submit_kf2v

        @flow
        async def one():
            pair = await validate_frames("first.png", "last.png")
            sub = await submit_kf2v(pair, "a slow pan", ledger_root="out/")
            print(sub.task_id, sub.reused)
        ```
    """
    async with client_scope(client, credentials, limits) as c:
        sub = await submit_generation(
            c,
            frames,
            prompt,
            negative_prompt,
            options,
            ledger=_ledger(ledger_root, storage_options),
            ambiguous_policy=ambiguous_policy,
            row_id=row_id,
            storage_options=storage_options,
        )
    logger = get_run_logger()
    if sub.reused:
        logger.info("Reused task %s (same work submitted before)", sub.task_id)
    else:
        logger.info("Created task %s", sub.task_id)
    if sub.possible_duplicate:
        logger.warning("Task %s: possible duplicate after an ambiguous create", sub.task_id)
    return sub


@task(
    name="Poll kf2v task until done",
    description="Waits for the task to end, with a tightening schedule and deadlines.",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[5, 30, 60],
    retry_condition_fn=retry_transient,
)
async def poll_until_done(
    task_id: str,
    credentials: CredentialsLike = None,
    schedule: Optional[PollSchedule] = None,
    deadline_seconds: float = DEFAULT_DEADLINE,
    queue_deadline_seconds: float = DEFAULT_QUEUE_DEADLINE,
    raise_on_failure: bool = True,
    client: Any = None,
    limits: Optional[AccountLimits] = None,
    ledger_root: Optional[str] = None,
    fingerprint: Optional[str] = None,
    storage_options: Optional[dict] = None,
    row_id: Optional[str] = None,
) -> TaskState:
    """Poll a task until SUCCEEDED, FAILED, CANCELED or UNKNOWN.

    Polling starts slow and tightens (tasks take minutes), shares the account's query
    budget through ``limits``, retries transient errors, cancels a task still PENDING
    past ``queue_deadline_seconds`` and gives up after ``deadline_seconds``. All
    durations are service seconds (divided by ``KF2V_TIME_SCALE``).

    Args:
        task_id: the task id from :func:`submit_kf2v`.
        credentials: block, block name, or ``None`` for the environment.
        schedule: polling schedule.
        deadline_seconds: total wait before :class:`~kf2v_tasks.errors.TaskTimeoutError`.
        queue_deadline_seconds: PENDING time before the task is cancelled.
        raise_on_failure: raise for FAILED / CANCELED / UNKNOWN (default) or return the state.
        client: an open client to share; else one is opened.
        limits: the account quota shared with other tasks of the run.
        ledger_root: when given with ``fingerprint``, a failed task is recorded there so
            it is never reused.
        fingerprint: the submission's fingerprint.
        storage_options: fsspec options of the ledger.
        row_id: the manifest row, for task run names and logs.

    Returns:
        The final :class:`~kf2v_tasks.dashscope.models.TaskState`, with its status history.

    Example:
        ```python
        from prefect import flow
        from kf2v_tasks import poll_until_done

        @flow
        async def wait(task_id: str):
            state = await poll_until_done(task_id)
            print(state.video_url)
        ```
    """
    ledger = _ledger(ledger_root, storage_options) if fingerprint else None
    async with client_scope(client, credentials, limits) as c:
        try:
            state = await wait_for_task(
                c,
                task_id,
                schedule=schedule,
                deadline=deadline_seconds,
                queue_deadline=queue_deadline_seconds,
                raise_on_failure=raise_on_failure,
            )
        except Exception as exc:
            await record_outcome(ledger, fingerprint, exc)
            raise
    await record_outcome(ledger, fingerprint, state)
    get_run_logger().info("Task %s ended %s", task_id, state.status.value)
    return state


async def record_outcome(
    ledger: Optional[Ledger], fingerprint: Optional[str], outcome: Union[TaskState, Exception]
) -> None:
    """Write how a task ended into its ledger record, so a dead task is never reused.

    A deadline timeout is only logged as an event: the task may still finish, and a
    resume re-attaches to it.
    """
    from kf2v_tasks.errors import (
        QueueTimeoutError,
        TaskCanceledError,
        TaskExpiredError,
        TaskFailedError,
        TaskTimeoutError,
    )

    if ledger is None or not fingerprint:
        return
    dead = {
        TaskFailedError: TaskStatus.FAILED,
        TaskCanceledError: TaskStatus.CANCELED,
        QueueTimeoutError: TaskStatus.CANCELED,
        TaskExpiredError: TaskStatus.UNKNOWN,
    }
    if isinstance(outcome, TaskState) and outcome.status.is_terminal:
        status, code, message = outcome.status, outcome.code, outcome.message
    elif type(outcome) in dead:
        status = dead[type(outcome)]
        code, message = getattr(outcome, "code", type(outcome).__name__), str(outcome)
    elif not isinstance(outcome, TaskTimeoutError):
        return
    record = await ledger.get(fingerprint)
    if record is None:
        return
    if isinstance(outcome, TaskTimeoutError):
        record.add_event(
            "timeout",
            error=str(outcome),
            history=[f"{h.status.value}@{h.seen_at.isoformat()}" for h in outcome.history],
        )
    else:
        if record.state != "persisted":
            record.state = "terminal"
        record.terminal_status = status
        record.error_code, record.error_message = code, message
    await ledger.put(record)


@task(
    name="Persist kf2v video",
    description="Streams the video to storage atomically with a sha256 and a JSON sidecar.",
    cache_policy=NO_CACHE,
    cache_result_in_memory=False,
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=retry_transient,
)
async def persist_video(
    state: TaskState,
    destination: str,
    submission: Optional[Submission] = None,
    credentials: CredentialsLike = None,
    ledger_root: Optional[str] = None,
    storage_options: Optional[dict] = None,
    extra: Optional[dict] = None,
    client: Any = None,
    limits: Optional[AccountLimits] = None,
    row_id: Optional[str] = None,
) -> PersistedVideo:
    """Stream a SUCCEEDED task's video to any fsspec destination, atomically.

    The video is written under a temporary name and committed only when complete and
    hashed, so the final path never holds a partial file. An interrupted download
    resumes (HTTP Range) or restarts — never the generation; an expired URL (403) is
    refreshed by querying the task again. A JSON sidecar (task id, request ids, prompts
    incl. ``actual_prompt``, parameters, usage, timings, sha256, bytes) is written beside
    the video, e.g. ``out/cat.mp4`` → ``out/cat.json``.

    Args:
        state: the final state from :func:`poll_until_done`.
        destination: video path or URL (``out/cat.mp4``, ``s3://bucket/cat.mp4``…).
        submission: the :func:`submit_kf2v` result, for the sidecar and ledger.
        credentials: block, block name or ``None``; used only to refresh an expired URL.
        ledger_root: the ledger's folder, to mark the work persisted.
        storage_options: fsspec options of the destination.
        extra: more fields for the sidecar.
        client: an open client to share; else one is opened.
        limits: the account quota shared with other tasks of the run.
        row_id: the manifest row, for task run names and logs.

    Returns:
        A :class:`~kf2v_tasks.generation.persist.PersistedVideo` (path, sha256, bytes, sidecar).

    Example:
        ```python
        from prefect import flow
        from kf2v_tasks import poll_until_done, persist_video

        @flow
        async def keep(task_id: str):
            state = await poll_until_done(task_id)
            video = await persist_video(state, "s3://my-bucket/videos/cat.mp4")
            print(video.sha256)
        ```
    """
    # The client only refreshes an expired URL: a fresh URL downloads without credentials.
    async with client_scope(client, credentials, limits, optional=True) as c:
        video = await persist_task_video(
            state,
            destination,
            client=c,
            submission=submission,
            ledger=_ledger(ledger_root, storage_options),
            storage_options=storage_options,
            extra=extra,
        )
    get_run_logger().info(
        "Persisted %s (%d bytes, sha256 %s)", video.path, video.bytes, video.sha256[:12]
    )
    return video
