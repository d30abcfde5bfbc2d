"""Account quota, enforced in-process: creates per second, queries per second, tasks in flight.

DashScope limits a whole account (2 creates/s, 20 task queries/s, 2 concurrent tasks by
default). One :class:`AccountLimits` is shared by every caller that uses the account, so
together they stay under the quota instead of discovering it through 429s. Rate windows
are in service seconds (see :mod:`kf2v_tasks.clock`).

Prefect runs each task submitted with ``.submit()``/``.map()`` on its own thread and
event loop, so nothing here is tied to a loop: state sits behind a ``threading.Lock`` and
a waiter on another loop is woken with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional

from kf2v_tasks import clock


class RateLimiter:
    """At most ``rate`` acquisitions per service second, ``burst`` at once, on any loop or thread.

    A reservation scheme (GCRA): each caller is given the next free instant under a lock,
    then sleeps outside it, so callers are served in the order they asked.

    Example:
        ```python
        import asyncio
        from kf2v_tasks.dashscope.limits import RateLimiter

        async def main():
            limiter = RateLimiter(rate=2)
            for _ in range(4):
                await limiter.acquire()   # the 2nd, 3rd and 4th wait ~0.5 s each

        asyncio.run(main())
        ```
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = float(rate)
        # Burst of 1 by default: a fresh account sees evenly spaced calls, never a spike.
        self.burst = float(burst if burst is not None else 1.0)
        self._interval = 1.0 / self.rate
        self._tolerance = (self.burst - 1.0) * self._interval
        self._tat = clock.now() - self._tolerance  # theoretical arrival time of the next call
        self._lock = threading.Lock()
        #: Asked about each failed call on this limiter: True means "do not retry it here"
        #: (the caller has a better way, e.g. a create the service refused for concurrency).
        self.stop_retry: Optional[Callable[[BaseException], bool]] = None

    def set_rate(self, rate: float) -> None:
        """Change the rate from the next reservation on (e.g. this run's share of the account's).

        Example:
            ```python
            from kf2v_tasks.dashscope.limits import RateLimiter
            limiter = RateLimiter(2.0)
            limiter.set_rate(1.0)   # another run now shares the account
            assert limiter.rate == 1.0
            ```
        """
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        with self._lock:
            self.rate = float(rate)
            self._interval = 1.0 / self.rate
            self._tolerance = (self.burst - 1.0) * self._interval

    def reserve(self) -> float:
        """Take the next free instant; return the service seconds to wait for it."""
        with self._lock:
            now = clock.now()
            tat = max(self._tat, now)
            self._tat = tat + self._interval
            return max(0.0, tat - self._tolerance - now)

    async def acquire(self) -> None:
        """Wait until this caller's turn has come."""
        wait = self.reserve()
        if wait > 0:
            await clock.sleep(wait)

    def penalize(self, service_seconds: float) -> None:
        """After a 429, hold everyone back for ``service_seconds`` (e.g. ``Retry-After``)."""
        with self._lock:
            self._tat = max(self._tat, clock.now()) + max(0.0, service_seconds)


#: ``probe(task_ids)`` answers which of them have ended at the service.
Probe = Callable[[list[str]], Awaitable[Iterable[str]]]


