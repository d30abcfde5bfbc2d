"""RetryPolicy arithmetic and retry_call behaviour (waits recorded, never slept)."""

from __future__ import annotations

import asyncio

import pytest

from kf2v_tasks import clock
from kf2v_tasks.errors import InvalidRequestError, ServerError, ThrottledError, TransientError
from kf2v_tasks.retry import RetryPolicy, retry_call


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record clock.sleep calls (service seconds) instead of sleeping."""
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(clock, "sleep", fake_sleep)
    return recorded


def test_defaults() -> None:
    p = RetryPolicy()
    assert (p.max_attempts, p.base_delay, p.max_delay, p.jitter) == (8, 1.0, 60.0, 0.5)


def test_exponential_without_jitter() -> None:
    p = RetryPolicy(base_delay=1.0, max_delay=10.0, jitter=0.0)
    assert [p.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert p.delay(10_000) == 10.0  # no overflow


@pytest.mark.parametrize("r", [0.0, 0.25, 0.999999])
def test_jitter_bounds(r: float) -> None:
    p = RetryPolicy(base_delay=2.0, jitter=0.5, rand=lambda: r)
    # attempt 3: backoff 8; jitter randomises its top half
    assert p.delay(3) == pytest.approx(8.0 * (1 - 0.5 * r))
    assert 4.0 <= p.delay(3) <= 8.0


def test_full_jitter() -> None:
    p = RetryPolicy(base_delay=1.0, jitter=1.0, rand=lambda: 0.75)
    assert p.delay(2) == pytest.approx(0.5)


def test_retry_after_is_a_floor() -> None:
    p = RetryPolicy(base_delay=1.0, max_delay=5.0, jitter=0.5, rand=lambda: 0.0)
    assert p.delay(1, retry_after=3.0) == 3.0
    assert p.delay(1, retry_after=0.2) == 1.0  # backoff longer than the hint
    assert p.delay(1, retry_after=120.0) == 120.0  # honoured beyond max_delay


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 0}, {"jitter": 1.5}, {"jitter": -0.1}, {"base_delay": -1}]
)
def test_invalid_policy(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_repr_and_equality_ignore_rand() -> None:
    assert RetryPolicy(rand=lambda: 0.1) == RetryPolicy(rand=lambda: 0.9)
    assert "rand" not in repr(RetryPolicy())


async def test_retries_transient_until_success(sleeps: list[float]) -> None:
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ServerError("InternalError", "boom", status_code=500)
        return "ok"

    p = RetryPolicy(base_delay=1.0, jitter=0.0)
    assert await retry_call(fn, p) == "ok"
    assert calls == 4
    assert sleeps == [1.0, 2.0, 4.0]


async def test_permanent_error_not_retried(sleeps: list[float]) -> None:
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise InvalidRequestError("InvalidParameter", "bad", status_code=400)

    with pytest.raises(InvalidRequestError):
        await retry_call(fn, RetryPolicy())
    assert calls == 1 and sleeps == []


async def test_gives_up_after_max_attempts(sleeps: list[float]) -> None:
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise TransientError(f"try {calls}")

    with pytest.raises(TransientError, match="try 3"):
        await retry_call(fn, RetryPolicy(max_attempts=3, jitter=0.0))
    assert calls == 3 and len(sleeps) == 2


async def test_honours_retry_after_and_calls_on_retry(sleeps: list[float]) -> None:
    seen: list[tuple[int, str, float]] = []
    calls = 0

    async def fn() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ThrottledError("Throttling", "slow", status_code=429, retry_after=7.5)
        return calls

    async def on_retry(n: int, exc: BaseException, delay: float) -> None:
        seen.append((n, type(exc).__name__, delay))

    assert await retry_call(fn, RetryPolicy(jitter=0.0), on_retry=on_retry) == 2
    assert sleeps == [7.5]
    assert seen == [(1, "ThrottledError", 7.5)]


async def test_custom_is_retryable(sleeps: list[float]) -> None:
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("x")

    with pytest.raises(KeyError):
        await retry_call(
            fn, RetryPolicy(max_attempts=2), is_retryable=lambda e: isinstance(e, KeyError)
        )
    assert calls == 2 and len(sleeps) == 1


async def test_final_error_has_no_stale_context(sleeps: list[float]) -> None:
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise TransientError(f"try {calls}")

    with pytest.raises(TransientError) as info:
        await retry_call(fn, RetryPolicy(max_attempts=3))
    assert info.value.__context__ is None


async def test_cancellation_propagates() -> None:
    async def fn() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await retry_call(fn, RetryPolicy(), is_retryable=lambda e: True)


async def test_sleeps_through_clock_scale() -> None:
    """With a large time scale, the real wait is the service delay divided by it."""
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TransientError("once")

    clock.set_time_scale(1000)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await retry_call(fn, RetryPolicy(base_delay=50.0, jitter=0.0))  # 50 service s = 0.05 s
        assert 0.04 <= loop.time() - t0 < 1.0
    finally:
        clock.set_time_scale(None)


@pytest.mark.parametrize(
    "policy, expected",
    [
        (RetryPolicy(), 123.0),  # 1+2+4+8+16+32+60: the client's default budget
        (RetryPolicy(max_attempts=1), 0.0),
        (RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=1.0), 2.5),  # 0.5+1+1
        (RetryPolicy(max_attempts=6, base_delay=0.0), 0.0),
    ],
)
def test_worst_case_wait(policy: RetryPolicy, expected: float) -> None:
    assert policy.worst_case_wait() == expected


@pytest.mark.parametrize("max_attempts", [1, 2, 5, 8])
async def test_exact_attempt_budget(sleeps: list[float], max_attempts: int) -> None:
    """``max_attempts`` is the total number of calls, the first included."""
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise ServerError("InternalError", "boom", status_code=500)

    policy = RetryPolicy(max_attempts=max_attempts, jitter=0.0)
    with pytest.raises(ServerError):
        await retry_call(fn, policy)
    assert calls == max_attempts and len(sleeps) == max_attempts - 1
    assert sum(sleeps) == policy.worst_case_wait()
