"""Stopping a run early: every row stops before the clean-up, whatever stopped the run."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prefect.exceptions import TerminationSignal

from kf2v_tasks.batch.stopping import run_rows
from kf2v_tasks.dashscope.client import Kf2vClient
from kf2v_tasks.dashscope.models import Kf2vRequest

from conftest import TEST_API_KEY


async def test_rows_finish_normally_and_cleanup_is_not_called():
    cleaned: list[str] = []

    async def row(n: int) -> int:
        await asyncio.sleep(0.01 * n)
        return n

    async def cleanup() -> None:
        cleaned.append("yes")

    assert await run_rows([row(3), row(1), row(2)], cleanup) == [3, 1, 2]
    assert cleaned == []


async def test_a_failing_row_stops_its_siblings_before_the_cleanup():
    running: set[int] = set()
    seen_at_cleanup: list[set[int]] = []

    async def sibling(n: int) -> None:
        running.add(n)
        try:
            await asyncio.sleep(60)
        finally:
            running.discard(n)

    async def failing() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("row 3 broke")

    async def cleanup() -> None:
        seen_at_cleanup.append(set(running))

    with pytest.raises(RuntimeError, match="row 3 broke"):
        await run_rows([sibling(1), sibling(2), failing()], cleanup)
    assert seen_at_cleanup == [set()]  # no row was left running under the clean-up


async def test_a_termination_signal_in_a_loop_callback_stops_the_run_instead_of_being_logged():
    """asyncio only logs a BaseException raised in a plain callback; SIGTERM must still stop."""
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    finished: list[int] = []
    cleaned: list[bool] = []

    def signal_lands_here() -> None:
        raise TerminationSignal(15)

    async def row(n: int) -> None:
        await asyncio.sleep(30)
        finished.append(n)

    async def cleanup() -> None:
        cleaned.append(True)

    loop.call_later(0.05, signal_lands_here)
    with pytest.raises(TerminationSignal):
        await asyncio.wait_for(run_rows([row(1), row(2)], cleanup), timeout=10)
    assert cleaned == [True] and finished == []
    assert loop.get_exception_handler() is before  # the loop is given back as it was


async def test_other_loop_errors_still_reach_the_previous_handler():
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: reported.append(str(ctx.get("exception"))))
    try:

        def broken_callback() -> None:
            raise ValueError("unrelated")

        async def row() -> str:
            loop.call_soon(broken_callback)
            await asyncio.sleep(0.05)
            return "done"

        async def cleanup() -> None:
            raise AssertionError("not stopped early")

        assert await run_rows([row()], cleanup) == ["done"]
        assert reported == ["unrelated"]
    finally:
        loop.set_exception_handler(None)


async def test_a_create_on_the_wire_is_still_heard_when_its_caller_is_cancelled():
    """The task it made is then known, and a stopping run can cancel it."""
    answered = asyncio.Event()

    async def slow_service(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.3)  # the create reached the service; its answer is on its way
        answered.set()
        return httpx.Response(200, json={"output": {"task_id": "t-9", "task_status": "PENDING"}})

    client = Kf2vClient(
        TEST_API_KEY,
        base_url="https://dashscope.test/api/v1",
        transport=httpx.MockTransport(slow_service),
    )
    heard: list[str] = []
    client.created_hooks.append(lambda state: heard.append(state.task_id))
    request = Kf2vRequest(
        first_frame_url="https://example.com/a.png",
        last_frame_url="https://example.com/b.png",
        prompt="p",
    )
    async with client:
        create = asyncio.ensure_future(client.create_task(request))
        await asyncio.sleep(0.1)
        create.cancel()
        with pytest.raises(asyncio.CancelledError):
            await create
        assert heard == []
        await client.settle_creates(timeout=5)
    assert answered.is_set() and heard == ["t-9"]


async def test_a_signal_that_kills_a_background_task_stops_the_run():
    """A poller killed by SIGTERM must not leave its waiters waiting for ever."""
    from kf2v_tasks.background import spawn

    waiting = asyncio.get_running_loop().create_future()  # what the poller would answer
    cleaned: list[bool] = []

    async def poller() -> None:
        await asyncio.sleep(0.05)
        raise TerminationSignal(15)  # where Prefect's SIGTERM handler happened to land

    async def row() -> None:
        spawn(poller(), name="poller")
        await waiting

    async def cleanup() -> None:
        cleaned.append(True)

    with pytest.raises(TerminationSignal):
        await asyncio.wait_for(run_rows([row()], cleanup), timeout=10)
    assert cleaned == [True]


async def test_a_claim_whose_holder_process_is_gone_is_taken_over_at_once(tmp_path):
    """A stopped or killed run on this machine renews nothing: its re-run need not wait."""
    import os
    import socket
    import subprocess
    import sys
    from datetime import UTC, datetime, timedelta

    from kf2v_tasks.generation.claim_lease import release_all
    from kf2v_tasks.generation.claims import ClaimBook, ClaimDoc
    from kf2v_tasks.generation.ledger import Ledger

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid names no process now
    book = ClaimBook(Ledger(str(tmp_path / "out")))
    fp = "ab" * 32
    now = datetime.now(UTC)
    doc = ClaimDoc(
        fingerprint=fp, holder="a-stopped-run", token="t", host=socket.gethostname(),
        pid=gone.pid, acquired_at=now, renewed_at=now, expires_at=now + timedelta(hours=1),
        lease_seconds=3600,
    )  # fmt: skip
    os.makedirs(os.path.dirname(book.url_of(fp)), exist_ok=True)
    with open(book.url_of(fp), "wb") as f:
        f.write(doc.to_bytes())
    held, other = await book.try_acquire(fp, row_id="r1")
    assert held is not None and other is None
    # At exit every claim this process holds goes (other tests' too, in a shared worker).
    assert release_all() >= 1 and not os.path.exists(book.url_of(fp))


def test_a_signal_wrapped_by_a_library_still_decides_the_exit_code():
    """pydantic turns a KeyboardInterrupt raised in a serializer into an error of its own."""
    from pydantic import BaseModel, model_serializer

    from kf2v_tasks._cli.main import _signal_exit_code

    class Model(BaseModel):
        x: int = 1

        @model_serializer(mode="wrap")
        def _ser_model(self, handler):
            raise KeyboardInterrupt

    with pytest.raises(Exception) as wrapped:
        Model().model_dump()
    assert _signal_exit_code(wrapped.value) == 130
    assert _signal_exit_code(TerminationSignal(15)) == 143
    assert _signal_exit_code(ValueError("plain")) is None
