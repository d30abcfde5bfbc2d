"""Stopping a run early: first every row, then the clean-up, whatever stopped it.

A run stops early on Ctrl-C, on SIGTERM (a supervisor, a Prefect cancellation), or when a
row raises. Before the tasks queued ahead are cancelled (:meth:`LookAhead.cancel_pending
<kf2v_tasks.lanes.lookahead.LookAhead.cancel_pending>`), no row may still be running: a
sibling row left going would take the slot a cancel frees and create one more task
behind our back. So :func:`run_rows` cancels every row, waits for them, lets the creates
already sent answer (their task ids are then known), and only then runs the clean-up.

Prefect turns SIGTERM into :class:`~prefect.exceptions.TerminationSignal`, raised wherever
the main thread is. Three places, three paths, one outcome:

- in a row's own code: the row fails, and the others are stopped here;
- in the event loop's ``select()``: ``asyncio.run`` cancels every task, this one included;
- in a plain loop callback, or in a background task (:func:`kf2v_tasks.background.spawn`
  hands that one to the loop): asyncio would only log or store it and carry on, as if
  nothing had been asked, or wait for ever on a poller that is gone. The loop's exception
  handler catches it here, stops the rows, and the signal is raised again once the
  clean-up is done, so Prefect ends the run as it would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from kf2v_tasks.background import is_signal


async def run_rows(
    rows: Iterable[Awaitable[Any]],
    cleanup: Callable[[], Awaitable[Any]],
) -> list[Any]:
    """Run ``rows`` together (their results, in order); if one fails or the run is stopped,
    stop all and, once none still runs, await ``cleanup``.
    """
    loop = asyncio.get_running_loop()
    tasks = [asyncio.ensure_future(r) for r in rows]
    together = asyncio.gather(*tasks)
    signalled: list[BaseException] = []
    previous = loop.get_exception_handler()

    def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if is_signal(error):
            if not signalled:
                signalled.append(error)
                together.cancel()
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(on_loop_error)
    try:
        return await together
    except BaseException:
        for task in tasks:
            task.cancel()
        # Shielded: when asyncio.run is tearing down, this task was cancelled already.
        await asyncio.shield(_stop(tasks, cleanup))
        if signalled:
            raise signalled[0] from None
        raise
    finally:
        loop.set_exception_handler(previous)


async def _stop(tasks: list[asyncio.Future[Any]], cleanup: Callable[[], Awaitable[Any]]) -> None:
    if tasks:  # their errors are retrieved by the gather they belong to
        await asyncio.wait(tasks)
    await cleanup()
