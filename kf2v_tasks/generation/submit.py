"""Submitting a generation without ever paying twice for the same work.

Before a create, the ledger is asked whether this fingerprint already has a valid
task (submitted < 24 h ago, not FAILED/UNKNOWN/CANCELED): if so it is reused. The
intent to create is written *before* the POST ("submitting"), so a crash between the
POST and recording its task id is seen on resume as an ambiguous create, never as
"nothing happened". Every change of the record goes through its transitions
(:mod:`kf2v_tasks.generation.ledger_record`).

Example:
    ```python
    from kf2v_tasks.generation.frames import check_pair
    from kf2v_tasks.generation.ledger import Ledger
    from kf2v_tasks.generation.submit import submit_generation

    pair = await check_pair("first.png", "last.png")
    sub = await submit_generation(client, pair, "a slow pan", ledger=Ledger("out"))
    print(sub.task_id, sub.reused, sub.resolution)
    ```
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Optional

from pydantic import BaseModel, Field

from kf2v_tasks.dashscope.models import GenerationOptions, Kf2vRequest, Resolution
from kf2v_tasks.errors import AmbiguousCreateError
from kf2v_tasks.generation.fingerprint import request_fingerprint
from kf2v_tasks.generation.frames import prepare_frame
from kf2v_tasks.generation.ledger import Ledger, LedgerRecord, LedgerState
from kf2v_tasks.generation.ledger_record import DEAD_STATUSES
from kf2v_tasks.generation.models import FramePair

if TYPE_CHECKING:
    from kf2v_tasks.dashscope.client import Kf2vClient

__all__ = ["AmbiguousPolicy", "Submission", "request_fingerprint", "submit_generation"]

logger = logging.getLogger("kf2v_tasks.generation.submit")


class AmbiguousPolicy(StrEnum):
    """After a create whose outcome is unknown: retry once (maybe a duplicate), or fail."""

    RETRY_ONCE = "retry_once"  # one guarded retry, reported as a possible duplicate
    FAIL = "fail"  # never resubmit; the row fails with the ambiguity recorded


class Submission(BaseModel):
    """The remote task that does a piece of work, new or reused.

    Example:
        ```python
        from datetime import UTC, datetime
        from kf2v_tasks.generation.submit import Submission
        sub = Submission(task_id="t-1", fingerprint="ab" * 32, submitted_at=datetime.now(UTC),
                         model="wan2.2-kf2v-flash", resolution="480P", duration_seconds=5)
        assert sub.resolution == "480P" and not sub.reused
        ```
    """

    task_id: str
    fingerprint: str
    request_id: Optional[str] = None
    submitted_at: datetime
    reused: bool = Field(default=False, description="An earlier, still valid task was reused.")
    possible_duplicate: bool = Field(
        default=False, description="An ambiguous create happened: a second task may exist."
    )
    create_attempts: int = 0
    model: str
    resolution: Optional[Resolution] = Field(default=None, description="Resolution tier asked.")
    duration_seconds: Optional[int] = Field(default=None, description="Video length asked (s).")
    prompt: Optional[str] = None
    negative_prompt: Optional[str] = None
    parameters: dict = Field(default_factory=dict)


def _now() -> datetime:
    return datetime.now(UTC)


async def submit_generation(
    client: Kf2vClient,
    frames: FramePair,
    prompt: Optional[str] = None,
    negative_prompt: Optional[str] = None,
    options: Optional[GenerationOptions] = None,
    *,
    ledger: Optional[Ledger] = None,
    ambiguous_policy: AmbiguousPolicy = AmbiguousPolicy.RETRY_ONCE,
    row_id: Optional[str] = None,
    storage_options: Optional[dict] = None,
) -> Submission:
    """Create the remote task for a validated frame pair, or reuse a valid earlier one.

    Args:
        client: an open :class:`~kf2v_tasks.dashscope.client.Kf2vClient`.
        frames: the validated pair from ``validate_frames``.
        prompt: text prompt.
        negative_prompt: what to avoid.
        options: model and parameters.
        ledger: the durable record; without one, nothing protects a re-run from paying twice.
        ambiguous_policy: what an ambiguous create leads to.
        row_id: manifest row id, recorded in the ledger for people reading it.
        storage_options: fsspec options for reading the frames again at send time.

    Returns:
        The :class:`Submission`.

    Raises:
        AmbiguousCreateError: when the policy forbids (another) retry.
        PermanentError / TransientError: from the client, as classified there.

    Example:
        ```python
        from kf2v_tasks.dashscope.models import GenerationOptions
        from kf2v_tasks.generation.ledger import Ledger
        from kf2v_tasks.generation.submit import submit_generation

        async with credentials.get_client() as client:
            sub = await submit_generation(
                client, pair, "a slow pan", options=GenerationOptions(resolution="480P"),
                ledger=Ledger("out"), row_id="sunrise",
            )
        ```
    """
    options = options or GenerationOptions()
    ambiguous_policy = AmbiguousPolicy(ambiguous_policy)
    fp = request_fingerprint(frames, prompt, negative_prompt, options)
    base = dict(
        fingerprint=fp,
        model=options.model.value,
        resolution=options.resolution,
        duration_seconds=options.duration,
        prompt=prompt,
        negative_prompt=negative_prompt,
        parameters=options.parameters(),
    )

    record: Optional[LedgerRecord] = await ledger.get(fp) if ledger else None
    if ledger and record is not None and Ledger.is_task_reusable(record):
        # One query makes reuse safe even when nobody recorded how the task ended.
        current = await client.get_task(record.task_id)
        if current.status in DEAD_STATUSES:
            record.not_reusable(current.status, current.code, current.message)
            await ledger.put(record)
    if ledger and record is not None and Ledger.is_task_reusable(record):
        logger.info("reusing task %s for fingerprint %s", record.task_id, fp[:12])
        return Submission(
            task_id=record.task_id,
            request_id=record.request_id,
            submitted_at=record.submitted_at or _now(),
            reused=True,
            possible_duplicate=record.possible_duplicate,
            create_attempts=record.create_attempts,
            **base,
        )

    if record is None:
        record = LedgerRecord.new(fp, row_id=row_id)
    elif record.task_id:
        # The earlier task is no longer usable (failed/expired): a new create is
        # legitimate. The record keeps its history; only the attempt count starts again.
        record = LedgerRecord.recreate_after(record, row_id=row_id)
    elif record.state in (LedgerState.SUBMITTING, LedgerState.AMBIGUOUS):
        # A create was attempted and its outcome is unknown (crash or ambiguous answer).
        record.create_outcome_unknown()
        if ambiguous_policy is AmbiguousPolicy.FAIL or record.create_attempts >= 2:
            await ledger.put(record)  # ledger is set: only it can hold an earlier create
            raise AmbiguousCreateError(
                f"an earlier create for fingerprint {fp[:12]} may have reached the service; "
                f"not resubmitting after {record.create_attempts} attempt(s) "
                f"(policy {ambiguous_policy.value})"
            )
        logger.warning(
            "fingerprint %s: earlier create outcome unknown; one guarded retry "
            "(possible duplicate)",
            fp[:12],
        )

    request = Kf2vRequest(
        first_frame_url=await prepare_frame(
            frames.first, client=client, model=options.model, storage_options=storage_options
        ),
        last_frame_url=await prepare_frame(
            frames.last, client=client, model=options.model, storage_options=storage_options
        ),
        prompt=prompt,
        negative_prompt=negative_prompt,
        options=options,
    )

    while True:
        sent = False

        async def mark_submitting() -> None:
            # Written only when the POST is about to leave (after the rate-limit wait):
            # a crash before this point leaves nothing ambiguous behind.
            nonlocal sent
            if sent:  # a retry of a create that certainly did not happen
                return
            sent = True
            record.begin_create()
            if ledger:
                await ledger.put(record)

        try:
            state = await client.create_task(request, before_send=mark_submitting)
        except AmbiguousCreateError as exc:
            record.create_ambiguous(str(exc))
            if ledger:
                await ledger.put(record)
            if ambiguous_policy is AmbiguousPolicy.FAIL or record.create_attempts >= 2:
                raise
            logger.warning(
                "ambiguous create for fingerprint %s (%s); one guarded retry, "
                "reported as a possible duplicate",
                fp[:12],
                exc,
            )
            continue
        except Exception as exc:
            # The create certainly did not happen (the client only raises these when
            # the service said no or the request never left): forget the attempt.
            record.create_rejected(
                getattr(exc, "code", None) or type(exc).__name__,
                getattr(exc, "message", None) or str(exc),
                sent=sent,
            )
            if ledger:
                await ledger.put(record)
            raise
        break

    record.submitted(state.task_id, state.request_id)
    if ledger:
        await ledger.put(record)
    return Submission(
        task_id=state.task_id,
        request_id=state.request_id,
        submitted_at=record.submitted_at,
        possible_duplicate=record.possible_duplicate,
        create_attempts=record.create_attempts,
        **base,
    )