class InFlight:
    """Remote tasks in flight for one account: at most ``limit``, each held by its task id.

    A slot is taken before a create and bound to the new task's id; whoever sees the task
    end releases it by id, from any thread or event loop (the poller usually, which may
    run in another Prefect task run than the submitter). A caller that waits long for a
    slot asks ``probe`` which held tasks have ended, so slots of tasks nobody polls are
    freed too.

    Example:
        ```python
        in_flight = InFlight(2)
        key = await in_flight.acquire()
        in_flight.bind(key, "task-1")     # after the create answered
        in_flight.release("task-1")       # when the task is seen ended
        ```
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("in-flight limit must be ≥ 1")
        self.limit = limit
        self._lock = threading.Lock()
        self._held: dict[str, bool] = {}  # key -> bound to a real task id
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[str]]] = deque()
        self.peak = 0

    @property
    def held(self) -> int:
        """Slots taken now."""
        with self._lock:
            return len(self._held)

    def task_ids(self) -> list[str]:
        """Task ids holding a slot now."""
        with self._lock:
            return [k for k, bound in self._held.items() if bound]

    def _take(self, key: str) -> None:
        self._held[key] = False
        self.peak = max(self.peak, len(self._held))

    async def acquire(self, *, probe: Optional[Probe] = None, probe_after: float = 30.0) -> str:
        """Wait for a slot; return its provisional key (bind it to the task id later).

        Args:
            probe: asked, after ``probe_after`` service seconds of waiting and then as often,
                which held tasks have ended; their slots are freed.
            probe_after: service seconds between probes.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            if len(self._held) < self.limit and not self._waiters:
                key = uuid.uuid4().hex
                self._take(key)
                return key
            fut: asyncio.Future[str] = loop.create_future()
            self._waiters.append((loop, fut))
        try:
            while True:
                done, _ = await asyncio.wait({fut}, timeout=clock.real_seconds(probe_after))
                if done:
                    return fut.result()
                if probe is not None:
                    ids = self.task_ids()
                    if ids:
                        for task_id in await probe(ids):
                            self.release(task_id)
        except BaseException:
            with self._lock:
                try:
                    self._waiters.remove((loop, fut))
                except ValueError:
                    pass
            # Cancelled before a slot came: a hand-off still on its way passes it on.
            # Already handed one: give it back.
            if not fut.cancel() and not fut.cancelled():
                self.release(fut.result())
            raise

    def bind(self, key: str, task_id: str) -> None:
        """The slot taken as ``key`` now belongs to ``task_id``.

        If ``task_id`` already holds a slot (the same task reused), the extra one is freed.
        """
        with self._lock:
            if key not in self._held:
                return
            if task_id in self._held:
                self._give_up(key)
                return
            del self._held[key]
            self._held[task_id] = True

    def release(self, key: str) -> None:
        """Free the slot held by ``key`` (a task id or a provisional key); idempotent."""
        with self._lock:
            if key in self._held:
                self._give_up(key)

    def _give_up(self, key: str) -> None:
        del self._held[key]
        while self._waiters:
            loop, fut = self._waiters.popleft()
            if fut.done():
                continue
            new_key = uuid.uuid4().hex
            self._take(new_key)  # handed over directly: no one can jump the queue

            def wake(f: asyncio.Future[str] = fut, k: str = new_key) -> None:
                if f.done():  # cancelled meanwhile: pass the slot on
                    self.release(k)
                else:
                    f.set_result(k)

            try:
                loop.call_soon_threadsafe(wake)
            except RuntimeError:  # that loop is closed: its waiter is gone
                self._held.pop(new_key, None)
                continue
            return


@dataclass
class AccountLimits:
    """The quota of one DashScope account, shared by everything in this process that uses it.

    Args:
        max_in_flight: remote tasks submitted and not yet finished (service default 2).
        submits_per_second: create calls per service second (service default 2).
        queries_per_second: task queries per service second (service default 20).

    Example:
        ```python
        from kf2v_tasks.dashscope.limits import AccountLimits
        limits = AccountLimits(max_in_flight=2, submits_per_second=2, queries_per_second=20)
        ```
    """

    max_in_flight: int = 2
    submits_per_second: float = 2.0
    queries_per_second: float = 20.0
    submit_limiter: RateLimiter = field(init=False, repr=False)
    query_limiter: RateLimiter = field(init=False, repr=False)
    in_flight: InFlight = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be ≥ 1")
        self.submit_limiter = RateLimiter(self.submits_per_second)
        self.query_limiter = RateLimiter(self.queries_per_second)
        self.in_flight = InFlight(self.max_in_flight)
