"""Submitting a generation without ever paying twice for the same work.

Before a create, the ledger is asked whether this fingerprint already has a valid
task (submitted < 24 h ago, not FAILED/UNKNOWN/CANCELED): if so it is reused. The
intent to create is written *before* the POST ("submitting"), so a crash between the
POST and recording its task id is seen on resume as an ambiguous create, never as
"nothing happened".
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Optional

from pydantic import BaseModel, Field

from kf2v_tasks.dashscope.models import (
    FramePair,
    GenerationOptions,
    Kf2vRequest,
    TaskStatus,
    fingerprint,
)
from kf2v_tasks.errors import AmbiguousCreateError

if TYPE_CHECKING:
    from kf2v_tasks.dashscope.client import Kf2vClient
    from kf2v_tasks.generation.ledger import Ledger, LedgerRecord

logger = logging.getLogger("kf2v_tasks.generation.submit")


class AmbiguousPolicy(str, Enum):
    """What to do when a create may or may not have reached the service."""

    RETRY_ONCE = "retry_once"  # one guarded retry, reported as a possible duplicate
    FAIL = "fail"  # never resubmit; the row fails with the ambiguity recorded


class Submission(BaseModel):
    """The remote task that does a piece of work, new or reused."""

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
    prompt: Optional[str] = None
    negative_prompt: Optional[str] = None
    parameters: dict = Field(default_factory=dict)


def request_fingerprint(
    frames: FramePair,
    prompt: Optional[str],
    negative_prompt: Optional[str],
    options: GenerationOptions,
) -> str:
    """Fingerprint of a generation from its validated frames, prompts and options."""
    return fingerprint(options, prompt, negative_prompt, frames.first.sha256, frames.last.sha256)


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
    """
    from kf2v_tasks.generation.frames import prepare_frame
    from kf2v_tasks.generation.ledger import Ledger, LedgerRecord

    options = options or GenerationOptions()
    ambiguous_policy = AmbiguousPolicy(ambiguous_policy)
    fp = request_fingerprint(frames, prompt, negative_prompt, options)
    base = dict(
        fingerprint=fp,
        model=options.model.value,
        prompt=prompt,
        negative_prompt=negative_prompt,
        parameters=options.parameters(),
    )

    record: Optional[LedgerRecord] = await ledger.get(fp) if ledger else None
    if record is not None and record.task_id and Ledger.is_task_reusable(record):
        # One query makes reuse safe even when nobody recorded how the task ended.
        current = await client.get_task(record.task_id)
        if current.status in (TaskStatus.FAILED, TaskStatus.CANCELED, TaskStatus.UNKNOWN):
            record.state = "terminal"
            record.terminal_status = current.status
            record.error_code, record.error_message = current.code, current.message
            record.add_event("not_reusable", status=current.status.value)
            await ledger.put(record)
    if record is not None and record.task_id and Ledger.is_task_reusable(record):
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
        record = LedgerRecord(fingerprint=fp, state="submitting", row_id=row_id)
    elif record.task_id:
        # The earlier task is no longer usable (failed/expired): a new create is
        # legitimate. Keep the record's history; only the attempt count starts again.
        previous = record
        record = LedgerRecord(
            fingerprint=fp,
            state="submitting",
            row_id=row_id or previous.row_id,
            events=list(previous.events),
            extra={
                **previous.extra,
                "earlier_tasks": [
                    *previous.extra.get("earlier_tasks", []),
                    {
                        "task_id": previous.task_id,
                        "status": previous.terminal_status.value
                        if previous.terminal_status
                        else None,
                        "possible_duplicate": previous.possible_duplicate,
                    },
                ],
            },
        )
        record.add_event(
            "recreate",
            previous_task_id=previous.task_id,
            previous_status=previous.terminal_status.value if previous.terminal_status else None,
        )
    elif record.state in ("submitting", "ambiguous"):
        # A create was attempted and its outcome is unknown (crash or ambiguous answer).
        record.possible_duplicate = True
        if ambiguous_policy is AmbiguousPolicy.FAIL or record.create_attempts >= 2:
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
            record.state = "submitting"
            record.create_attempts += 1
            record.add_event("create", attempt=record.create_attempts)
            if ledger:
                await ledger.put(record)

        try:
            state = await client.create_task(request, before_send=mark_submitting)
        except AmbiguousCreateError as exc:
            record.state = "ambiguous"
            record.possible_duplicate = True
            record.add_event("ambiguous_create", error=str(exc))
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
            if sent:
                record.create_attempts -= 1
            record.state = "ambiguous" if record.possible_duplicate else "terminal"
            record.error_code = getattr(exc, "code", type(exc).__name__)
            record.error_message = getattr(exc, "message", str(exc))
            record.add_event("create_rejected", error=record.error_code)
            if ledger:
                await ledger.put(record)
            raise
        break

    record.state = "submitted"
    record.task_id = state.task_id
    record.request_id = state.request_id
    record.submitted_at = _now()
    record.terminal_status = None
    record.error_code = record.error_message = None
    record.add_event("submitted", task_id=state.task_id)
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
