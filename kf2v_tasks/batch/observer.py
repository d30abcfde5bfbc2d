"""The observer a batch reports to: one interface, a group that isolates failures, and
process-wide registration.

The runner calls one :class:`BatchObserver`. The CLI's progress bar registers itself for the
whole process with :func:`observing`, because a flow cannot take a callable as a parameter.
An observer that fails is logged and ignored: reporting never fails a batch.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Optional

from kf2v_tasks.batch.results import BatchSummary, RowResult

if TYPE_CHECKING:
    from kf2v_tasks.batch.plan import BatchPlan
    from kf2v_tasks.generation.pricing import CostEstimate

__all__ = ["BatchObserver", "ObserverGroup", "observing", "run_observer"]

logger = logging.getLogger("kf2v_tasks.batch.reporting")


class BatchObserver:
    """Told what a batch does; every method is a no-op here, override the ones you need."""

    async def on_plan(self, plan: BatchPlan, cost: CostEstimate, dry_run: bool) -> None:
        """Every row is validated and the cost estimated; nothing is spent yet."""

    def on_row(self, result: RowResult, counts: dict[str, int], total: int) -> None:
        """A row finished (``counts``: rows per status so far, ``total``: rows in all)."""

    async def on_finish(self, summary: BatchSummary) -> None:
        """The batch is done; ``summary.results`` has every row, in row order."""

    async def on_stopped(self, summary: BatchSummary) -> None:
        """The batch ended early (``summary.stopped`` says why): what is known so far."""


class ObserverGroup(BatchObserver):
    """Several observers as one; a failing observer is logged and the others still run."""

    def __init__(self, observers: Iterable[BatchObserver]) -> None:
        self.observers = list(observers)

    async def _tell(self, method: str, *args: Any) -> None:
        for o in self.observers:
            try:
                told = getattr(o, method)(*args)
                if inspect.isawaitable(told):
                    await told
            except Exception:  # reporting must never fail the batch
                logger.exception("observer %r failed in %s", o, method)

    async def on_plan(self, plan: BatchPlan, cost: CostEstimate, dry_run: bool) -> None:
        await self._tell("on_plan", plan, cost, dry_run)

    def on_row(self, result: RowResult, counts: dict[str, int], total: int) -> None:
        for o in self.observers:  # synchronous: called from the row's own code path
            try:
                o.on_row(result, counts, total)
            except Exception:  # a broken progress bar must not break the batch
                logger.exception("observer %r failed in on_row", o)

    async def on_finish(self, summary: BatchSummary) -> None:
        await self._tell("on_finish", summary)

    async def on_stopped(self, summary: BatchSummary) -> None:
        await self._tell("on_stopped", summary)


#: Observers registered for every batch run in this process (the CLI's progress bar).
_registered: list[BatchObserver] = []


@contextlib.contextmanager
def observing(observer: BatchObserver) -> Iterator[BatchObserver]:
    """Tell ``observer`` about every batch that runs in this process while inside the block."""
    _registered.append(observer)
    try:
        yield observer
    finally:
        with contextlib.suppress(ValueError):
            _registered.remove(observer)


def run_observer(*extra: Optional[BatchObserver]) -> ObserverGroup:
    """The one observer a run calls: ``extra`` plus every :func:`observing` registration."""
    return ObserverGroup([o for o in extra if o is not None] + list(_registered))
