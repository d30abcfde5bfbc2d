"""Held claims: the file a claim is, and the thread that keeps this process's claims alive.

A claim (:mod:`kf2v_tasks.generation.claims`) is a lease. While this process holds one,
a background *thread* renews it with a conditional replace
(:func:`~kf2v_tasks.storage.conditional.replace_if_sync`) once two thirds of its lease
are spent, by the real time its own file says (a claim whose work ends sooner is never
renewed: a row costs one write per two thirds of a lease it is held, not one per tick),
and retries a failed renewal every twelfth of the lease, so three retries still fit before
it expires. A thread, so the lease outlives any event loop (sync twins and task runs open
and close their own) and dies with the process, as a lease should. A renewal that finds
the claim changed (taken over after we stalled past the lease, or removed) gives it up and
says so in the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Optional

from pydantic import BaseModel, Field

from kf2v_tasks import clock
from kf2v_tasks.host import pid_alive
from kf2v_tasks.storage.conditional import (
    ConditionFailedError,
    delete_if_sync,
    read_versioned_sync,
    replace_if_sync,
)

__all__ = [
    "HOLDER_ID",
    "ClaimDoc",
    "HeldClaim",
    "held_at",
    "hold",
    "lease_doc",
    "release_sync",
    "renew_due",
]

logger = logging.getLogger("kf2v_tasks.generation.claims")

#: This process's holder id (one per process: every run in it claims under this id).
HOLDER_ID = uuid.uuid4().hex
#: A claim is renewed when this share of its lease is left (the rest is spent working).
RENEW_WHEN_LEFT = 1 / 3
#: After a failed renewal, the next try comes this share of the lease later (three fit).
RETRY_SHARE = 1 / 12
#: The renewer's shortest sleep, real seconds.
_MIN_SLEEP = 0.05


#: The clocks a lease reads, swappable for a fake one in tests: the wall clock (UTC) that
#: claim files compare across processes, and the monotonic one that says when to renew.
wall_clock: Callable[[], datetime] = partial(datetime.now, UTC)
monotonic: Callable[[], float] = time.monotonic


def _now() -> datetime:
    return wall_clock()


class ClaimDoc(BaseModel):
    """The content of a claim file: who holds the work, until when."""

    fingerprint: str
    holder: str = Field(description="Process uuid of the holder.")
    token: str = Field(description="This acquisition (a new one on each takeover).")
    host: str
    pid: int
    row_id: Optional[str] = None
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime = Field(description="Wall clock UTC; past it the claim may be taken.")
    lease_seconds: float = Field(description="Service seconds per renewal.")
    taken_over_from: Optional[str] = Field(default=None, description="Previous holder's id.")

    def is_live(self, now: Optional[datetime] = None) -> bool:
        """Whether the lease has not yet expired."""
        return (now or _now()) < self.expires_at

    def holder_gone(self) -> bool:
        """Whether the holder was a process of this host that no longer runs (stopped,
        killed -9): it renews nothing, so its lease need not be waited out."""
        if self.host != socket.gethostname() or self.holder == HOLDER_ID or self.pid <= 0:
            return False
        return not pid_alive(self.pid)

    def who(self) -> str:
        """The holder as a person reads it (no secrets: ids, host, pid)."""
        row = f", row {self.row_id}" if self.row_id else ""
        return f"holder {self.holder[:12]} (host {self.host}, pid {self.pid}{row})"

    def to_bytes(self) -> bytes:
        """The file's bytes."""
        return self.model_dump_json(indent=1).encode()


class HeldClaim:
    """A claim this process holds; the renewer thread keeps it alive until released."""

    def __init__(
        self,
        url: str,
        storage_options: Optional[dict],
        doc: ClaimDoc,
        version: str,
        *,
        max_hold: float = 86400.0,
    ) -> None:
        self.url, self.storage_options = url, storage_options
        self.doc, self.version = doc, version
        self.lock = threading.Lock()  # renew vs release: never both at once
        self.released = False
        self.since = clock.now()
        self.max_hold = max_hold  # service seconds; then no longer renewed
        self.due = 0.0  # monotonic() at which to renew next
        self.schedule()

    def schedule(self) -> None:
        """Renew when ``RENEW_WHEN_LEFT`` of the lease is left, by the file's own expiry."""
        # The expiry others compare against is the one written: count from it, not from
        # when the write returned.
        left = (self.doc.expires_at - _now()).total_seconds()
        lease = clock.real_seconds(self.doc.lease_seconds)
        self.due = monotonic() + left - lease * RENEW_WHEN_LEFT

    def retry_soon(self) -> None:
        """A renewal failed: try again a twelfth of the lease from now."""
        self.due = monotonic() + clock.real_seconds(self.doc.lease_seconds) * RETRY_SHARE


_registry: dict[str, HeldClaim] = {}
_registry_lock = threading.Lock()
_renewer: Optional[threading.Thread] = None
_wake = threading.Event()
#: Claim files written (or being written) but not yet held: a write that lands as the command
#: stops (Ctrl-C cancels its caller, not its thread) is found here by :func:`release_all`.
_unheld: dict[str, Optional[dict]] = {}
_writes_done = threading.Condition(_registry_lock)
_writes_in_flight = 0


