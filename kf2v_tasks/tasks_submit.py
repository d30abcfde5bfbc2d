"""The Prefect tasks before the work is paid for: validate the frames, submit the work.

``avalidate_frames`` and ``asubmit_kf2v`` are async tasks; ``validate_frames`` and
``submit_kf2v`` their sync twins (see :mod:`kf2v_tasks.tasks`, which exports all the
package's tasks and says how they share the account's quota, cache nothing and retry).
A submit takes one of the account's tasks in flight; the task run that sees the
DashScope task end gives it back (:mod:`kf2v_tasks.tasks_results`).

Example:
    ```python
    from prefect import flow
    from kf2v_tasks.tasks_submit import submit_kf2v, validate_frames

    @flow
    def start(first: str, last: str):
        return submit_kf2v(validate_frames(first, last), "a slow sunrise")

    print(start("first.png", "last.png").task_id)
    ```
"""

from __future__ import annotations

from typing import Optional

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from kf2v_tasks._twins import sync_twin
from kf2v_tasks.dashscope.models import GenerationOptions
from kf2v_tasks.errors import AmbiguousCreateError
from kf2v_tasks.events import emit_possible_duplicate, emit_video_failed
from kf2v_tasks.generation.frames import FrameLimits, check_pair
from kf2v_tasks.generation.models import FramePair
from kf2v_tasks.generation.submit import AmbiguousPolicy, Submission, submit_generation
from kf2v_tasks.lanes.account import CredentialsLike, open_account
from kf2v_tasks.lanes.ledger import ledger_for

__all__ = ["asubmit_kf2v", "avalidate_frames", "submit_kf2v", "validate_frames"]


# ------------------------------------------------------------------ validate_frames

_VALIDATE = dict(
    description="Reads both frames and checks format, size, dimensions and decodability.",
    cache_policy=NO_CACHE,
)


@task(name="Validate kf2v frames (async)", **_VALIDATE)
async def avalidate_frames(
    first_frame: Optional[str],
    last_frame: Optional[str],
    limits: Optional[FrameLimits] = None,
    storage_options: Optional[dict] = None,
    audio: Optional[str] = None,
    model: Optional[str] = None,
    first_clip: Optional[str] = None,
) -> FramePair:
    """Validate a first/last frame pair (and a driving audio) before any DashScope call (async).

    Frames may be local paths, ``file://``, ``http(s)://`` or any fsspec URL. Each
    frame's sha256, size and the form it will be sent in are returned; a bad frame
    raises :class:`~kf2v_tasks.errors.FrameValidationError` naming it and the reason.

    Args:
        first_frame: where the first frame is (``None`` with ``first_clip``).
        last_frame: where the last frame is (optional with ``first_clip``).
        limits: size and dimension limits (default: the model's, from the models table;
            kf2v: 240..8000 px, ≤ 10 MB).
        storage_options: fsspec options for remote frames (e.g. an S3 endpoint).
        audio: a driving audio (mp3/wav, path or URL), for models that take one
            (``wan2.7-i2v``); refused with the model that takes none.
        model: the model the frames (and audio) are for (default: wan2.2-kf2v-flash).
        first_clip: an mp4/mov (2-10 s, 240-4096 px, 1:8-8:1, ≤ 100 MB) to continue
            instead of a first frame, for models that continue clips (``wan2.7-i2v``); the
            video lasts ``duration`` in total, and all of it is billed.

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
    pair = await check_pair(
        first_frame,
        last_frame,
        limits=limits or (FrameLimits.for_model(model) if model else FrameLimits()),
        storage_options=storage_options,
        audio=audio,
        model=model,
        clip=first_clip,
    )
    logger = get_run_logger()
    for warning in pair.warnings:
        logger.warning(warning)
    return pair


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
        pairs = validate_frames.map(["k1.png", "k2.png"], ["k2.png", "k3.png"]).result()
        return pair, pairs

    check()
    ```
""",
    name="Validate kf2v frames",
    **_VALIDATE,
)


# ------------------------------------------------------------------ submit_kf2v

_SUBMIT = dict(
    description="Creates the kf2v task, or reuses a still-valid task for the same work.",
    cache_policy=NO_CACHE,
)


@task(name="Submit kf2v task (async)", **_SUBMIT)
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
    in the ledger first; a task submitted less than 24 h ago that has not failed is reused
    instead of creating another, also one another process is creating right now (its
    claim). A create retried after an ambiguous answer emits
    ``kf2v.video.possible-duplicate``, a refused one ``kf2v.video.failed``, as a batch
    row does. The create waits for a slot of the model's lane on the account, shared with
    every batch and pipeline (see :mod:`kf2v_tasks.lanes`); the slot is freed when
    :func:`apoll_until_done` sees the task end (or, if nobody polls it, when a later
    submitter finds it ended).

    Args:
        frames: the pair returned by :func:`avalidate_frames`.
        prompt: text prompt (≤ 800 characters; longer is truncated by the service).
        negative_prompt: what to avoid (≤ 500 characters).
        options: model, resolution, seed, prompt_extend, watermark.
        ledger_root: folder or URL for the durable record (usually the output folder);
            default: the shared one (``PREFECT_INTEGRATIONS_KF2V_LEDGER``, else
            ``<PREFECT_HOME>/kf2v/ledger``), so a re-run never pays again.
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
    model = (options or GenerationOptions()).model
    async with open_account(credentials) as account:
        slot = await account.take_slot(model)
        try:
            sub = await submit_generation(
                account.client,
                frames,
                prompt,
                negative_prompt,
                options,
                ledger=ledger_for(ledger_root, storage_options),
                ambiguous_policy=ambiguous_policy,
                storage_options=storage_options,
                account=account.label,
            )
        except BaseException as exc:
            slot.release()
            if isinstance(exc, Exception):  # as a batch row that failed at submit says it
                emit_video_failed(
                    error_code=getattr(exc, "code", None) or type(exc).__name__,
                    error_message=str(exc),
                    model=model,
                    task_id=getattr(exc, "task_id", None),
                    possible_duplicate=isinstance(exc, AmbiguousCreateError),
                )
            raise
        if sub.already_persisted_at is not None:
            slot.release()  # another run kept this work already: nothing is at the service
        else:
            # The slot now belongs to the task: whoever sees it end frees it.
            slot.bind(sub.task_id)
    logger = get_run_logger()
    if sub.reused:
        logger.info("Reused task %s (the same work was submitted before)", sub.task_id)
    else:
        logger.info("Created task %s", sub.task_id)
    if sub.possible_duplicate:
        logger.warning("Task %s: possible duplicate after an ambiguous create", sub.task_id)
        if not sub.reused:  # a reused task's duplicate was reported when it was created
            emit_possible_duplicate(
                task_id=sub.task_id, model=sub.model, fingerprint=sub.fingerprint
            )
    return sub


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
    name="Submit kf2v task",
    **_SUBMIT,
)
