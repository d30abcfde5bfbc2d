"""Creates and queries per second, shared by every run and shard of an account.

The account's per-second quotas (2 creates/s, 20 task queries/s by default) hold for the
whole account, so overlapping runs and the shards of one batch must share them. Each run
spaces its own calls with its local limiters (:class:`~kf2v_tasks.dashscope.limits.
RateLimiter`); a :class:`RateShare` sets those limiters to the account's rates divided by
the number of runs using the account *now*, which it reads from the Prefect server:
every run holds one slot (a lease, renewed while it works) of a counting limit next to
the account's in-flight limit, and reads how many are held every :data:`REFRESH_SECONDS`.

Why not a token per call from a rate-mode global limit: measured on a SQLite Prefect
server busy with a per-step batch's task runs, each ask took ~2 s, so B1 at concurrency
32 fell from 17 s to 49 s of wall time for 96 rows, and tokens fetched in blocks arrived
as bursts the service throttled (113 of 209 creates answered 429). A share costs one read
every few seconds, off the path of every call. When a run joins while others are working,
it waits one refresh before its first call so that they have slowed down for it; a run
that leaves is given back within one refresh. A killed run's slot is freed by the next
run on its machine (:class:`~kf2v_tasks.lanes.gcl.LeaseBook`) or when its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Optional

from kf2v_tasks.background import spawn
from kf2v_tasks.dashscope.limits import RateLimiter
from kf2v_tasks.lanes.gcl import LeaseBook, acquire_slot, ensure_limit, keep_lease

logger = logging.getLogger("kf2v_tasks.lanes.rates")

#: Real seconds between two reads of how many runs share the account.
REFRESH_SECONDS = 2.0
#: Size of the counting limit: runs at once on one account, far more than anyone runs.
MAX_RUNS = 10_000


def runs_limit_name(global_limit: str) -> str:
    """The counting limit that goes with the in-flight limit ``global_limit``."""
    return f"{global_limit}-runs"


class RateShare:
    """This run's share of the account's rates: each rate divided by the runs using it now.

    ``global_limit``: the account's in-flight limit, after which the counting limit is named;
    ``limiters``: each local limiter with the account's whole rate for it.
    """

    def __init__(self, global_limit: str, limiters: dict[RateLimiter, float]) -> None:
        self.name = runs_limit_name(global_limit)
        self.limiters = dict(limiters)
        self.runs = 1
        self.reads = 0
        self._book = LeaseBook()
        self._lease_id: Any = None
        self._stack: Optional[contextlib.AsyncExitStack] = None
        self._client: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._left = asyncio.Event()

    @classmethod
    async def join(
        cls, global_limit: str, limiters: dict[RateLimiter, float]
    ) -> Optional[RateShare]:
        """Count this run in, set the limiters to its share; ``None`` if the server cannot.

        Waits one refresh before returning when other runs are at work, so that they
        have slowed down to make room for this one.
        """
        share = cls(global_limit, limiters)
        try:
            others = await share._start()
        except Exception as exc:  # the in-flight limit still holds; say what does not
            await share.leave()
            logger.warning(
                "could not count this run on the server (%s): the creates and queries per "
                "second are this run's alone, not shared with overlapping runs",
                exc,
            )
            return None
        if others:
            logger.info(
                "%d other run(s) use this account: this run keeps to 1/%d of its rates",
                others,
                share.runs,
            )
            # Real seconds: one of the others' refresh periods, and half again for their
            # read to land (with exactly one period, a run whose read was slow kept its
            # whole rate a moment too long: one 429 seen across two shards in CI).
            await asyncio.sleep(REFRESH_SECONDS * 1.5)
        return share

    async def _start(self) -> int:
        from prefect.client.orchestration import get_client

        await ensure_limit(self.name, MAX_RUNS)
        stack = contextlib.AsyncExitStack()
        self._client = await stack.enter_async_context(get_client())
        self._stack = stack
        self._lease_id, _ = await acquire_slot(self._client, self.name)
        self._book.add(self._lease_id)
        await self._refresh()
        self._tasks = [
            spawn(keep_lease(self._client, self._lease_id, self._left), name="kf2v-rate-lease"),
            spawn(self._follow(), name="kf2v-rate-share"),
        ]
        return self.runs - 1

    async def _refresh(self) -> None:
        limit = await self._client.read_global_concurrency_limit_by_name(self.name)
        self.reads += 1
        runs = max(1, int(limit.active_slots))
        if runs != self.runs:
            logger.info("%d run(s) share this account's rates now", runs)
        self.runs = runs
        for limiter, rate in self.limiters.items():
            limiter.set_rate(rate / runs)

    async def _follow(self) -> None:
        """Follow the count of runs until this run leaves."""
        while True:
            await asyncio.sleep(REFRESH_SECONDS)  # real seconds: the server's clock
            try:
                await self._refresh()
            except Exception as exc:  # keep the last share; the next read may succeed
                logger.warning("could not read how many runs share the account: %s", exc)

    async def leave(self) -> None:
        """Stop counting this run (its share goes back to the others within one refresh)."""
        self._left.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self._lease_id is not None and self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.release_concurrency_slots_with_lease(self._lease_id)
            self._book.remove(self._lease_id)
            self._lease_id = None
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()