@contextlib.contextmanager
def claim_write(url: str, storage_options: Optional[dict]) -> Iterator[None]:
    """Around a claim file's write, until the claim is held (:func:`hold`) or given up."""
    global _writes_in_flight
    with _writes_done:
        _writes_in_flight += 1
        _unheld[url] = storage_options
    try:
        yield
    except Exception:
        with _writes_done:
            _unheld.pop(url, None)  # the write failed: the file is not ours
        raise
    finally:
        with _writes_done:
            _writes_in_flight -= 1
            _writes_done.notify_all()


def held_at(url: str) -> Optional[HeldClaim]:
    """The claim this process holds at ``url``, if any."""
    with _registry_lock:
        held = _registry.get(url)
    return held if held is not None and not held.released else None


def lease_doc(base: ClaimDoc, lease: float, **changes: Any) -> ClaimDoc:
    """``base`` renewed now for ``lease`` service seconds (with ``changes`` applied)."""
    now = _now()
    real = clock.real_seconds(lease)
    return base.model_copy(
        update={"renewed_at": now, "expires_at": now + timedelta(seconds=real), **changes}
    )


def _renew_sync(held: HeldClaim) -> None:
    with held.lock:
        if held.released or held.due > monotonic():
            return  # released, or renewed meanwhile by another caller of renew_due()
        if clock.now() - held.since > held.max_hold:
            logger.warning("claim %s held too long; no longer renewed", held.doc.fingerprint[:12])
            _forget(held)
            return
        doc = lease_doc(held.doc, held.doc.lease_seconds)
        try:
            held.version = replace_if_sync(
                held.url, doc.to_bytes(), held.version, held.storage_options
            )
            held.doc = doc
            held.schedule()
        except ConditionFailedError:
            # Taken over (we were stalled past the lease) or removed: not ours any more.
            logger.warning(
                "claim on fingerprint %s was lost (taken over or removed)",
                held.doc.fingerprint[:12],
            )
            _forget(held)
        except Exception as exc:  # storage hiccup: try again soon, the lease has slack
            logger.warning("renewing claim %s failed: %s", held.doc.fingerprint[:12], exc)
            held.retry_soon()


def _forget(held: HeldClaim) -> None:
    held.released = True
    with _registry_lock:
        if _registry.get(held.url) is held:
            del _registry[held.url]


def renew_due() -> float:
    """Renew every held claim that is due; return when the next one is (:data:`monotonic`).

    The renewer thread's one step; a test on a fake clock calls it after moving the clock.
    """
    with _registry_lock:
        held = list(_registry.values())
    now = monotonic()
    for h in held:
        if h.due <= now:
            _renew_sync(h)
    with _registry_lock:
        due = [h.due for h in _registry.values()]
    return min(due, default=now + 5.0)


def _renew_loop() -> None:
    while True:
        # Cleared before the registry is read: a claim held from now on wakes the sleep below.
        _wake.clear()
        next_due = renew_due()
        # Sleep until the next claim is due; hold() wakes us for a new one.
        _wake.wait(max(_MIN_SLEEP, next_due - monotonic()))


def hold(held: HeldClaim) -> HeldClaim:
    """Register ``held`` with this process's renewer (started on first use) and return it."""
    global _renewer
    with _registry_lock:
        _registry[held.url] = held
        _unheld.pop(held.url, None)
        if _renewer is None or not _renewer.is_alive():
            # A thread, not an asyncio task: it survives the event loops that come and go
            # (sync twins, task runs) and dies with the process, as a lease should.
            _renewer = threading.Thread(target=_renew_loop, name="kf2v-claims", daemon=True)
            _renewer.start()
    _wake.set()  # the renewer sleeps until its next due claim: let it count this one
    return held


def release_all(wait: float = 2.0) -> int:
    """Give back every claim this process holds (a command that stops); how many.

    Claim writes still in flight are waited for (at most ``wait`` seconds), and a claim file
    of ours that landed without being held is removed too.
    """
    with _writes_done:
        _writes_done.wait_for(lambda: _writes_in_flight == 0, timeout=wait)
        held = list(_registry.values())
        unheld = dict(_unheld)
        _unheld.clear()
    for h in held:
        release_sync(h)
    return len(held) + sum(_take_back(url, options) for url, options in unheld.items())


def _take_back(url: str, storage_options: Optional[dict]) -> bool:
    """Delete the claim file at ``url`` if this process's holder wrote it."""
    try:
        data, version = read_versioned_sync(url, storage_options)
        if json.loads(data).get("holder") != HOLDER_ID:
            return False
        delete_if_sync(url, version, storage_options)
        return True
    except (FileNotFoundError, ConditionFailedError):
        return False
    except Exception as exc:  # it expires on its own; the next run takes it over
        logger.warning("taking back claim file %s failed: %s", url, exc)
        return False


def release_sync(held: HeldClaim) -> None:
    """Stop renewing ``held`` and delete its file if it is still ours (blocking)."""
    with held.lock:
        if held.released:
            return
        _forget(held)
        try:
            delete_if_sync(held.url, held.version, held.storage_options)
        except ConditionFailedError:
            pass  # taken over already: nothing of ours to remove
        except Exception as exc:  # it expires on its own; the next run takes it over
            logger.warning("releasing claim %s failed: %s", held.doc.fingerprint[:12], exc)
