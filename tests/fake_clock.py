"""A fake clock for unit tests that wait: virtual time that jumps to the next timer.

``@on_virtual_time`` runs an ``async def`` test on its own event loop whose clock moves a
microsecond per pass of the loop and, when every task waits on a timer, jumps straight to
the earliest one. ``kf2v_tasks.clock`` reads that time, so service seconds, poll intervals,
deadlines and ``asyncio.sleep``/``wait_for`` all pass at once and in the same order as in
real time. Only for code that waits on timers and in-process work (``httpx.MockTransport``):
a wait on real I/O or another thread blocks for real, as it would on a real loop.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from kf2v_tasks import clock


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` jumps ahead whenever everything waits on a timer."""

    def __init__(self) -> None:
        super().__init__(selectors.DefaultSelector())
        self._virtual_now = 0.0
        real_select = self._selector.select

        def select(timeout: float | None = None):
            # Each pass of the loop costs a microsecond, as on a real clock: a timer a
            # rounding error away (a deadline converted between time scales) still comes.
            self._virtual_now += 1e-6
            events = real_select(0)
            if events or timeout == 0:
                return events
            if timeout is None:  # no timer: only I/O or another thread can wake us
                return real_select(None)
            self._virtual_now += timeout  # nothing to do until the next timer: go there
            return []

        self._selector.select = select  # type: ignore[method-assign]

    def time(self) -> float:
        return self._virtual_now


def run_on_virtual_time(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to the end on a fresh :class:`VirtualTimeLoop`, the clock reading it."""
    loop = VirtualTimeLoop()
    saved = clock.monotonic
    clock.monotonic = loop.time
    try:
        return loop.run_until_complete(coro)
    finally:
        clock.monotonic = saved
        try:  # as asyncio.run does: end what the test left running (a watcher's loop)
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(_settle(left))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


async def _settle(tasks: set[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


def on_virtual_time(test: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """Decorate an ``async def`` test to run it on virtual time (a plain test for pytest)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Any:
        return run_on_virtual_time(test(*args, **kwargs))

    return run


class LeaseTime:
    """A fake clock for claims and their leases, moved only by :meth:`advance`.

    It stands in for the lease's wall and monotonic clocks
    (:mod:`kf2v_tasks.generation.claim_lease`), for ``kf2v_tasks.clock`` and for its
    ``sleep``, which advances it. Renewals fall due as in real time: :meth:`advance` runs
    the renewer's step at each due time it passes, in order (the renewer thread may do one
    first; a claim is never renewed twice for one due time).
    """

    def __init__(self) -> None:
        self.t = 0.0  # real seconds since the fake clock started
        self._base = datetime.now(UTC)

    def wall(self) -> datetime:
        return self._base + timedelta(seconds=self.t)

    def monotonic(self) -> float:
        return self.t

    def install(self, monkeypatch) -> LeaseTime:
        from kf2v_tasks.generation import claim_lease

        async def sleep(service_seconds: float) -> None:
            self.advance(clock.real_seconds(service_seconds))
            await asyncio.sleep(0)  # let other tasks run, as a real sleep would

        monkeypatch.setattr(claim_lease, "wall_clock", self.wall)
        monkeypatch.setattr(claim_lease, "monotonic", self.monotonic)
        monkeypatch.setattr(clock, "monotonic", self.monotonic)
        monkeypatch.setattr(clock, "sleep", sleep)
        return self

    def advance(self, seconds: float) -> None:
        """Move ``seconds`` (real) ahead, renewing held claims at each due time on the way."""
        from kf2v_tasks.generation import claim_lease

        target = self.t + seconds
        for _ in range(100_000):
            due = claim_lease.renew_due()
            if due > target:
                break
            self.t = max(self.t, due)
        else:
            raise RuntimeError("claims kept falling due without time passing")
        self.t = target


def manual_sim_clock(sim: Any) -> Any:
    """Stop an in-process simulator's clock: it moves only by ``advance(real_seconds)``.

    Every task's timeline, its expiry and the rate limits read that clock; set it before
    the first request, so every account and bucket starts at its zero.
    """
    from kf2v_tasks.simulator.state import SimClock

    class ManualSimClock(SimClock):
        def __init__(self, speed: float) -> None:
            super().__init__(speed)
            self._now = 0.0

        def now(self) -> float:
            return self._now

        def advance(self, seconds: float) -> None:
            self._now += seconds

    sim.state.clock = ManualSimClock(sim.state.config.speed)
    return sim.state.clock
