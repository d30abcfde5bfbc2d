"""One poller per client for every task it waits on: shared list sweeps, then one GET each.

Polling each task on its own costs one ``GET /tasks/{id}`` per task per interval, from
the account's shared 20 queries/s. When two or more waiting tasks are due at once the
watcher asks ``GET /tasks?status=RUNNING`` instead: one query answers for all of them.
A task that was running and is missing from that list has ended (or never showed up
there): only then is it fetched with ``GET /tasks/{id}``, which carries the result.
Tasks due alone are fetched directly, which costs the same single query and answers
at once. Due times of tasks in the tight phase are snapped to one shared grid, so
they fall due together.

A task PENDING while a complete sweep shows every running slot of its lane taken
(``AccountLimits.lane_full``: the service counts running tasks per model) cannot have
started: it is not fetched until a task of ours ends or its lane has a slot free
(look-ahead keeps such tasks queued on purpose;
polling them cost more queries than it answered). It is still fetched every few PENDING
intervals, as a task can end without ever running.

The list is a convenience, never a source of truth: a task is only ever declared ended
by its own ``GET``. A task that a ``GET`` shows RUNNING twice while the list left it
out is polled on its own from then on, and a list endpoint that refuses us (4xx)
switches sweeping off for the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Union

from kf2v_tasks import clock
from kf2v_tasks.background import spawn
from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.dashscope.schedule import PollSchedule
from kf2v_tasks.dashscope.task_state import TaskState
from kf2v_tasks.errors import Kf2vError, PermanentError, TransientError

if TYPE_CHECKING:
    from kf2v_tasks.dashscope.client import Kf2vClient

logger = logging.getLogger("kf2v_tasks.dashscope.watcher")


#: Tasks per page of the list sweep (the service's maximum) and pages read at most.
SWEEP_PAGE_SIZE = 100
SWEEP_MAX_PAGES = 10
#: A GET showed RUNNING this many times for a task the list left out: stop trusting the list for it.
LIST_MISSES_BEFORE_BLIND = 2
#: A task queued behind a full account is still fetched after this many PENDING intervals
#: (2 min by default): the list cannot show a task that ended without ever running. Such a
#: task costs only a place in the look-ahead queue while unseen, never a running slot.
QUEUED_REFETCH_INTERVALS = 8


@dataclass(eq=False)
class Watch:
    """What the watcher knows about one task one caller is waiting for."""

    task_id: str
    schedule: PollSchedule
    deadline: float
    queue_deadline: float
    started: float
    next_check: float
    not_running_at: float
    fetched_at: float
    running_since: Optional[float] = None
    status: Optional[TaskStatus] = None
    list_misses: int = 0
    list_blind: bool = False
    failed_queries: int = 0
    fetching: bool = False
    lane_full_at: Optional[float] = None  # when a sweep last showed its lane full
    inbox: asyncio.Queue[Union[TaskState, BaseException]] = field(default_factory=asyncio.Queue)

    @property
    def sweepable(self) -> bool:
        return self.schedule.sweep and not self.list_blind

    def mark_running(self) -> None:
        """The task is running; it may have started any time since last seen not running."""
        if self.running_since is None:
            self.running_since = self.not_running_at
        self.status = TaskStatus.RUNNING

    def plausibly_done(self, now: float) -> bool:
        """Running long enough that it may have ended (the tight phase of the schedule)."""
        return (
            self.running_since is not None
            and now - self.running_since >= self.schedule.expected_min_runtime
        )

    async def next_state(self) -> TaskState:
        """The next observation (a ``GET`` answer or a sweep's RUNNING); raises its error."""
        item = await self.inbox.get()
        if isinstance(item, BaseException):
            raise item
        return item


class TaskWatcher:
    """Polls every task a :class:`~kf2v_tasks.dashscope.client.Kf2vClient` waits on, in one loop.

    Use :func:`watcher_for` to get the client's watcher;
    :func:`~kf2v_tasks.dashscope.polling.wait_for_task` does, so callers rarely touch it.
    """

    def __init__(self, client: Kf2vClient) -> None:
        self._client = client
        self._loop = asyncio.get_running_loop()
        self._watches: dict[int, Watch] = {}
        self._wakeup = asyncio.Event()
        self._loop_task: Optional[asyncio.Task[None]] = None
        self._grid_origin = clock.now()
        self._sweeps_enabled = True
        self._fetches: set[asyncio.Task[None]] = set()
        self._on_end: dict[str, list[Callable[[TaskState], None]]] = {}
        self._sharing = 0  # tasks in their tight phase that one sweep answers for
        # When a task of ours was last seen ending: a PENDING task whose lane a sweep showed
        # full since cannot have started, so it is not fetched (see _still_queued).
        self._ended_at = -math.inf

    @contextlib.asynccontextmanager
    async def watch(
        self,
        task_id: str,
        schedule: PollSchedule,
        *,
        deadline: float,
        queue_deadline: float,
    ) -> AsyncIterator[Watch]:
        """Register ``task_id`` for the duration of the block; observations arrive in its inbox."""
        now = clock.now()
        first = now + min(schedule.first_poll, deadline)
        w = Watch(
            task_id=task_id,
            schedule=schedule,
            deadline=deadline,
            queue_deadline=queue_deadline,
            started=now,
            next_check=self._snap(schedule=schedule, now=now, when=first, limit=now + deadline),
            not_running_at=now,
            fetched_at=now,
        )
        self._watches[id(w)] = w
        self._ensure_loop()
        self._wakeup.set()
        try:
            yield w
        finally:
            self._watches.pop(id(w), None)

    def on_end(self, task_id: str, callback: Callable[[TaskState], None]) -> None:
        """Call ``callback(state)`` the moment a GET shows ``task_id`` ended.

        It runs in the watcher, before the waiter wakes: the batch frees the task's slot
        there, ahead of the ledger write and the Prefect task run's end.
        """
        self._on_end.setdefault(task_id, []).append(callback)

    def forget(self, task_id: str) -> None:
        """Drop the callbacks of ``task_id`` (its waiter is done)."""
        self._on_end.pop(task_id, None)

    # ------------------------------------------------------------------ the loop

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = spawn(self._run(), name="kf2v-task-watcher")

    async def _run(self) -> None:
        try:
            while self._watches:
                now = clock.now()
                wake = min(w.next_check for w in self._watches.values())
                if wake > now:
                    self._wakeup.clear()
                    timeout = None if math.isinf(wake) else clock.real_seconds(wake - now)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)
                    continue
                await self._check(now)
        except Exception as exc:  # never leave a waiter hanging on a dead loop
            logger.exception("task watcher stopped")
            for w in list(self._watches.values()):
                w.inbox.put_nowait(exc)

    async def _check(self, now: float) -> None:
        watches = list(self._watches.values())
        self._sharing = sum(w.sweepable and w.plausibly_done(now) for w in watches)
        due = [w for w in watches if w.next_check <= now]
        running: Optional[set[str]] = None
        if self._sweeps_enabled and sum(w.sweepable for w in due) >= 2:
            running = await self._running_task_ids()
        seen = clock.now()
        limits = self._client.limits
        fetch: list[Watch] = []
        for w in watches:
            if w.fetching:
                continue
            # What this round's sweep showed of w's lane (None: no sweep this round). Each
            # model is its own lane: a task waits only behind its own model's tasks.
            full: Optional[bool] = None
            if running is not None and w.sweepable:
                if w.task_id in running:
                    w.mark_running()
                    w.inbox.put_nowait(TaskState(task_id=w.task_id, status=TaskStatus.RUNNING))
                    self._schedule(w, seen)
                    continue
                if w.status is TaskStatus.RUNNING:
                    self._ended_at = seen
                    fetch.append(w)  # was running, now missing: ended (or the list lags)
                    continue
                full = limits is not None and limits.lane_full(w.task_id, running)
                w.lane_full_at = seen if full else None
                if full:
                    w.not_running_at = seen
            if w.next_check > now:
                continue
            if self._still_queued(w, seen, full):
                # Queued behind its full lane: it has not started, so no GET. The waiter
                # still hears PENDING, to keep its queue deadline.
                w.inbox.put_nowait(TaskState(task_id=w.task_id, status=TaskStatus.PENDING))
                self._schedule(w, seen)
                continue
            fetch.append(w)
        for w in fetch:
            # In the background: the next sweep must not wait for these answers.
            w.fetching = True
            w.next_check = math.inf
            task = spawn(self._fetch(w, listed=running is not None), name=f"kf2v-fetch-{w.task_id}")
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)

    async def _fetch(self, w: Watch, *, listed: bool) -> None:
        try:
            state = await self._client.get_task(w.task_id)
        except TransientError as exc:
            # The client spent its retries on this query. The task itself is unharmed: ask
            # again on the schedule, until the waiter's own deadline (which stays exact).
            now = clock.now()
            if now - w.started >= w.deadline:
                w.inbox.put_nowait(exc)
            else:
                w.failed_queries += 1
                logger.info(
                    "query of task %s failed for now (%s); asking again later", w.task_id, exc
                )
                self._schedule(w, now)
            return
        except Exception as exc:  # the waiter raises it and unregisters
            w.inbox.put_nowait(exc)
            return
        finally:
            w.fetching = False
            self._wakeup.set()  # its next check may come before the loop's planned wake
        now = w.fetched_at = clock.now()
        if state.status is TaskStatus.PENDING:
            w.not_running_at = now
            w.status = TaskStatus.PENDING
        elif state.status is TaskStatus.RUNNING:
            if listed and w.sweepable:
                w.list_misses += 1
                if w.list_misses >= LIST_MISSES_BEFORE_BLIND:
                    w.list_blind = True
                    logger.info(
                        "task %s is missing from the RUNNING list; polling it alone", w.task_id
                    )
            w.mark_running()
        else:
            w.status = state.status
        if state.status.is_terminal:
            w.next_check = math.inf
            self._ended_at = now
            for callback in self._on_end.pop(w.task_id, []):
                try:
                    callback(state)
                except Exception:  # a hook must not cost the waiter its answer
                    logger.exception("on_end callback for task %s failed", w.task_id)
        else:
            self._schedule(w, now)
        w.inbox.put_nowait(state)

    async def _running_task_ids(self) -> Optional[set[str]]:
        """Every task the account has RUNNING, or ``None`` when the list is unavailable."""
        ids: set[str] = set()
        try:
            for page_no in range(1, SWEEP_MAX_PAGES + 1):
                page = await self._client.list_tasks(
                    status=TaskStatus.RUNNING, page_no=page_no, page_size=SWEEP_PAGE_SIZE
                )
                rows = page.get("data") or []
                ids.update(str(r.get("task_id")) for r in rows if isinstance(r, dict))
                if len(rows) < SWEEP_PAGE_SIZE or page_no * SWEEP_PAGE_SIZE >= int(
                    page.get("total") or 0
                ):
                    return ids
        except PermanentError as exc:
            self._sweeps_enabled = False
            logger.warning("listing tasks failed (%s); polling each task on its own", exc)
            return None
        except Kf2vError as exc:
            logger.info("listing tasks failed for now (%s); polling due tasks on their own", exc)
            return None
        return None  # more running tasks than we page through: do not trust an incomplete list

    def _still_queued(self, w: Watch, now: float, full: Optional[bool]) -> bool:
        """Whether PENDING ``w`` certainly waits behind the account's running tasks.

        ``full``: what this round's sweep showed, or ``None`` without one; then the last
        sweep's answer holds while no task of ours has ended since and it is recent.
        """
        if w.status not in (None, TaskStatus.PENDING) or not w.sweepable:
            return False
        if now - w.started >= w.queue_deadline:
            return False  # its deadline is decided on a real answer
        if now - w.fetched_at >= QUEUED_REFETCH_INTERVALS * w.schedule.pending_interval:
            return False
        if full is not None:
            return full
        return (
            w.lane_full_at is not None
            and self._ended_at < w.lane_full_at
            and now - w.lane_full_at <= w.schedule.pending_interval
        )

    # ------------------------------------------------------------------ scheduling

    def _schedule(self, w: Watch, now: float) -> None:
        status = w.status or TaskStatus.PENDING
        running_for = None if w.running_since is None else now - w.running_since
        wait = w.schedule.next_interval(status, running_for)
        if w.sweepable and w.plausibly_done(now):
            wait = min(wait, self._step(w.schedule))
        # Wake at the deadlines rather than sleeping through them.
        limit = w.started + (w.deadline if status is not TaskStatus.PENDING else w.queue_deadline)
        w.next_check = self._snap(schedule=w.schedule, now=now, when=now + wait, limit=limit)

    def _step(self, schedule: PollSchedule) -> float:
        """Sweep interval: one sweep answers for every task in the tight phase, so with
        more of them it can come more often (lower detection lag) and still cost each
        task fewer queries than polling it alone every ``min_interval``."""
        share = min(1.0, 2.0 / self._sharing) if self._sharing else 1.0
        return max(schedule.sweep_min_interval, schedule.min_interval * share)

    def _snap(self, *, schedule: PollSchedule, now: float, when: float, limit: float) -> float:
        """Round ``when`` to the nearest tick of the shared grid, so due tasks coincide."""
        if schedule.sweep:
            step = self._step(schedule)
            k = math.floor((when - self._grid_origin) / step + 0.5)
            snapped = self._grid_origin + k * step
            when = snapped if snapped > now else snapped + step
        if limit <= now:
            limit = now + 1e-3
        return min(when, limit + 1e-3)


_watchers: weakref.WeakKeyDictionary[Kf2vClient, TaskWatcher] = weakref.WeakKeyDictionary()


def watcher_for(client: Kf2vClient) -> TaskWatcher:
    """The client's watcher on the running event loop (one per client and loop)."""
    loop = asyncio.get_running_loop()
    w = _watchers.get(client)
    if w is None or w._loop is not loop:
        w = _watchers[client] = TaskWatcher(client)
    return w
