"""Submitting a generation without ever paying twice for the same work.

The ledger is asked first whether this fingerprint has a task that can still deliver
(submitted < 24 h ago, not FAILED/UNKNOWN/CANCELED): then it is reused. The intent to create
is written *before* the POST, so a crash between the POST and recording its task id is seen
on resume as an ambiguous create, never as "nothing happened". Two runs on one output are
kept from both creating by a claim on the fingerprint
(:mod:`kf2v_tasks.generation.claims`): the loser re-attaches to the winner's task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Optional

from pydantic import BaseModel, Field

from kf2v_tasks.dashscope.models import GenerationOptions, Kf2vRequest, Resolution
from kf2v_tasks.dashscope.task_state import TaskState
from kf2v_tasks.errors import AmbiguousCreateError
from kf2v_tasks.generation.audio import prepare_audio
from kf2v_tasks.generation.claims import ClaimBook, ClaimPolicy
from kf2v_tasks.generation.clip import prepare_clip
from kf2v_tasks.generation.fingerprint import request_fingerprint
from kf2v_tasks.generation.frames import prepare_frame
from kf2v_tasks.generation.ledger import UNREAD, Ledger, LedgerRecord, LedgerState
from kf2v_tasks.generation.ledger_state import DEAD_STATUSES
from kf2v_tasks.generation.models import FramePair
from kf2v_tasks.storage.files import verify_file

if TYPE_CHECKING:
    from kf2v_tasks.dashscope.client import Kf2vClient

__all__ = ["AmbiguousPolicy", "Submission", "submit_generation"]

logger = logging.getLogger("kf2v_tasks.generation.submit")


class AmbiguousPolicy(StrEnum):
    """After a create whose outcome is unknown: retry once (maybe a duplicate), or fail."""

    RETRY_ONCE = "retry_once"  # one guarded retry, reported as a possible duplicate
    FAIL = "fail"  # never resubmit; the row fails with the ambiguity recorded


class Submission(BaseModel):
    """The remote task that does a piece of work, new or reused.

    ``already_persisted_at`` is set when the ledger says this work's video was already
    kept (by an earlier or an overlapping run) at ``persisted_path``: the caller may check
    that file (e.g. with :func:`~kf2v_tasks.generation.persisted.find_persisted`) and report
    the row ``skipped`` instead of polling and downloading again. Polling and persisting
    such a submission still works (the task is SUCCEEDED; the kept file is reused).

    Example:
        ```python
        from datetime import UTC, datetime
        from kf2v_tasks.generation.submit import Submission
        sub = Submission(task_id="t-1", fingerprint="ab" * 32, submitted_at=datetime.now(UTC),
                         model="wan2.2-kf2v-flash", resolution="480P", duration_seconds=5)
        assert sub.resolution == "480P" and not sub.reused and sub.already_persisted_at is None
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
    audio_source: Optional[str] = Field(
        default=None, description="The driving audio as the user gave it (media models)."
    )
    audio_sha256: Optional[str] = Field(default=None, description="sha256 of the driving audio.")
    clip_source: Optional[str] = Field(
        default=None, description="The first_clip continued, as the user gave it (media models)."
    )
    clip_sha256: Optional[str] = Field(default=None, description="sha256 of the first_clip.")
    already_persisted_at: Optional[datetime] = Field(
        default=None, description="When the ledger recorded this work's video as kept, if it has."
    )
    persisted_path: Optional[str] = Field(
        default=None, description="Where that kept video is (with already_persisted_at)."
    )


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
    claims: Optional[ClaimPolicy] = None,
    record: Any = UNREAD,
    account: Optional[str] = None,
) -> Submission:
    """Create the remote task for a validated frame pair, or reuse a valid earlier one.

    With a ledger, the work is claimed before a create: when another run holds the claim,
    this one waits (bounded) for its task id and re-attaches (``reused=True``). The claim stays
    held while the caller polls and persists; it is released once the video is persisted or
    the task ended without one (or here, when the create fails).

    Args:
        ledger: without one, nothing protects a re-run from paying twice.
        row_id: manifest row id, recorded in the ledger for people reading it.
        account: the account's name (never a key), recorded so a re-run polls and downloads
            from that account.
        storage_options: fsspec options for reading the frames again at send time.
        claims: lease and wait lengths; ``ClaimPolicy(enabled=False)`` skips claiming.
        record: this work's record (or ``None``) as the caller already read it: it decides
            whether to claim, in place of a read. It may be old: it is read again under the
            claim before any create, and a task it names is checked at the service before
            reuse. Ignored when claims are off (then the one read is made here).

    Raises:
        AmbiguousCreateError: when the policy forbids (another) retry.
        ClaimHeldError: another run holds the claim and recorded no task in time.
        PermanentError / TransientError: from the client, as classified there.
    """
    options = options or GenerationOptions()
    ambiguous_policy = AmbiguousPolicy(ambiguous_policy)
    fp = request_fingerprint(frames, prompt, negative_prompt, options)
    base = dict(
        fingerprint=fp,
        model=options.model,
        resolution=options.resolution,
        duration_seconds=options.duration,
        prompt=prompt,
        negative_prompt=negative_prompt,
        parameters=options.parameters(),
        audio_source=frames.audio.source if frames.audio else None,
        audio_sha256=frames.audio.sha256 if frames.audio else None,
        clip_source=frames.clip.source if frames.clip else None,
        clip_sha256=frames.clip.sha256 if frames.clip else None,
    )
    work = _Work(client, frames, prompt, negative_prompt, options, storage_options)
    if ledger is None:
        return await work.create(
            LedgerRecord.new(fp, row_id=row_id), None, ambiguous_policy, base, account=account
        )

    policy = claims or ClaimPolicy()
    book = ClaimBook(ledger, policy) if policy.enabled else None
    # An old read is enough to decide whether to claim: the claim's own read decides a
    # create. Without claims this read is the only guard: it is made fresh.
    record = await _current(client, ledger, fp, record if book is not None else UNREAD)
    if await _done(record, storage_options):
        if book is not None and record.state is not LedgerState.PERSISTED:
            # Hold the claim while we poll and persist if nobody does (free, or expired:
            # its holder died); a live holder keeps it and we share its task.
            try:
                await book.try_acquire(fp, row_id=row_id)
            except Exception as exc:  # reuse pays nothing: a claim we cannot take is no reason
                logger.warning("fingerprint %s: could not take its claim: %s", fp[:12], exc)
        return _reused(record, base)

    if book is not None:
        got = await book.acquire(fp, row_id=row_id)
        if got.record is not None:  # another run created it while we waited
            logger.info(
                "fingerprint %s: re-attaching to task %s of another run",
                fp[:12],
                got.record.task_id,
            )
            return _reused(got.record, base)
    try:
        if book is not None:
            # Read again under the claim: the work may have been done while we waited.
            record = await _current(client, ledger, fp)
            if await _done(record, storage_options):
                if record.state is LedgerState.PERSISTED:
                    await book.release(fp)
                return _reused(record, base)
        return await work.create(
            record, ledger, ambiguous_policy, base, row_id=row_id, account=account
        )
    except BaseException:
        if book is not None:  # the create failed (or we were cancelled): the row is over
            await book.release(fp)
        raise


async def _done(record: Optional[LedgerRecord], storage_options: Optional[dict]) -> bool:
    """Whether this work needs no create: its task can still deliver, or its video is kept.

    A kept video outlives its task: a run that planned before another run kept it may reach
    this work after the task's 24 h (and under ``KF2V_TIME_SCALE`` that is minutes).
    """
    if record is None:
        return False
    if record.is_reusable():
        return True
    if record.state is not LedgerState.PERSISTED or not record.output_path or not record.sha256:
        return False
    return await verify_file(record.output_path, record.sha256, storage_options=storage_options)


def _reused(record: LedgerRecord, base: dict) -> Submission:
    logger.info("reusing task %s for fingerprint %s", record.task_id, record.fingerprint[:12])
    persisted = record.state is LedgerState.PERSISTED
    return Submission(
        task_id=record.task_id,
        request_id=record.request_id,
        submitted_at=record.submitted_at or _now(),
        reused=True,
        possible_duplicate=record.possible_duplicate,
        create_attempts=record.create_attempts,
        already_persisted_at=record.persisted_at if persisted else None,
        persisted_path=record.output_path if persisted else None,
        **base,
    )


async def _current(
    client: Kf2vClient, ledger: Ledger, fp: str, known: Any = UNREAD
) -> Optional[LedgerRecord]:
    """The record (``known``: as already read), with a usable-looking task checked once
    against the service."""
    record = await ledger.get(fp) if known is UNREAD else known
    checked: Optional[str] = None
    while record is not None and record.is_reusable() and record.task_id != checked:
        # One query makes reuse safe even when nobody recorded how the task ended.
        checked = record.task_id
        current = await client.get_task(checked)
        if current.status not in DEAD_STATUSES:
            break
        # Conditional: the record read may be old; never written back over a newer one
        # (whose own task is then checked in turn).
        record = await ledger.modify(fp, _closing(current))
    return record


def _closing(dead: TaskState) -> Callable[[LedgerRecord], bool]:
    """A ledger change marking ``dead``'s task not reusable, if the record still follows it."""

    def close(record: LedgerRecord) -> bool:
        if record.task_id != dead.task_id:  # re-created since it was read: not ours to close
            return False
        record.not_reusable(dead.status, dead.code, dead.message)
        return True

    return close


class _Work:
    """One create: the request is built only when a create is really needed."""

    def __init__(self, client, frames, prompt, negative_prompt, options, storage_options):
        self.client, self.frames, self.options = client, frames, options
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.storage_options = storage_options

    async def request(self) -> Kf2vRequest:
        f, o = self.frames, self.options
        how = {"client": self.client, "model": o.model, "storage_options": self.storage_options}
        return Kf2vRequest(
            first_frame_url=await prepare_frame(f.first, **how) if f.first else None,
            last_frame_url=await prepare_frame(f.last, **how) if f.last else None,
            audio_url=await prepare_audio(f.audio, **how) if f.audio else None,
            clip_url=await prepare_clip(f.clip, **how) if f.clip else None,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            options=o,
        )

    async def create(
        self,
        record: Optional[LedgerRecord],
        ledger: Optional[Ledger],
        ambiguous_policy: AmbiguousPolicy,
        base: dict,
        *,
        row_id: Optional[str] = None,
        account: Optional[str] = None,
    ) -> Submission:
        fp = base["fingerprint"]
        if record is None:
            record = LedgerRecord.new(fp, row_id=row_id)
        elif record.task_id:
            # The earlier task is no longer usable (failed/expired): a new create is
            # legitimate. The record keeps its history; only the attempt count starts again.
            record = LedgerRecord.recreate_after(record, row_id=row_id)
        elif (
            record.state is LedgerState.SUBMITTING
            and record.create_attempts == 0
            and not record.possible_duplicate
        ):
            pass  # no create ever left (e.g. only a claim takeover was noted): a fresh start
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
        if account:
            record.extra["account"] = account
        return await self._send(record, ledger, ambiguous_policy, base)

    async def _send(
        self,
        record: LedgerRecord,
        ledger: Optional[Ledger],
        ambiguous_policy: AmbiguousPolicy,
        base: dict,
    ) -> Submission:
        fp = base["fingerprint"]
        request = await self.request()
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
                state = await self.client.create_task(request, before_send=mark_submitting)
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
