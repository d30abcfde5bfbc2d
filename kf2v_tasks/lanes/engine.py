"""The lanes' own thread: one event loop that outlives every flow run and task run.

Prefect runs each task of a ``.map`` on a worker thread with an event loop of its own,
which ends with the task run; a slot taken in a submit task is given back by a poll task
on another thread, and a global-limit lease must be renewed in between. So every lane
lives on this one loop, and callers on any loop hop over to it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Optional, TypeVar

T = TypeVar("T")

_loop: Optional[asyncio.AbstractEventLoop] = None
_lock = threading.Lock()
_closers: list[Callable[[], Coroutine[Any, Any, None]]] = []


def engine_loop() -> asyncio.AbstractEventLoop:
    """The lanes' loop, started on first use (a daemon thread: never keeps a process alive)."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="kf2v-lanes", daemon=True)
            thread.start()
            _loop = loop
        return _loop


def on_engine() -> bool:
    """Whether the caller runs on the lanes' loop."""
    try:
        return asyncio.get_running_loop() is _loop
    except RuntimeError:
        return False


def start(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run ``coro`` on the lanes' loop, in the caller's context (its Prefect settings)."""
    return asyncio.run_coroutine_threadsafe(coro, engine_loop())


async def run(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` on the lanes' loop from any loop (a caller that goes away cancels it)."""
    if on_engine():
        return await coro
    return await asyncio.wrap_future(start(coro))


def call(fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn(*args)`` on the lanes' loop (at once when already there)."""
    if on_engine():
        fn(*args)
    else:
        engine_loop().call_soon_threadsafe(fn, *args)


def at_exit(closer: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``closer()`` on the lanes' loop when the process exits (gives leases back)."""
    _closers.append(closer)


@atexit.register
def _close() -> None:
    loop = _loop
    if loop is None or loop.is_closed() or not _closers:
        return

    async def close_all() -> None:
        await asyncio.gather(*(c() for c in _closers), return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=5)
    except Exception:  # the leases expire on the server anyway
        pass
