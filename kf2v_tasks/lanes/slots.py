"""In-flight task slots: a local limit, backed by a Prefect global concurrency limit.

Within a run the limit is a semaphore; each local slot also holds one slot of the lane's
global concurrency limit (GCL), so all runs on one server keep within the account's quota.
A missing limit is created (:func:`~kf2v_tasks.lanes.gcl.ensure_limit`); an inactive one or
an unreachable server limits in-process only, and with no server at all (ephemeral mode)
runs on one machine share lock files (:mod:`~kf2v_tasks.lanes.machine_slots`). Held lease
ids are written down (:class:`~kf2v_tasks.lanes.gcl.LeaseBook`) so the next run gives back a
killed run's slots. Prefect hands GCL slots over slowly (PrefectHQ/prefect#15618, #23183),
so a held GCL slot is passed straight to the next waiting row and goes back to the server
only when no row here wants it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Optional, Union

from kf2v_tasks.background import spawn
from kf2v_tasks.lanes.gcl import (
    LeaseBook,
    LimitMissingError,
    acquire_slot,
    ensure_limit,
    keep_lease,
    shared_server,
    usable_limit,
)
from kf2v_tasks.lanes.machine_slots import MachineSlot, slot_folder

logger = logging.getLogger("kf2v_tasks.lanes.slots")


class _Lease:
    """One lease of ``slots`` GCL slots: a background coroutine that holds, renews and returns it.

    A pool asks for as many slots as its rows are waiting for, in one call: measured on a
    SQLite server busy with a per-step batch's task runs, each ask took ~2 s, so 32 asks one
    slot at a time left slots idle for a minute. All leases of a pool talk through its one
    Prefect client, one ask at a time (concurrent asks contend: 32 at once took 6-8 s to be
    granted, one after the other 0.13 s on an idle server).
    """

    def __init__(self, name: str, book: LeaseBook, gate: _ServerGate, want: int, size: int) -> None:
        self.name = name
        self.size = size
        self.book = book
        self.gate = gate
        self.want = want
        self.slots = 0  # granted: between 1 and ``want``
        self.in_use = 0  # of those, handed to rows now
        self.acquired = asyncio.Event()
        self.release = asyncio.Event()
        self.error: Optional[BaseException] = None
        self.task: Optional[asyncio.Task[None]] = spawn(self._hold(), name="kf2v-slot")

    async def _hold(self) -> None:
        try:
            client = await self.gate.client()
            try:
                lease_id, self.slots = await acquire_slot(client, self.name, self.want)
            except LimitMissingError:  # deleted since the lane opened: the lane's own again
                await ensure_limit(self.name, self.size)
                lease_id, self.slots = await acquire_slot(client, self.name, self.want)
            # Written down so that, if this process is killed, the next run here gives
            # the slots back instead of waiting for a lease that may never expire.
            self.book.add(lease_id)
            try:
                self.acquired.set()
                await keep_lease(client, lease_id, self.release)
            finally:
                with contextlib.suppress(Exception):
                    await client.release_concurrency_slots_with_lease(lease_id)
                self.book.remove(lease_id)
        except BaseException as exc:  # surfaced to the waiter, never swallowed
            self.error = exc
            self.acquired.set()


class _ServerGate:
    """The pool's one Prefect client, opened on first use."""

    def __init__(self) -> None:
        self._stack: Optional[contextlib.AsyncExitStack] = None
        self._client = None
        self._opening = asyncio.Lock()

    async def client(self):
        from prefect.client.orchestration import get_client

        async with self._opening:
            if self._client is None:
                stack = contextlib.AsyncExitStack()
                self._client = await stack.enter_async_context(get_client())
                self._stack = stack
        return self._client

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()


class _MachineLease:
    """One held machine-wide slot (a locked file), shaped like :class:`_Lease` for the pool."""

    def __init__(self, slot: MachineSlot) -> None:
        self.slot = slot
        self.release = self  # ``lease.release.set()`` gives it back, as for a GCL lease
        self.task: Optional[asyncio.Task[None]] = None
        self.slots = 1
        self.in_use = 0

    def set(self) -> None:
        self.slot.release()


_AnyLease = Union[_Lease, _MachineLease]


