"""In-flight task slots: a local limit, optionally backed by a Prefect global concurrency limit.

Within one run the limit is an in-process semaphore: handing a slot from a finished
task to the next row costs nothing. When a Prefect server has a global concurrency
limit (GCL) for the account, each local slot must also hold one GCL slot, so several
runs and workers share the account's quota. Prefect hands GCL slots over slowly
(seconds; see PrefectHQ/prefect#15618 and #23183), so a GCL slot that this run holds is
*kept* and passed straight to the next waiting row of this run instead of being
released and re-acquired; it goes back to the server only when no row here wants it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Optional

logger = logging.getLogger("kf2v_tasks.batch.slots")


class _Lease:
    """One held GCL slot: a background coroutine inside ``concurrency(...)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.acquired = asyncio.Event()
        self.release = asyncio.Event()
        self.error: Optional[BaseException] = None
        self.task = asyncio.create_task(self._hold())

    async def _hold(self) -> None:
        from prefect.concurrency.asyncio import concurrency

        try:
            async with concurrency(self.name, occupy=1, strict=True, lease_duration=300):
                self.acquired.set()
                await self.release.wait()
        except BaseException as exc:  # surfaced to the waiter, never swallowed
            self.error = exc
            self.acquired.set()


class HeldSlot:
    """One taken slot; :meth:`release` gives it back (once, however often it is called).

    Example:
        ```python
        given_back = []
        held = HeldSlot(lambda: given_back.append(1))
        held.release()
        held.release()
        assert given_back == [1]
        ```
    """

    def __init__(self, give_back: Callable[[], None]) -> None:
        self._give_back: Optional[Callable[[], None]] = give_back

    def release(self) -> None:
        """Give the slot back now; later calls do nothing."""
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()


class SlotPool:
    """At most ``size`` remote tasks in flight from this run (and, with ``gcl_name``, account-wide).

    Example:
        ```python
        import asyncio
        from kf2v_tasks.batch.slots import SlotPool

        async def main():
            pool = SlotPool(2)
            async with pool.slot():
                ...  # submit and poll one task

        asyncio.run(main())
        ```
    """

    def __init__(self, size: int, gcl_name: Optional[str] = None) -> None:
        if size < 1:
            raise ValueError("slot pool size must be ≥ 1")
        self.size = size
        self.gcl_name = gcl_name
        self._local = asyncio.Semaphore(size)
        self._idle: deque[_Lease] = deque()
        self._all: list[_Lease] = []
        self._waiting = 0
        self.in_use = 0
        self.peak = 0
        self.gcl_acquisitions = 0

    @classmethod
    async def create(cls, size: int, gcl_name: Optional[str] = None) -> SlotPool:
        """A pool that uses ``gcl_name`` only if that limit exists on the Prefect server.

        Example:
            ```python
            pool = await SlotPool.create(2, "kf2v-dashscope-tasks")
            ```
        """
        if gcl_name and not await gcl_exists(gcl_name):
            logger.info(
                "no global concurrency limit %r on the server; limiting in-process", gcl_name
            )
            gcl_name = None
        return cls(size, gcl_name)

    async def _take_lease(self) -> Optional[_Lease]:
        if not self.gcl_name:
            return None
        if self._idle:
            return self._idle.popleft()
        lease = _Lease(self.gcl_name)
        self._all.append(lease)
        await lease.acquired.wait()
        if lease.error is not None:
            raise lease.error
        self.gcl_acquisitions += 1
        return lease

    def _return_lease(self, lease: Optional[_Lease]) -> None:
        if lease is None:
            return
        # Keep it for the next local waiter; give it back only when nobody here waits.
        if self._waiting:
            self._idle.append(lease)
        else:
            lease.release.set()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[HeldSlot]:
        """Hold one in-flight slot for the body (submit until the remote task ends).

        The body may hand the slot back early with ``held.release()`` (the moment the
        remote task is seen ended, before the bookkeeping that follows).
        """
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
            self._local.release()

        held = HeldSlot(give_back)
        try:
            yield held
        finally:
            held.release()

    async def close(self) -> None:
        """Give every held global-limit slot back to the server, and wait until it has them.

        Example:
            ```python
            pool = await SlotPool.create(2, "kf2v-dashscope-tasks")
            try:
                async with pool.slot():
                    ...
            finally:
                await pool.close()
            ```
        """
        while self._idle:
            self._idle.popleft().release.set()
        for lease in self._all:
            lease.release.set()
            with contextlib.suppress(BaseException):
                await lease.task
        self._all.clear()


async def gcl_exists(name: str) -> bool:
    """Whether the Prefect API knows an active global concurrency limit called ``name``.

    Example:
        ```python
        import asyncio
        from kf2v_tasks.batch.slots import gcl_exists
        print(asyncio.run(gcl_exists("kf2v-dashscope-tasks")))
        ```
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        async with get_client() as client:
            limit = await client.read_global_concurrency_limit_by_name(name)
            return bool(limit.active)
    except ObjectNotFound:
        return False
    except Exception as exc:  # no server reachable: local limiting still protects the account
        logger.warning("could not read global concurrency limit %r: %s", name, exc)
        return False
