"""Claims: a lease on one piece of work, so two runs on the same output never pay for it twice.

Before a create, the run claims the work's fingerprint by creating
``<root>/.kf2v/claims/<fingerprint>.json`` *exclusively* (see
:mod:`kf2v_tasks.storage.conditional`: ``os.link`` on local disk, ``If-None-Match: *`` on
S3). The file names its holder (a uuid per process, plus host and pid for people reading
it) and when the lease expires. Exactly one run wins; the others do not create. They wait
(bounded) until the holder's task id appears in the ledger record and then re-attach to
that task, or fail with :class:`ClaimHeldError` naming the holder.

A claim is a lease: a background thread of the holder's process renews every held claim
(conditional replace, ``If-Match: <etag>`` on S3, lock + check + ``os.replace`` on disk)
while its row's create, poll and persist go on, and the claim is released when the row's
work is done (:func:`release_claim`, called when the video is persisted or the task
failed). A holder that dies stops renewing; once the lease has expired, the next run
takes the claim over (conditional replace of the expired file) and writes the takeover
(who, when, from whom) into the ledger record's events.

Times: leases are service seconds (:mod:`kf2v_tasks.clock`, so ``KF2V_TIME_SCALE``
compresses them), but never shorter than :data:`MIN_LEASE_REAL_SECONDS` of real time, so
a busy machine's scheduling jitter cannot expire a live holder. Expiry is written as wall
clock UTC: processes on different machines sharing one S3 output need clocks in sync to
well under the lease (NTP gives milliseconds).

What holds where: on local disk and S3 the create, renew and takeover are atomic (one
winner). On other fsspec stores (``memory://``, GCS, Azure via fsspec) they are
write-then-read-back-and-compare, which narrows but does not close the race: two runs
starting within milliseconds of each other could both believe they hold the claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Optional

from pydantic import BaseModel, Field, ValidationError

from kf2v_tasks import clock
from kf2v_tasks.errors import PermanentError
from kf2v_tasks.generation.claim_lease import (
    HOLDER_ID,
    ClaimDoc,
    HeldClaim,
    claim_write,
    held_at,
    hold,
    lease_doc,
    release_sync,
)
from kf2v_tasks.generation.ledger_record import LedgerRecord
from kf2v_tasks.storage.conditional import (
    ConditionFailedError,
    create_exclusive,
    delete_if,
    read_versioned,
    replace_if,
)
from kf2v_tasks.storage.paths import RESERVED_DIR, is_url, join, run_sync

if TYPE_CHECKING:  # the ledger imports this module (to release claims): no cycle at runtime
    from kf2v_tasks.generation.ledger import Ledger

__all__ = [
    "HOLDER_ID",
    "ClaimBook",
    "ClaimDoc",
    "ClaimHeldError",
    "ClaimPolicy",
    "Claimed",
    "release_claim",
    "wait_for_other_holder",
]

logger = logging.getLogger("kf2v_tasks.generation.claims")

#: A lease never lasts less than this in real seconds, whatever the time scale. Under time
#: compression it sets the renewal cadence (4 s, two thirds of it): rows a busy process
#: holds a few seconds are not renewed, and only a 2 s stall of the renewer loses a claim.
MIN_LEASE_REAL_SECONDS = 6.0


class ClaimPolicy(BaseModel):
    """How long a claim lasts and how long a run waits for someone else's."""

    enabled: bool = Field(default=True, description="Claim work before creating it.")
    lease_seconds: float = Field(
        default=120.0, gt=0, description="Lease length in service seconds (renewed by holder)."
    )
    wait_seconds: Optional[float] = Field(
        default=None,
        gt=0,
        description="Longest wait for another holder's task id (default: 1.5 x the lease).",
    )
    poll_seconds: float = Field(
        default=2.0, gt=0, description="Service seconds between looks while waiting."
    )
    max_hold_seconds: float = Field(
        default=86400.0, gt=0, description="A claim is no longer renewed after this long."
    )

    def lease(self) -> float:
        """The effective lease in service seconds (with the real-time floor applied)."""
        return max(self.lease_seconds, MIN_LEASE_REAL_SECONDS * clock.time_scale())

    def wait_limit(self) -> float:
        """How long to wait for another holder, in service seconds (> the lease)."""
        lease = self.lease()
        return max(self.wait_seconds or 0.0, lease * 1.5)


class ClaimHeldError(PermanentError):
    """Another run holds the claim and no task id appeared within the wait limit."""

    code = "ClaimHeld"

    def __init__(self, fingerprint: str, holder: str, waited: float) -> None:
        self.fingerprint, self.holder, self.waited = fingerprint, holder, waited
        super().__init__(
            f"fingerprint {fingerprint[:12]} is claimed by {holder}, which recorded no task "
            f"within {waited:.0f} service seconds; not creating it again (it may still be "
            "working: run again later, or remove the claim file if that run is gone)"
        )

    def __reduce__(self):  # Prefect may pickle a failed state's exception
        return (type(self), (self.fingerprint, self.holder, self.waited))