class HeldSlot:
    """One taken slot; :meth:`release` gives it back (once, however often it is called)."""

    def __init__(self, give_back: Callable[[], None]) -> None:
        self._give_back: Optional[Callable[[], None]] = give_back

    def release(self) -> None:
        """Give the slot back now; later calls do nothing."""
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()


class SlotPool:
    """At most ``size`` remote tasks in flight from this run (and, with ``gcl_name``, account-wide)."""

    def __init__(
        self, size: int, gcl_name: Optional[str] = None, *, machine_folder: Optional[Path] = None
    ) -> None:
        if size < 1:
            raise ValueError("slot pool size must be ≥ 1")
        self.size = size
        self.gcl_name = gcl_name
        self.machine_folder = machine_folder
        self._local = asyncio.Semaphore(size)
        self._idle: deque[_AnyLease] = deque()  # one entry per free slot this run holds
        self._all: list[_AnyLease] = []
        self._waiting = 0  # rows waiting for the local limit
        self._needing = 0  # rows past it, waiting for a server slot
        self._held = 0  # server slots this run holds
        self._asking: Optional[_Lease] = None  # the one ask to the server in flight
        self._expected = 0  # rows about to ask (see expect())
        self._warm = False  # slots asked for before the rows start are kept for them (warm())
        self._excess = 0  # slots to take away as they are given back (shrink())
        self._ask_error: Optional[BaseException] = None
        self._collector: Optional[asyncio.Task[None]] = None
        self._changed = asyncio.Event()
        self._book: Optional[LeaseBook] = None
        self._gate: Optional[_ServerGate] = None
        self.in_use = 0
        self.peak = 0
        self.gcl_acquisitions = 0

    @classmethod
    async def create(cls, size: int, gcl_name: Optional[str] = None) -> SlotPool:
        """A pool that also holds slots of the global limit ``gcl_name``.

        The limit is created with ``size`` slots when missing, so overlapping runs share the
        account without ``kf2v limits apply``. Without a usable limit (inactive, or no
        server) the pool limits in-process only. Which applies is logged.
        """
        if gcl_name and not await usable_limit(gcl_name, size):
            if not shared_server():
                # No server to share through: runs on this machine share lock files instead.
                folder = slot_folder(gcl_name)
                logger.info(
                    "sharing the lane's %d tasks at the service with other runs on this "
                    "machine through lock files in %s",
                    size,
                    folder,
                )
                return cls(size, None, machine_folder=folder)
            gcl_name = None
        return cls(size, gcl_name)

    def _hand_out(self, lease: _AnyLease) -> _AnyLease:
        lease.in_use += 1
        return lease

    async def _take_lease(self) -> Optional[_AnyLease]:
        if self._idle:
            return self._hand_out(self._idle.popleft())
        if self.machine_folder is not None:
            lease = _MachineLease(await MachineSlot.acquire(self.machine_folder, self.size))
            self._all.append(lease)
            return self._hand_out(lease)
        if not self.gcl_name:
            return None
        self._open_server()
        self._needing += 1
        try:
            while True:
                if self._idle:
                    return self._hand_out(self._idle.popleft())
                changed = self._changed
                if self._asking is None:
                    if self._ask_error is not None:
                        error, self._ask_error = self._ask_error, None
                        raise error
                    self._ask()
                # Woken by a slot given back here or by the server's answer, whichever first:
                # a run that holds the whole limit must not wait on the server for its own.
                await changed.wait()
        finally:
            self._needing -= 1

    def _open_server(self) -> None:
        self._book = self._book or LeaseBook()
        self._gate = self._gate or _ServerGate()

    def _ask(self) -> None:
        """Ask the server, once at a time, for a slot for every row of this run that needs one."""
        assert self.gcl_name and self._book and self._gate
        want = max(1, min(max(self._needing, self._expected), self.size - self._held))
        self._expected = 0  # a hint for the first ask only
        lease = self._asking = _Lease(self.gcl_name, self._book, self._gate, want, self.size)
        self._all.append(lease)

        async def collect() -> None:
            await lease.acquired.wait()
            self._asking = None
            if lease.error is not None:
                self._ask_error = lease.error
            else:
                self.gcl_acquisitions += 1
                self._held += lease.slots
                self._idle.extend([lease] * lease.slots)
                self._give_back_if_unwanted(lease)
            self._notify()

        self._collector = spawn(collect(), name="kf2v-slot-collector")

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _give_back_if_unwanted(self, lease: _AnyLease) -> None:
        # A block goes back to the server only when none of its slots is in use and no row
        # here waits for one.
        if lease.in_use == 0 and not self._waiting and not self._needing and not self._warm:
            self._idle = deque(x for x in self._idle if x is not lease)
            self._held -= lease.slots
            lease.release.set()

    def _return_lease(self, lease: Optional[_AnyLease]) -> None:
        if lease is None:
            return
        lease.in_use -= 1
        self._idle.append(lease)  # kept for the next row of this run
        self._give_back_if_unwanted(lease)
        self._notify()

    def shrink(self, size: int) -> None:
        """Allow at most ``size`` slots from now on (rows holding more finish normally)."""
        # The next slots given back are not handed on: each is one slot fewer, for good.
        self._excess += max(0, self.size - max(1, size))
        self.size = min(self.size, max(1, size))

    def expect(self, rows: int) -> None:
        """Say that ``rows`` rows are about to ask for slots: the first ask covers them all.

        An ask costs a server round trip (seconds on a busy server), and rows start one
        after the other, so without the hint the first ask would be for one slot only.
        """
        self._expected = max(0, int(rows))

    async def warm(self, rows: int) -> None:
        """Take the slots ``rows`` rows will want from the server now, before they start.

        A lane's first ask made while another lane's rows start their task runs meets a
        SQLite server busy with their writes: it is answered 503 and Prefect's client asks
        again only 2 s later (B6/B7 measured the second lane starting 2-7 real s late).
        Asked before any row starts, every lane has its slots at once; they are kept for
        this run's rows until the first of them takes one (or :meth:`settle`).
        """
        self.expect(rows)  # also the hint for a later ask, when this one is not made
        if not self.gcl_name or rows < 1 or self._idle or self._asking is not None:
            return
        self._open_server()
        self._warm = True
        self._ask()
        asking = self._asking
        if asking is not None:
            await asking.acquired.wait()
        if self._collector is not None:
            with contextlib.suppress(BaseException):
                await self._collector

    async def take(self) -> HeldSlot:
        """Wait for one in-flight slot; ``release()`` it once the remote task has ended."""
        self._warm = False  # the rows have started: slots no row wants go back as usual
        # Counted here rather than read from asyncio.Semaphore's private waiter list.
        self._waiting += 1
        try:
            await self._local.acquire()
        finally:
            self._waiting -= 1
        try:
            lease = await self._take_lease()
        except BaseException:
            self._local.release()
            raise
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)

        def give_back() -> None:
            self.in_use -= 1
            # Hand the lease on first, so the waiter woken by release() finds it idle.
            self._return_lease(lease)
            if self._excess:
                self._excess -= 1
            else:
                self._local.release()

        return HeldSlot(give_back)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[HeldSlot]:
        """Hold one in-flight slot for the body (``held.release()`` gives it back early)."""
        held = await self.take()
        try:
            yield held
        finally:
            held.release()

    async def settle(self) -> None:
        """Wait until every global-limit slot no row holds is back on the server.

        A run ends with this: idle leases go back on their own, and the next run (or
        ``kf2v limits show``) must see them free.
        """
        if self._warm:  # warmed for rows that never came (all kept already, say)
            self._warm = False
            for lease in list(self._idle):
                self._give_back_if_unwanted(lease)
        for lease in list(self._all):
            if lease.in_use == 0 and lease not in self._idle:
                lease.release.set()
                if lease.task is not None:
                    with contextlib.suppress(BaseException):
                        await lease.task
                self._all.remove(lease)

    async def close(self) -> None:
        """Give every held global-limit slot back to the server, and wait until it has them."""
        while self._idle:
            self._idle.popleft().release.set()
        for lease in self._all:
            lease.release.set()
            if isinstance(lease, _Lease) and not lease.acquired.is_set() and lease.task:
                lease.task.cancel()  # still asking a full server: nothing to give back
            if lease.task is not None:
                with contextlib.suppress(BaseException):
                    await lease.task
        self._all.clear()
        if self._gate is not None:
            await self._gate.close()
            self._gate = None
