"""Background tasks whose death by a signal is not lost.

Prefect turns SIGTERM into ``TerminationSignal``, a ``BaseException`` raised wherever the
main thread happens to be. When that is inside an asyncio task nobody awaits (a poller,
a lease keeper), asyncio only stores it in the task: the run would go on without it, or
wait for ever on it. :func:`spawn` starts such a task so that a signal that kills it is
handed to the loop's exception handler, where a batch stops cleanly
(:mod:`kf2v_tasks.batch.stopping`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Optional, TypeVar

T = TypeVar("T")

__all__ = ["is_signal", "spawn"]


def is_signal(error: Optional[BaseException]) -> bool:
    """A signal-like exception: a ``BaseException`` that is neither an error nor a cancel."""
    return error is not None and not isinstance(error, (Exception, asyncio.CancelledError))


def spawn(coro: Coroutine[Any, Any, T], *, name: Optional[str] = None) -> asyncio.Task[T]:
    """Start ``coro`` as a task on the running loop; a signal that ends it reaches the loop."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    task.add_done_callback(_escalate)
    return task


def _escalate(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if is_signal(error):
        task.get_loop().call_exception_handler(
            {"message": f"{task.get_name()} was stopped by a signal", "exception": error}
        )
