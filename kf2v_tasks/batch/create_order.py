"""The order a run's creates go out in: live tasks first, then longest first, a few at a time.

Rows whose task is still live re-attach first; the rest start longest first (or as listed,
:mod:`~kf2v_tasks.batch.runtimes`). Only a few rows are starting at once
(:class:`StartPermit`), so the first create does not wait for every row's set-up, and in a
lane whose rows differ in predicted run time the rows create in the order they got their
slots (:class:`LaneTurns`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from kf2v_tasks.batch.accounts import RunAccount
from kf2v_tasks.batch.manifest_row import ManifestRow
from kf2v_tasks.batch.plan import BatchPlan
from kf2v_tasks.batch.runtimes import Order, RunTimeHistory, order_rows

#: Rows between their start (a Prefect task run begins) and their create's answer. Every
#: row starting at once interleaves its task-run set-up with all the others', so the
#: first create waited for hundreds of them; a few at a time, it goes out at once.
STARTING_ROWS = 8
#: Real seconds a row waits for the row before it in its lane to create (see LaneTurns).
TURN_SECONDS = 2.0


def start_order(
    plan: BatchPlan, rows: list[ManifestRow], history: RunTimeHistory, order: Order
) -> list[tuple[ManifestRow, Any]]:
    """Rows with a live task first (re-attach), then the rest longest first (or as listed);
    each with its ledger record as the plan read it."""
    live = set(plan.live)
    pairs = [(r, plan.records.get(r.id)) for r in rows]
    rest = order_rows(
        [o for o in pairs if o[0].id not in live],
        lambda o: (o[0].options.model, o[0].options.resolution, o[0].options.duration),
        history,
        order,
    )
    return [o for o in pairs if o[0].id in live] + rest


class StartPermit:
    """One row's permit to start (see STARTING_ROWS): taken once, given back once."""

    def __init__(self, gate: asyncio.Semaphore) -> None:
        self._gate = gate
        self._held = False
        self._done = False

    async def acquire(self) -> None:
        if not self._held and not self._done:
            await self._gate.acquire()
            self._held = True

    def __call__(self) -> None:
        self._done = True
        if self._held:
            self._held = False
            self._gate.release()


class LaneTurns:
    """Queue a lane's tasks at the service in the order its rows got their slots.

    Rows that get slots together (a lane's first fill) create in whatever order their
    task runs and ledger writes finish, and the longest task could be the one left
    queued ahead instead of running (B6 measured it). The lane's first ``running`` rows
    create at once (they all run at once); each later one waits until every row before
    it has created. Only lanes whose rows differ in predicted run time wait, and at most
    TURN_SECONDS a wait.
    """

    def __init__(self, order: list[tuple[ManifestRow, Any]], history: RunTimeHistory) -> None:
        # Lanes (models) whose rows differ in predicted run time: they create in turn.
        seen: dict[str, set[float]] = {}
        for row, _ in order:
            o = row.options
            seen.setdefault(o.model, set()).add(history.predict(o.model, o.resolution, o.duration))
        self.sequenced = {model for model, times in seen.items() if len(times) > 1}
        self._turns: dict[str, asyncio.Event] = {}
        self._lanes: dict[tuple[str, str], list[asyncio.Event]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, acct: RunAccount, row: ManifestRow) -> AsyncIterator[None]:
        """Wait for ``row``'s turn to create in its lane; its turn ends with the block."""
        model = row.options.model
        if model not in self.sequenced:
            yield
            return
        mine = self._turns[row.id] = asyncio.Event()
        lane = self._lanes.setdefault((acct.label, model), [])
        running = acct.lanes[model].running
        before = lane[:running] if len(lane) == running else lane[-1:]
        lane.append(mine)
        if len(lane) > running:
            waits = [e.wait() for e in before if not e.is_set()]
            if waits:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*waits), TURN_SECONDS)
        try:
            yield
        finally:
            mine.set()  # re-attached, refused or failed: nothing to wait for

    def created(self, row: ManifestRow) -> None:
        """``row``'s create answered: the next row of its lane may create now."""
        turn = self._turns.get(row.id)
        if turn is not None:
            turn.set()
