"""The shared task watcher: one list sweep answers for every running task, a GET per end.

A scripted service (httpx.MockTransport) ends each task at a known service time; each
test runs on virtual time (tests/fake_clock.py), so a 900-second task ends at once and
in order, with no scheduling jitter.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kf2v_tasks import clock  # noqa: E402
from kf2v_tasks.dashscope.client import Kf2vClient  # noqa: E402
from kf2v_tasks.dashscope.models import TaskStatus  # noqa: E402
from kf2v_tasks.dashscope.polling import PollSchedule, wait_for_task  # noqa: E402
from kf2v_tasks.errors import InvalidRequestError  # noqa: E402
from kf2v_tasks.retry import RetryPolicy  # noqa: E402

from conftest import TEST_API_KEY  # noqa: E402
from fake_clock import on_virtual_time  # noqa: E402

BASE = "https://dashscope.test/api/v1"
SCALE = 50.0
SCHEDULE = PollSchedule(first_poll=10, expected_min_runtime=60, min_interval=4)


class Service:
    """Tasks that start at once and end ``runtime`` service seconds after ``begin()``."""

    def __init__(self, runtimes: dict[str, float], *, list_status: int = 200) -> None:
        self.runtimes = runtimes
        self.t0 = clock.now()
        self.list_status = list_status
        self.hidden: set[str] = set()  # running tasks the list leaves out
        self.broken: set[str] = set()  # tasks whose GET answers 400
        self.gets: Counter[str] = Counter()
        self.lists = 0
        self.ended_seen: dict[str, float] = {}

    def end_of(self, task_id: str) -> float:
        return self.runtimes[task_id]

    def status(self, task_id: str) -> str:
        return "SUCCEEDED" if clock.now() - self.t0 >= self.end_of(task_id) else "RUNNING"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/tasks"):
            self.lists += 1
            if self.list_status != 200:
                return httpx.Response(
                    self.list_status, json={"code": "AccessDenied", "message": "no list for you"}
                )
            assert request.url.params["status"] == "RUNNING"
            rows = [
                {"task_id": t, "status": "RUNNING"}
                for t in self.runtimes
                if self.status(t) == "RUNNING" and t not in self.hidden
            ]
            return httpx.Response(200, json={"total": len(rows), "data": rows, "page_no": 1})
        task_id = re.fullmatch(r".*/tasks/([^/]+)", path).group(1)
        self.gets[task_id] += 1
        if task_id in self.broken:
            return httpx.Response(400, json={"code": "InvalidParameter", "message": "bad id"})
        status = self.status(task_id)
        out = {"task_id": task_id, "task_status": status}
        if status == "SUCCEEDED":
            out["video_url"] = f"https://oss.test/{task_id}.mp4"
            self.ended_seen.setdefault(task_id, clock.now() - self.t0 - self.end_of(task_id))
        return httpx.Response(200, json={"request_id": "r", "output": out})


@pytest.fixture(autouse=True)
def fast_clock():
    clock.set_time_scale(SCALE)
    yield
    clock.set_time_scale(None)


def client_for(service: Service) -> Kf2vClient:
    return Kf2vClient(
        TEST_API_KEY,
        base_url=BASE,
        transport=httpx.MockTransport(service),
        retry=RetryPolicy(base_delay=1.0, jitter=0.0, max_attempts=1),
    )


async def wait_all(service: Service, schedule: PollSchedule = SCHEDULE):
    async with client_for(service) as client:
        return await asyncio.gather(
            *(wait_for_task(client, t, schedule=schedule) for t in service.runtimes),
            return_exceptions=True,
        )


RUNTIMES = {f"t{i}": 70.0 + 8 * i for i in range(6)}


@on_virtual_time
async def test_one_list_answers_for_all_running_tasks() -> None:
    swept = Service(dict(RUNTIMES))
    states = await wait_all(swept)
    assert [s.status for s in states] == [TaskStatus.SUCCEEDED] * 6
    assert all(s.video_url for s in states)

    alone = Service(dict(RUNTIMES))
    await wait_all(alone, SCHEDULE.model_copy(update={"sweep": False}))
    assert alone.lists == 0

    alone_total = sum(alone.gets.values())
    # Each task still needs its own final GET; the waiting in between is shared: sweeps
    # come more often with more tasks due, but at most half as often as per-task GETs.
    assert swept.lists > 0
    assert max(swept.gets.values()) <= 3, swept.gets
    assert swept.lists * 2 <= alone_total, (swept.lists, alone_total)
    assert swept.lists + sum(swept.gets.values()) < 0.6 * alone_total
    # Found within about one interval of ending (plus scheduling slack).
    assert max(swept.ended_seen.values()) <= 3 * SCHEDULE.min_interval, swept.ended_seen


@on_virtual_time
async def test_a_refused_list_switches_sweeping_off() -> None:
    service = Service(dict(RUNTIMES), list_status=403)
    states = await wait_all(service)
    assert [s.status for s in states] == [TaskStatus.SUCCEEDED] * 6
    assert service.lists == 1  # asked once, then each task was polled on its own


@on_virtual_time
async def test_a_task_the_list_leaves_out_is_polled_on_its_own() -> None:
    service = Service(dict(RUNTIMES))
    service.hidden.add("t5")
    states = await wait_all(service)
    assert [s.status for s in states] == [TaskStatus.SUCCEEDED] * 6
    # t5 was never listed: after two GETs showing RUNNING it is polled on its own
    # schedule, so it costs what polling it alone costs, not that plus a GET per sweep.
    alone = Service({"t5": RUNTIMES["t5"]})
    await wait_all(alone, SCHEDULE.model_copy(update={"sweep": False}))
    assert service.gets["t5"] <= alone.gets["t5"] + 2, (service.gets, alone.gets)
    assert service.ended_seen["t5"] <= 3 * SCHEDULE.min_interval


@on_virtual_time
async def test_an_error_for_one_task_leaves_the_others_waiting() -> None:
    service = Service(dict(RUNTIMES))
    service.broken.add("t2")
    states = await wait_all(service)
    assert isinstance(states[2], InvalidRequestError)
    others = [s for i, s in enumerate(states) if i != 2]
    assert [s.status for s in others] == [TaskStatus.SUCCEEDED] * 5


@on_virtual_time
async def test_a_single_task_is_polled_with_gets_only() -> None:
    service = Service({"solo": 75.0})
    (state,) = await wait_all(service)
    assert state.status is TaskStatus.SUCCEEDED
    assert service.lists == 0  # a list would cost as much as the GET and answer less


@on_virtual_time
async def test_on_end_runs_when_the_end_is_seen_before_the_waiter_wakes() -> None:
    from kf2v_tasks.dashscope.watcher import watcher_for

    service = Service({"a": 70.0, "b": 78.0})
    seen: list[tuple[str, TaskStatus]] = []
    async with client_for(service) as client:
        watcher = watcher_for(client)
        watcher.on_end("a", lambda s: seen.append((s.task_id, s.status)))
        watcher.on_end("b", lambda s: seen.append((s.task_id, s.status)))
        watcher.forget("b")  # its waiter gave up: no call
        await asyncio.gather(*(wait_for_task(client, t, schedule=SCHEDULE) for t in "ab"))
    assert seen == [("a", TaskStatus.SUCCEEDED)]


class Flaky(Service):
    """Like Service, but the first ``failures`` GETs of each task answer 503."""

    def __init__(self, runtimes: dict[str, float], failures: int) -> None:
        super().__init__(runtimes)
        self.failures = failures

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/tasks"):
            task_id = request.url.path.rsplit("/", 1)[-1]
            if self.gets[task_id] < self.failures:
                self.gets[task_id] += 1
                return httpx.Response(503, json={"code": "ServiceUnavailable", "message": "busy"})
        return super().__call__(request)


@on_virtual_time
async def test_failed_queries_are_asked_again_on_schedule_not_fatal() -> None:
    # The client may try each query once; three failed queries in a row cost no answer.
    service = Flaky({"t0": 70.0}, failures=3)
    (state,) = await wait_all(service, SCHEDULE.model_copy(update={"sweep": False}))
    assert not isinstance(state, BaseException), state
    assert state.status is TaskStatus.SUCCEEDED
    assert service.gets["t0"] >= 4


@on_virtual_time
async def test_queries_failing_past_the_deadline_raise_the_last_error() -> None:
    from kf2v_tasks.errors import ServerError

    service = Flaky({"t0": 70.0}, failures=10_000)
    async with client_for(service) as client:
        with pytest.raises(ServerError):
            await wait_for_task(
                client, "t0", schedule=SCHEDULE.model_copy(update={"sweep": False}), deadline=40
            )


class QueueingService(Service):
    """Two running slots; tasks beyond them wait PENDING and start in order as slots free."""

    def __init__(self, runtimes: dict[str, float], slots: int = 2) -> None:
        super().__init__(runtimes)
        free = [0.0] * slots
        self.start: dict[str, float] = {}
        for task_id, runtime in runtimes.items():
            slot = min(range(slots), key=free.__getitem__)
            self.start[task_id] = free[slot]
            free[slot] += runtime
        self.pending_gets: Counter[str] = Counter()

    def end_of(self, task_id: str) -> float:
        return self.start[task_id] + self.runtimes[task_id]

    def status(self, task_id: str) -> str:
        t = clock.now() - self.t0
        if t < self.start[task_id]:
            return "PENDING"
        return "SUCCEEDED" if t >= self.start[task_id] + self.runtimes[task_id] else "RUNNING"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        task_id = re.fullmatch(r".*/tasks/([^/]+)", request.url.path)
        if task_id and self.status(task_id.group(1)) == "PENDING":
            self.pending_gets[task_id.group(1)] += 1
        return super().__call__(request)


def _limited_client(service: Service, limits) -> Kf2vClient:
    if limits is not None:  # these tasks were created elsewhere: say which lane they are in
        for task_id in getattr(service, "runtimes", None) or ("t0", "t1", "t2", "t3"):
            limits.note_task(task_id, "wan2.2-kf2v-flash")
    return Kf2vClient(
        TEST_API_KEY,
        base_url=BASE,
        transport=httpx.MockTransport(service),
        retry=RetryPolicy(base_delay=1.0, jitter=0.0, max_attempts=1),
        limits=limits,
    )


async def _wait_queued(service: QueueingService, limits) -> list:
    client = _limited_client(service, limits)
    async with client:
        return await asyncio.gather(
            *(wait_for_task(client, t, schedule=SCHEDULE) for t in service.runtimes)
        )


class CancelledInQueue(QueueingService):
    """t2 is cancelled while it waits behind two long-running tasks."""

    cancel_at = 30.0

    def status(self, task_id: str) -> str:
        if task_id == "t2" and clock.now() - self.t0 >= self.cancel_at:
            return "CANCELED"
        return super().status(task_id)


@on_virtual_time
async def test_a_queued_task_that_ends_without_running_is_still_found() -> None:
    from kf2v_tasks.dashscope.limits import AccountLimits

    service = CancelledInQueue({"t0": 900.0, "t1": 900.0, "t2": 60.0})
    limits = AccountLimits(max_in_flight=2, submits_per_second=100, queries_per_second=1000)
    async with _limited_client(service, limits) as client:
        waits = [
            asyncio.ensure_future(wait_for_task(client, t, schedule=SCHEDULE, deadline=2000))
            for t in ("t0", "t1")
        ]
        state = await wait_for_task(
            client, "t2", schedule=SCHEDULE, raise_on_failure=False, queue_deadline=2000
        )
        found = clock.now() - service.t0
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    assert state.status is TaskStatus.CANCELED
    # Not asked while the account was full, yet found within the refetch period (8 PENDING
    # intervals of 15 s), long before the running tasks end at 900 s.
    assert found <= service.cancel_at + 9 * SCHEDULE.pending_interval, found
    assert service.pending_gets["t2"] <= 2, service.pending_gets


@on_virtual_time
async def test_a_task_queued_behind_a_full_account_is_not_fetched_while_it_waits() -> None:
    from kf2v_tasks.dashscope.limits import AccountLimits

    runtimes = {"t0": 80.0, "t1": 90.0, "t2": 80.0, "t3": 90.0}  # t2, t3 wait ~80 s
    limits = AccountLimits(max_in_flight=2, submits_per_second=100, queries_per_second=1000)
    knowing = QueueingService(dict(runtimes))
    states = await _wait_queued(knowing, limits)
    assert [s.status for s in states] == [TaskStatus.SUCCEEDED] * 4

    blind = QueueingService(dict(runtimes))  # no account limits: it cannot tell
    await _wait_queued(blind, None)
    queued = ("t2", "t3")
    assert sum(blind.pending_gets[t] for t in queued) >= 6, blind.pending_gets
    # The first GET (before any sweep showed the account full) at most, then none.
    assert all(knowing.pending_gets[t] <= 1 for t in queued), knowing.pending_gets
    # Their start is still seen in time: found ended within about one tight interval.
    assert max(knowing.ended_seen.values()) <= 3 * SCHEDULE.min_interval, knowing.ended_seen
