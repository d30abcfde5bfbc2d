"""A lane: one account's running slots for one model, shared by everything in this process.

The service counts tasks per (main account, model) (reference §16). A :class:`Lane` is
that quota as a pool of slots (running plus look-ahead), one per process for each account
and model, shared by every batch row and every public task; across processes it holds
slots of the lane's Prefect global concurrency limit (or, with no server, lock files on
this machine), so every run, worker and pipeline together keep within it. The pools live
on the lanes' own loop (:mod:`~kf2v_tasks.lanes.engine`); callers on any loop hop there.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Optional

from kf2v_tasks import clock
from kf2v_tasks.dashscope.limits import LaneQuota
from kf2v_tasks.lanes import engine
from kf2v_tasks.lanes.names import DEFAULT_QUEUE_AHEAD, lane_limit_name
from kf2v_tasks.lanes.slots import HeldSlot, SlotPool

#: Real seconds a run waits for a lane's first slots before its rows start.
WARM_SECONDS = 3.0

#: Service seconds a public task waits for a slot before asking which held tasks ended.
PROBE_AFTER = 30.0

#: ``probe(task_ids)``: which of them the service reports ended.
Probe = Callable[[list[str]], Awaitable[Iterable[str]]]


class LaneSlot:
    """One slot of a lane, taken on any loop; :meth:`release` gives it back once, from anywhere."""

    def __init__(self, lane: Lane, held: HeldSlot) -> None:
        self.lane = lane
        self._held: Optional[HeldSlot] = held
        self.task_id: Optional[str] = None

    def release(self) -> None:
        """Give the slot back (later calls do nothing)."""
        held, self._held = self._held, None
        if held is None:
            return
        if self.task_id is not None:
            with _lock:
                if _bound.get(self.task_id) is self:
                    del _bound[self.task_id]
        engine.call(held.release)

    def bind(self, task_id: str) -> None:
        """The slot now belongs to the remote task ``task_id``: :func:`release_task` frees it."""
        self.task_id = task_id
        with _lock:
            other = _bound.get(task_id)
            _bound[task_id] = self
        if other is not None and other is not self:
            other.release()  # the same task reused: one slot is enough


#: Slots bound to remote tasks, by task id: whoever sees the task end frees it.
_bound: dict[str, LaneSlot] = {}
_lock = threading.Lock()


def release_task(task_id: str) -> None:
    """Free the slot held by the remote task ``task_id`` (idempotent, any thread)."""
    with _lock:
        slot = _bound.pop(task_id, None)
    if slot is not None:
        slot.release()


class Lane:
    """One account's slots for one model: ``running`` tasks plus ``queue_ahead`` queued."""

    def __init__(
        self, account: str, model: str, quota: LaneQuota, queue_ahead: int, pool: SlotPool
    ) -> None:
        self.account = account
        self.model = model
        self.quota = quota
        self.running = quota.running
        self.queue_ahead = queue_ahead
        self.pool = pool

    @property
    def size(self) -> int:
        """Tasks this lane keeps at the service: running plus look-ahead."""
        return self.running + self.queue_ahead

    @property
    def limit_name(self) -> Optional[str]:
        """The Prefect global concurrency limit it shares (``None``: none in use)."""
        return self.pool.gcl_name

    @property
    def in_use(self) -> int:
        """Slots held in this process now."""
        return self.pool.in_use

    async def take(self, probe: Optional[Probe] = None) -> LaneSlot:
        """Wait for a slot, from any loop.

        ``probe``: asked every :data:`PROBE_AFTER` service seconds of waiting which tasks
        holding slots have ended, so slots of tasks nobody polls are freed too.
        """
        if engine.on_engine():
            return LaneSlot(self, await self.pool.take())
        future = engine.start(self.pool.take())
        waiter = asyncio.wrap_future(future)
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=clock.real_seconds(PROBE_AFTER))
                if done:
                    return LaneSlot(self, waiter.result())
                if probe is not None:
                    with _lock:
                        ids = [t for t, s in _bound.items() if s.lane is self]
                    if ids:
                        for task_id in await probe(ids):
                            release_task(task_id)
        except BaseException:
            waiter.cancel()

            def undo(f) -> None:  # taken for a caller that is gone: give it back
                if not f.cancelled() and f.exception() is None:
                    engine.call(f.result().release)

            future.add_done_callback(undo)
            raise

    def shrink(self, running: int) -> None:
        """No look-ahead from now on (the service refused tasks beyond the running ones)."""
        self.queue_ahead = 0
        engine.call(self.pool.shrink, running)

    async def warm(self, rows: int, timeout: float = WARM_SECONDS) -> None:
        """Take the slots ``rows`` rows will want before they start (see SlotPool.warm).

        Waits at most ``timeout`` real seconds: a lane another process fills is no reason
        to hold back the run (its ask goes on, and its rows wait for it as usual).
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(engine.run(self.pool.warm(rows)), timeout)

    async def settle(self) -> None:
        """Wait until the global-limit slots nobody here holds are back on the server."""
        await engine.run(self.pool.settle())


_lanes: dict[tuple, asyncio.Future] = {}


async def open_lane(
    account: str,
    model: str,
    quota: LaneQuota,
    *,
    queue_ahead: int = DEFAULT_QUEUE_AHEAD,
    limit_prefix: Optional[str] = "kf2v",
) -> Lane:
    """This process's lane of ``model`` on ``account`` (opened on first use).

    With ``limit_prefix`` the lane shares the global concurrency limit
    ``<prefix>-<account>-<model>`` on the Prefect server (created with ``running +
    queue_ahead`` slots when missing), or lock files on this machine when no server is
    configured; ``None`` limits it in this process only.
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    name = lane_limit_name(limit_prefix, account, model) if limit_prefix else None
    key = (
        str(settings.api.url or ""),
        str(settings.home),
        name or f"local:{account}:{model}",
        quota,
        queue_ahead,
    )

    async def opened() -> Lane:  # on the lanes' loop: one opening per key
        future = _lanes.get(key)
        if future is None:
            future = _lanes[key] = asyncio.get_running_loop().create_future()
            try:
                size = quota.running + queue_ahead
                pool = await SlotPool.create(size, name)
                future.set_result(Lane(account, model, quota, queue_ahead, pool))
            except BaseException as exc:
                del _lanes[key]
                future.set_exception(exc)
                raise
        return await asyncio.shield(future)

    return await engine.run(opened())


async def _close_all() -> None:
    for future in list(_lanes.values()):
        if future.done() and not future.exception():
            await future.result().pool.close()


engine.at_exit(_close_all)