@dataclass
class Claimed:
    """What :meth:`ClaimBook.acquire` got: the claim (``held``), or another run's usable task."""

    held: Optional[HeldClaim] = None
    record: Optional[LedgerRecord] = None
    other: Optional[ClaimDoc] = None


# ---------------------------------------------------------------------- the book


class ClaimBook:
    """The claims under one ledger's output root (``<root>/.kf2v/claims/``).

    Args:
        ledger: the ledger of the output root; takeovers are written into its records.
        policy: lease and wait lengths.
    """

    def __init__(self, ledger: Ledger, policy: Optional[ClaimPolicy] = None) -> None:
        self.ledger = ledger
        self.policy = policy or ClaimPolicy()
        self.storage_options = ledger.storage_options
        root = ledger.root
        if not is_url(root):  # one key per file in this process's registry, however named
            root = os.path.abspath(os.path.expanduser(root))
        self.dir_url = join(root, RESERVED_DIR, "claims")

    def url_of(self, fingerprint: str) -> str:
        """The claim file's URL (or local path)."""
        self.ledger.path_of(fingerprint)  # the same safe-name check as the ledger's
        return join(self.dir_url, f"{fingerprint}.json")

    def holds(self, fingerprint: str) -> bool:
        """Whether this process holds the claim on ``fingerprint``."""
        return held_at(self.url_of(fingerprint)) is not None

    async def read(self, fingerprint: str) -> Optional[tuple[ClaimDoc, str]]:
        """The current claim and its version, or ``None`` when nobody holds it.

        An unreadable claim file reads as expired long ago: it can be taken over, never
        blocks for ever.
        """
        url = self.url_of(fingerprint)
        try:
            data, version = await read_versioned(url, storage_options=self.storage_options)
        except FileNotFoundError:
            return None
        try:
            return ClaimDoc.model_validate_json(data), version
        except (ValueError, ValidationError):
            epoch = datetime(1970, 1, 1, tzinfo=UTC)
            junk = ClaimDoc(
                fingerprint=fingerprint, holder="unreadable", token="", host="?", pid=0,
                acquired_at=epoch, renewed_at=epoch, expires_at=epoch, lease_seconds=0,
            )  # fmt: skip
            return junk, version

    def _new_doc(self, fingerprint: str, row_id: Optional[str], **extra) -> ClaimDoc:
        now = datetime.now(UTC)
        base = ClaimDoc(
            fingerprint=fingerprint, holder=HOLDER_ID, token=uuid.uuid4().hex,
            host=socket.gethostname(), pid=os.getpid(), row_id=row_id, acquired_at=now,
            renewed_at=now, expires_at=now, lease_seconds=self.policy.lease(), **extra,
        )  # fmt: skip
        return lease_doc(base, base.lease_seconds)

    def _hold(self, url: str, doc: ClaimDoc, version: str) -> HeldClaim:
        return hold(
            HeldClaim(
                url, self.storage_options, doc, version, max_hold=self.policy.max_hold_seconds
            )
        )

    async def try_acquire(
        self, fingerprint: str, *, row_id: Optional[str] = None
    ) -> tuple[Optional[HeldClaim], Optional[ClaimDoc]]:
        """One attempt without waiting: ``(held, None)`` or ``(None, live claim of another)``.

        A free name is claimed; an expired claim is taken over (and the takeover written
        into the ledger record). A claim this process already holds is returned as held
        only once its work has a task id (the earlier caller here finished creating).
        """
        url = self.url_of(fingerprint)
        for _ in range(5):  # each turn loses a race to another run at most once
            mine = held_at(url)
            if mine is not None:
                record = await self.ledger.get(fingerprint)
                if record is not None and record.task_id:
                    return mine, None
                return None, mine.doc  # another caller in this process is creating it
            doc = self._new_doc(fingerprint, row_id)
            try:
                version = await self._write(
                    url, create_exclusive(url, doc.to_bytes(), storage_options=self.storage_options)
                )
                return self._hold(url, doc, version), None
            except FileExistsError:
                pass
            current = await self.read(fingerprint)
            if current is None:
                continue  # released between our create and our read: try again
            other, version = current
            if other.is_live() and not other.holder_gone():
                return None, other
            doc = self._new_doc(fingerprint, row_id, taken_over_from=other.holder)
            try:
                version = await self._write(
                    url,
                    replace_if(url, doc.to_bytes(), version, storage_options=self.storage_options),
                )
            except ConditionFailedError:
                continue  # renewed, released or taken by a third run meanwhile
            held = self._hold(url, doc, version)
            try:
                await self._record_takeover(fingerprint, doc, other, row_id)
            except BaseException:
                await run_sync(release_sync, held)  # never keep a claim nobody will release
                raise
            return held, None
        current = await self.read(fingerprint)
        return None, current[0] if current else None

    async def _write(self, url: str, write: Awaitable[str]) -> str:
        """A claim file's write (create or takeover): its version once it has landed.

        The write runs in a worker thread, which a cancelled caller (Ctrl-C) does not stop:
        the file would land with nobody holding it, and the next run would wait out its
        lease. Cancelled, this waits for the write and takes the file back before raising.
        """
        with claim_write(url, self.storage_options):  # release_all finds it if we stop
            op = asyncio.ensure_future(write)
            try:
                return await asyncio.shield(op)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await delete_if(url, await op, storage_options=self.storage_options)
                raise

    async def _record_takeover(
        self, fingerprint: str, doc: ClaimDoc, old: ClaimDoc, row_id: Optional[str]
    ) -> None:
        logger.warning(
            "fingerprint %s: took over the expired claim of %s", fingerprint[:12], old.who()
        )

        def note(record: LedgerRecord) -> bool:
            record.add_event(
                "claim_takeover",
                holder=doc.holder,
                host=doc.host,
                pid=doc.pid,
                from_holder=old.holder,
                from_host=old.host,
                from_pid=old.pid,
                expired_at=old.expires_at.isoformat(),
            )
            return True

        # A conditional write (S3): the dead holder's re-attached peers may still write it.
        if await self.ledger.modify(fingerprint, note) is None:
            record = LedgerRecord.new(fingerprint, row_id=row_id)
            note(record)
            await self.ledger.put(record)  # no record yet: only the claim holder starts one

    async def acquire(self, fingerprint: str, *, row_id: Optional[str] = None) -> Claimed:
        """Claim the work, waiting (bounded) while another run holds it.

        Returns ``Claimed(held=...)`` once the claim is ours, or ``Claimed(record=...)``
        as soon as the other holder's ledger record has a usable task (re-attach to it).

        Raises:
            ClaimHeldError: the wait limit passed with the other claim live and no task.
        """
        started = clock.now()
        limit = self.policy.wait_limit()
        announced = False
        while True:
            held, other = await self.try_acquire(fingerprint, row_id=row_id)
            if held is not None:
                return Claimed(held=held)
            record = await self.ledger.get(fingerprint)
            if record is not None and record.is_reusable():
                return Claimed(record=record, other=other)
            waited = clock.now() - started
            who = other.who() if other else "another run"
            if waited >= limit:
                raise ClaimHeldError(fingerprint, who, waited)
            if not announced:
                logger.info(
                    "fingerprint %s is claimed by %s; waiting up to %.0f service seconds "
                    "for its task",
                    fingerprint[:12],
                    who,
                    limit,
                )
                announced = True
            await clock.sleep(min(self.policy.poll_seconds, limit - waited))

    async def release(self, fingerprint: str) -> bool:
        """Give back this process's claim on ``fingerprint``; ``False`` if it held none."""
        held = held_at(self.url_of(fingerprint))
        if held is None:
            return False
        await run_sync(release_sync, held)
        return True

    async def wait_until_free(self, fingerprint: str) -> None:
        """Wait (at most the wait limit) while another process's live claim exists.

        Used before keeping a video another run may be keeping right now: after it, the
        file that run committed is found and reused instead of downloaded again.
        """
        if self.holds(fingerprint):
            return
        started = clock.now()
        limit = self.policy.wait_limit()
        while clock.now() - started < limit:
            try:
                current = await self.read(fingerprint)
            except Exception as exc:  # only an optimisation: never fail the row over it
                logger.debug("reading claim %s failed: %s", fingerprint[:12], exc)
                return
            if current is None or not current[0].is_live() or current[0].holder == HOLDER_ID:
                return
            await clock.sleep(self.policy.poll_seconds)


async def release_claim(ledger: Optional[Ledger], fingerprint: Optional[str]) -> bool:
    """Release this process's claim on ``fingerprint`` under ``ledger``'s root, if it holds one."""
    if ledger is None or not fingerprint:
        return False
    return await ClaimBook(ledger).release(fingerprint)


async def wait_for_other_holder(ledger: Optional[Ledger], fingerprint: Optional[str]) -> None:
    """Wait (bounded) while another process holds a live claim on ``fingerprint``."""
    if ledger is None or not fingerprint:
        return
    await ClaimBook(ledger).wait_until_free(fingerprint)
