"""One row of a batch from its plan to its result: budget, slot, create, poll, keep.

A row over the plan's budget ends at once; a row doing the same work as an earlier one
copies that row's video; a row already kept is ``skipped``. Any other row takes a slot in
its model's lane, reserves its price, creates (or re-attaches to) its task in its turn,
frees the slot the moment the task ends and keeps the video. What every row of a run
shares is one :class:`RowLifecycle`, never the runner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Optional

from kf2v_tasks.batch.accounts import AccountPool, RunAccount
from kf2v_tasks.batch.config import RowConfig
from kf2v_tasks.batch.create_order import STARTING_ROWS, LaneTurns, StartPermit
from kf2v_tasks.batch.manifest_row import ManifestRow
from kf2v_tasks.batch.plan import BatchPlan, row_base
from kf2v_tasks.batch.results import (
    MADE_STATUSES,
    RowResult,
    RowStatus,
    failed_result,
    kept_result,
    over_budget_result,
)
from kf2v_tasks.batch.runtimes import RunTimeHistory, run_seconds_of
from kf2v_tasks.batch.steps import run_row_task
from kf2v_tasks.dashscope.watcher import watcher_for
from kf2v_tasks.generation.budget import Budget
from kf2v_tasks.generation.ledger import UNREAD
from kf2v_tasks.generation.ledger_state import LedgerState
from kf2v_tasks.generation.persisted import find_persisted
from kf2v_tasks.generation.previews import copy_previews
from kf2v_tasks.lanes.lookahead import is_concurrency_refusal
from kf2v_tasks.storage.files import copy_video

__all__ = ["RowLifecycle"]

# The runner's logger: what a row logs, the run says.
logger = logging.getLogger("kf2v_tasks.batch.runner")

# The row whose coroutine is running: a create answer names its row through it, even
# when the row is stopped before the submit step returns.
_ROW: ContextVar[Optional[ManifestRow]] = ContextVar("kf2v_row", default=None)


class RowLifecycle:
    """What every row coroutine of one run shares, and each row's way to its result."""

    def __init__(
        self,
        *,
        plan: BatchPlan,
        pool: AccountPool,
        config: RowConfig,
        budget: Budget,
        per_row_task: bool,
        finish: Callable[[RowResult], None],
        history: RunTimeHistory,
        turns: LaneTurns,
    ) -> None:
        self.plan = plan
        self.pool = pool
        self.config = config
        self.history = history
        self.learned = 0
        self.turns = turns
        self.budget = budget
        self.per_row_task = per_row_task
        self.finish = finish
        # Rows that share a fingerprint are one piece of work: the first generates, the
        # others copy its file.
        self.leaders: dict[str, asyncio.Future] = {}
        self.submitted = 0
        self.reattached = 0
        self.tasks: dict[str, ManifestRow] = {}  # task id -> its row, as created
        self.starting = asyncio.Semaphore(STARTING_ROWS)

    async def record_created(self) -> None:
        """Every task created is in the ledger, also one whose row was stopped between the
        create's answer and its own ledger write: the re-run re-attaches to it (or finds it
        cancelled) instead of taking the create for ambiguous and creating it again."""
        for task_id, row in list(self.tasks.items()):

            def change(record, task_id=task_id) -> bool:
                if record.task_id or record.state is not LedgerState.SUBMITTING:
                    return False
                record.submitted(task_id)
                return True

            try:
                await self.config.ledger.modify(self.plan.fingerprints[row.id], change)
            except Exception as exc:  # the re-run then treats the create as ambiguous
                logger.warning("could not record task %s of row %s: %s", task_id, row.id, exc)

    def created(self, acct: RunAccount, state) -> None:
        """A create answered: the task is ours and queued, whatever happens to its row next."""
        row = _ROW.get()
        if row is not None:
            self.tasks[state.task_id] = row
            self.turns.created(row)
            ahead = acct.aheads.get(row.options.model)
            if ahead is not None:
                ahead.seen(state.task_id, "PENDING")

    async def run_row(self, row: ManifestRow, record) -> None:
        _ROW.set(row)  # this row's own task: its context is its own
        fp = self.plan.fingerprints[row.id]
        base = row_base(self.config.output, row)
        dest = base["output"]
        reason = self.plan.over_budget.get(row.id)
        if reason is not None:  # decided by the plan, before anything was spent
            self.finish(over_budget_result(base, reason, self.plan.costs.get(row.id, 0.0)))
            return
        leader = self.leaders.get(fp)
        if leader is not None:
            self.finish(await self._follow(leader, dest, base))
            return
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.leaders[fp] = done
        price = self.plan.costs[row.id]
        started = StartPermit(self.starting)
        if self.per_row_task:  # the row's task run begins now: wait for a start permit first
            await started.acquire()
        try:
            if self.per_row_task:
                result = await run_row_task(
                    row.id, lambda: self._generate(row, record, fp, dest, price, base, started)
                )
            else:
                result = await self._generate(row, record, fp, dest, price, base, started)
        except Exception as exc:  # never let one row take the batch down
            logger.exception("row %s failed unexpectedly", row.id)
            result = failed_result(base, exc)
        finally:
            started()
        done.set_result(result)
        self.finish(result)

    async def _generate(self, row, record, fp, dest, price, base, started) -> RowResult:
        # Already persisted by an earlier run and still there: nothing to pay, nothing to call.
        # The plan checked it once for the whole run (assess_plan).
        kept = self.plan.persisted.get(row.id)
        if kept is not None:
            duplicate = bool(record and record.possible_duplicate)
            return kept_result(base, kept, possible_duplicate=duplicate)
        reattach = bool(record is not None and record.task_id and record.is_reusable())
        # A task that exists is polled on the account that holds it.
        pinned = self.pool.holder(record) if reattach else None
        reserved = 0.0
        sub: Any = None
        refused = False
        async with self.pool.slot(row.options.model, pinned) as (acct, held):
            steps = acct.steps
            base = {**base, "account": acct.name}
            # Taken after the slot: a row waiting for its lane must not keep another lane's
            # rows from starting.
            await started.acquire()
            if not reattach:
                if not self.budget.try_reserve(price or 0.0):  # None: unknown, no max_cost
                    return over_budget_result(
                        base,
                        f"not submitted: {price:.2f} more would exceed max_cost "
                        f"{self.budget.max_cost:.2f} (reserved {self.budget.reserved:.2f})",
                    )
                reserved = price or 0.0
            try:
                # The plan's read of the record spares the one before the claim.
                read = record if row.id in self.plan.records else UNREAD
                async with self.turns.turn(acct, row):
                    sub = await steps.submit(row, self.plan.frames[row.id], fp, read)
                started()  # created (or picked up): the next row may start
                self.tasks[sub.task_id] = row
                if getattr(sub, "already_persisted_at", None) is not None:
                    # Another run made this work meanwhile: nothing was created here. If its
                    # file is not there intact, the task is polled and kept again below.
                    made = await self._made_elsewhere(sub, fp, dest, base)
                    if made is not None:
                        if reserved:
                            self.budget.release(reserved)
                        return made
                if sub.reused:
                    self.reattached += 1
                else:
                    self.submitted += 1
                # Free the slot the moment the task is seen ended, not after its
                # bookkeeping: the next row's create goes out milliseconds sooner.
                watcher = watcher_for(steps.client)
                watcher.on_end(sub.task_id, lambda _state: held.release())
                try:
                    state = await steps.poll(row, sub)
                finally:
                    watcher.forget(sub.task_id)
            except Exception as exc:
                if reserved:
                    self.budget.release(reserved)  # failed tasks are not billed
                ahead = acct.aheads.get(row.options.model)
                if not (sub is None and ahead is not None and ahead.fell_back is not None):
                    return failed_result(base, exc, sub)
                if not is_concurrency_refusal(exc):
                    return failed_result(base, exc, sub)
                refused = True  # not created: try again once a running slot is free
        if refused:
            base = {k: v for k, v in base.items() if k != "account"}
            return await self._generate(row, record, fp, dest, price, base, started)
        if reserved:
            self.budget.commit(reserved)
        self._learn(row, state)
        try:
            video = await steps.persist(row, state, sub, dest)
        except Exception as exc:  # the task succeeded (and is billed); only keeping it failed
            return failed_result(base, exc, sub, cost=price)
        return RowResult(
            **base,
            status=RowStatus.SUCCEEDED,
            task_id=sub.task_id,
            cost=price,
            sha256=video.sha256,
            bytes=video.bytes,
            reattached=sub.reused,
            possible_duplicate=sub.possible_duplicate,
        )

    def _learn(self, row: ManifestRow, state) -> None:
        """Note how long the task ran: the next run of this output orders its rows by it."""
        seconds = run_seconds_of(state)
        if seconds is not None:
            o = row.options
            if self.history.observe(o.model, o.resolution, o.duration or 5, seconds):
                self.learned += 1

    async def _made_elsewhere(
        self, sub: Any, fp: str, dest: str, base: dict
    ) -> Optional[RowResult]:
        """``skipped`` if a kept video of this work is intact (copied here if kept elsewhere)."""
        c = self.config
        where = getattr(sub, "persisted_path", None) or dest
        kept = await find_persisted(c.ledger, fp, where, storage_options=c.storage_options)
        if kept is None:
            return None
        await self._copy_kept(where, dest)
        duplicate = bool(sub.possible_duplicate)
        return kept_result(base, kept, task_id=sub.task_id, possible_duplicate=duplicate)

    async def _follow(self, leader: asyncio.Future, dest: str, base: dict) -> RowResult:
        """A row identical to an earlier one: copy the earlier row's video."""
        first: RowResult = await leader
        if first.status not in MADE_STATUSES or not first.output:
            return RowResult(
                **base,
                status=RowStatus.FAILED,
                task_id=first.task_id,
                error_code=first.error_code or "DuplicateOfFailedRow",
                error_message=f"same work as row {first.row}, which did not succeed: "
                f"{first.error_message or first.status.value}",
            )
        await self._copy_kept(first.output, dest)
        return RowResult(
            **base,
            status=RowStatus.SUCCEEDED,
            task_id=first.task_id,
            sha256=first.sha256,
            bytes=first.bytes,
            cost=0.0,
        )

    async def _copy_kept(self, src: str, dest: str) -> None:
        """The kept video at ``src`` and its previews, copied to ``dest`` (no payment)."""
        if src != dest:
            await copy_video(src, dest, storage_options=self.config.storage_options)
            await copy_previews(src, dest, storage_options=self.config.storage_options)
