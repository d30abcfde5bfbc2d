"""The batch engine behind the batch flow: plan everything, estimate, then fan out within quota.

One coroutine per row on the flow's event loop. Every row and frame is validated first
(:func:`~kf2v_tasks.batch.plan.plan_batch`, one Prefect task run for the whole manifest),
then each row's steps run (:mod:`~kf2v_tasks.batch.steps`) — never a subflow per row,
which costs about a second each. Rows share one client, one
:class:`~kf2v_tasks.dashscope.limits.AccountLimits` (submits/s, queries/s) and one
:class:`~kf2v_tasks.lanes.slots.SlotPool` (tasks in flight), so the run stays under the
account's quota instead of finding it through 429s, and a slot freed by a finished task
goes straight to the next row. Steps and observers get a frozen
:class:`~kf2v_tasks.batch.config.RowConfig`, never the runner.

Before the first create the plan is assessed (:func:`~kf2v_tasks.batch.plan.assess_plan`):
rows already made are skipped, and with ``max_cost`` the rows that do not fit are decided
once, in manifest order, and told to the observers; the runner never submits them. A dry
run writes that same table to ``results.dry-run.csv`` and never touches ``results.csv``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Any, Optional

from kf2v_tasks.batch.accounts import AccountPool, RunAccount, on_created, resolve_accounts
from kf2v_tasks.batch.config import (
    ConcurrencySettings,
    PollingSettings,
    RowConfig,
)
from kf2v_tasks.batch.manifest import ExtraColumns, ManifestRow, RowDefaults
from kf2v_tasks.batch.plan import BatchPlan, output_path, plan_batch, with_extras
from kf2v_tasks.batch.plan_assess import assess_plan, dry_run_results, run_prices
from kf2v_tasks.batch.reporting import BatchObserver, run_observer
from kf2v_tasks.batch.results import (
    DRY_RUN_RESULTS_NAME,
    BatchSummary,
    RowResult,
    RowStatus,
    failed_result,
    n_rows,
    to_csv,
    with_earlier_rows,
)
from kf2v_tasks.batch.runtimes import Order, RunTimeHistory, order_rows, run_seconds_of
from kf2v_tasks.batch.sharding import results_name_for, shard_summary_name
from kf2v_tasks.batch.steps import TaskRuns, make_steps, run_row_task
from kf2v_tasks.batch.steps import validate_manifest_task as _validate_gate
from kf2v_tasks.batch.stopping import run_rows
from kf2v_tasks.credentials import DashScopeCredentials, MissingCredentialsError
from kf2v_tasks.dashscope.watcher import watcher_for
from kf2v_tasks.errors import ManifestFileError
from kf2v_tasks.generation.budget import Budget
from kf2v_tasks.generation.claims import release_claim
from kf2v_tasks.generation.frames import FrameLimits
from kf2v_tasks.generation.ledger import UNREAD, Ledger, LedgerState
from kf2v_tasks.generation.persist import find_persisted
from kf2v_tasks.generation.previews import copy_previews
from kf2v_tasks.generation.pricing import PriceTable
from kf2v_tasks.generation.submit import AmbiguousPolicy
from kf2v_tasks.lanes.lookahead import is_concurrency_refusal
from kf2v_tasks.storage.files import copy_video, remove_stale_temps, write_text_atomic
from kf2v_tasks.storage.paths import join

__all__ = ["BatchRunner"]

logger = logging.getLogger("kf2v_tasks.batch.runner")

# The row whose coroutine is running: a create answer names its row through it, even
# when the row is stopped before the submit step returns.
_ROW: ContextVar[Optional[ManifestRow]] = ContextVar("kf2v_row", default=None)

#: Rows between their start (a Prefect task run begins) and their create's answer. Every
#: row starting at once interleaves its task-run set-up with all the others', so the
#: first create waited for hundreds of them; a few at a time, it goes out at once.
STARTING_ROWS = 8
#: Real seconds a stopped run gives its observers to say so (events) before it exits.
STOPPED_REPORT_SECONDS = 3.0
#: Real seconds a row waits for the row before it in its lane to create (see _turn).
TURN_SECONDS = 2.0


class BatchRunner:
    """Runs one manifest (or one shard of it) to an output root."""

    def __init__(
        self,
        manifest: str,
        output: str,
        *,
        defaults: Optional[RowDefaults] = None,
        concurrency: Optional[ConcurrencySettings] = None,
        polling: Optional[PollingSettings] = None,
        credentials: DashScopeCredentials | str | None = None,
        storage_options: Optional[dict] = None,
        price_table: Optional[PriceTable] = None,
        max_cost: Optional[float] = None,
        dry_run: bool = False,
        fail_fast: bool = False,
        ambiguous_policy: AmbiguousPolicy = AmbiguousPolicy.RETRY_ONCE,
        frame_limits: Optional[FrameLimits] = None,
        shard_index: int = 0,
        shard_count: int = 1,
        observer: Optional[BatchObserver] = None,
        task_runs: TaskRuns | str = TaskRuns.PER_STEP,
        extra_columns: ExtraColumns = False,
        order: Order | str = Order.LONGEST,
    ) -> None:
        self._price_table = price_table
        self.prices = price_table or PriceTable.default()
        self.config = RowConfig.build(
            output,
            manifest_url=manifest,
            ambiguous_policy=ambiguous_policy,
            polling=polling,
            prices=self.prices,
            storage_options=storage_options,
        )
        self.defaults = defaults or RowDefaults()
        self.concurrency = concurrency or ConcurrencySettings()
        self.credentials = credentials
        self.max_cost = max_cost
        self.dry_run = dry_run
        self.fail_fast = fail_fast
        self.frame_limits = frame_limits or FrameLimits()
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.observer = observer
        self.task_runs = TaskRuns(task_runs)
        self.extra_columns = extra_columns
        self.order = Order(order)
        self.results: dict[int, RowResult] = {}
        self.pool: Optional[AccountPool] = None
        self._fan: Optional[_RowFanOut] = None
        self._counts: Counter[str] = Counter()  # kept as rows finish: O(1) per row
        self._total = 0
        self._observer = run_observer(observer)

    @property
    def output(self) -> str:
        """The output root (URLs without a trailing slash)."""
        return self.config.output

    async def plan(self) -> BatchPlan:
        """Parse the manifest and validate every row and its frames; submit nothing."""
        return await plan_batch(
            self.config.manifest_url,
            self.output,
            defaults=self.defaults,
            storage_options=self.config.storage_options,
            frame_limits=self.frame_limits,
            validate_concurrency=self.concurrency.validate_concurrency,
            shard_index=self.shard_index,
            shard_count=self.shard_count,
            # One task run gates the whole batch: a task run per row would cost ~4 ms of
            # CPU here (and more in the API server) for every row before the first submit.
            gate=_validate_gate,
            extra_columns=self.extra_columns,
        )

    async def run(self) -> BatchSummary:
        """Validate, assess and estimate, then generate every runnable row; write the results.

        A real run writes ``results.csv`` (every row's latest outcome); a dry run writes
        ``results.dry-run.csv`` and submits nothing.
        """
        with _long_lived_heap():
            return await self._run()

    async def _run(self) -> BatchSummary:
        started = time.monotonic()
        self._observer = run_observer(self.observer)  # registrations in force now
        if not self.dry_run:
            await remove_stale_temps(self.output)
        try:
            plan = await self.plan()
        except ManifestFileError as exc:  # nothing runs; pipelines still hear it ended
            if not self.dry_run:
                await self._observer.on_stopped(
                    BatchSummary(
                        manifest=self.config.manifest_url,
                        output=self.output,
                        total=0,
                        stopped=f"{type(exc).__name__}: {exc}",
                    )
                )
            raise
        # Every row priced in the region of the credentials in use (a dry run needs no key).
        self.prices = await run_prices(self.credentials, self._price_table)
        self.config = dataclasses.replace(self.config, prices=self.prices)
        # What is already made, and what fits max_cost: decided once, before any create.
        await assess_plan(
            plan,
            self.config.ledger,
            prices=self.prices,
            max_cost=self.max_cost,
            storage_options=self.config.storage_options,
            # A real run makes the previews an older run's kept videos lack (no payment);
            # a dry run writes nothing.
            make_missing_previews=not self.dry_run,
        )
        rows = plan.runnable
        self._total = plan.manifest.total
        cost = plan.estimate(self.prices)  # what this run makes; kept videos apart
        logger.info(
            "%s, %d invalid; estimated cost %.2f %s%s",
            n_rows(len(rows), "valid"),
            len(plan.invalid),
            cost.total,
            cost.currency,
            cost.notes(),
        )
        budget_line = plan.budget_line(cost.currency)
        if budget_line:
            logger.info("%s", budget_line)
        await self._observer.on_plan(plan, cost, self.dry_run)
        for r in plan.invalid:
            self._finish(r)
        submitted = reattached = 0
        if self.dry_run:
            for r in dry_run_results(plan, invalid=False):
                self._finish(r)
        elif self.fail_fast and plan.invalid:
            self._not_run(rows)
        else:
            try:
                submitted, reattached = await self._execute(plan, rows)
            except BaseException as exc:
                await asyncio.shield(self._write_interrupted(plan, cost, started, exc))
                raise
            await self._reconcile_failed(plan)

        summary = self._summary(plan, cost, started, submitted, reattached)
        kept = await with_earlier_rows(
            self.output,
            self._results_name(),
            summary.results,
            storage_options=self.config.storage_options,
        )
        summary.results_path = await self._write(
            self._results_name(), to_csv(kept, plan.manifest.extra_columns)
        )
        if self.shard_count > 1:  # the parent merges these; the rows are in the CSV already
            await self._write(
                shard_summary_name(self.shard_index),
                summary.model_dump_json(indent=2, exclude={"results"}),
            )
        await self._observer.on_finish(summary)
        return summary

    def _summary(self, plan, cost, started: float, submitted: int, reattached: int):
        """The run's summary from the rows' results so far."""
        results = with_extras(plan, sorted(self.results.values(), key=lambda r: r.row))
        counts = BatchSummary.count(results)
        return BatchSummary(
            manifest=self.config.manifest_url,
            output=self.output,
            total=plan.manifest.total,
            counts=counts,
            submitted=submitted,
            reattached=reattached,
            skipped=counts.get(RowStatus.SKIPPED.value, 0),
            possible_duplicates=sum(1 for r in results if r.possible_duplicate),
            estimated_cost=cost.total,
            spent=round(sum(r.cost or 0.0 for r in results if r.status is RowStatus.SUCCEEDED), 4),
            currency=cost.currency,
            wall_seconds=round(time.monotonic() - started, 3),
            dry_run=self.dry_run,
            max_cost=plan.max_cost,
            cancelled=len(self._cancelled()),
            look_ahead_off=next((a.fell_back for a in self._aheads() if a.fell_back), None),
            results=results,
        )

    async def _write_interrupted(
        self, plan: BatchPlan, cost, started: float, exc: BaseException
    ) -> None:
        """Stopped early: results.csv says what finished, what was cancelled, what was not run.

        Pipelines hear it too: ``kf2v.batch.finished``, Failed, with what is known (at
        most a few seconds: a run being stopped must stop).
        """
        fan = self._fan
        cancelled = self._cancelled()
        created = {row.id: tid for tid, row in (fan.tasks.items() if fan else ())}
        for row in plan.runnable:
            if row.row_number in self.results:
                continue
            base = dict(row=row.row_number, id=row.id, output=output_path(self.output, row))
            task_id = created.get(row.id)
            if task_id in cancelled:
                result = RowResult(
                    **base,
                    status=RowStatus.CANCELLED,
                    task_id=task_id,
                    error_code="Cancelled",
                    error_message="queued ahead; cancelled before it started (not billed)",
                )
            elif isinstance(exc, MissingCredentialsError):  # nothing could be submitted
                result = RowResult(
                    **base,
                    status=RowStatus.NOT_RUN,
                    error_code=exc.code,
                    error_message=exc.row_message,
                )
            else:
                result = RowResult(
                    **base,
                    status=RowStatus.NOT_RUN,
                    task_id=task_id,
                    error_code="Interrupted",
                    error_message=(
                        f"interrupted; task {task_id} may still run: the next run re-attaches"
                        if task_id
                        else "interrupted before it was submitted"
                    ),
                )
            self.results[row.row_number] = result
        results = with_extras(plan, sorted(self.results.values(), key=lambda r: r.row))
        try:
            kept = await with_earlier_rows(
                self.output,
                self._results_name(),
                results,
                storage_options=self.config.storage_options,
            )
            await self._write(self._results_name(), to_csv(kept, plan.manifest.extra_columns))
        except Exception as exc:  # the ledger still knows every task; say why the file is old
            logger.warning("could not write the results of the interrupted run: %s", exc)
        if cancelled:
            logger.warning(
                "interrupted: %d queued task(s) cancelled before they started (not billed)",
                len(cancelled),
            )
        fan = self._fan
        summary = self._summary(
            plan, cost, started, fan.submitted if fan else 0, fan.reattached if fan else 0
        )
        summary.stopped = type(exc).__name__ + (f": {exc}" if str(exc) else "")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._observer.on_stopped(summary), STOPPED_REPORT_SECONDS)

    def _aheads(self) -> list:
        return self.pool.look_aheads if self.pool else []

    def _cancelled(self) -> set[str]:
        """Tasks queued ahead and cancelled, free, because the run stopped early."""
        return {t for ahead in self._aheads() for t in ahead.cancelled}

    async def _reconcile_failed(self, plan: BatchPlan) -> None:
        """A failed row whose video an overlapping run has kept since is reported ``skipped``.

        Two runs of one manifest finish in any order and the last one writes results.csv;
        the ledger and the file, not this run's own view, say what exists.
        """
        for number, result in list(self.results.items()):
            fp = plan.fingerprints.get(result.id or "")
            if result.status is not RowStatus.FAILED or not fp or not result.output:
                continue
            kept = await find_persisted(
                self.config.ledger,
                fp,
                result.output,
                storage_options=self.config.storage_options,
                price_table=self.prices,
            )
            if kept is not None:
                self.results[number] = result.model_copy(
                    update={
                        "status": RowStatus.SKIPPED,
                        "task_id": kept.task_id,
                        "sha256": kept.sha256,
                        "bytes": kept.bytes,
                        "cost": kept.cost,  # what it cost when it was made
                        "error_code": None,
                        "error_message": None,
                    }
                )

    def _results_name(self) -> str:
        """results.csv, or a shard's file; a dry run never writes over a real run's results."""
        if self.dry_run and self.shard_count == 1:
            return DRY_RUN_RESULTS_NAME
        return results_name_for(self.shard_index, self.shard_count)

    def _not_run(self, rows: list[ManifestRow]) -> None:
        """fail_fast with invalid rows: the valid rows are ``not_run``."""
        for row in rows:
            self._finish(
                RowResult(
                    row=row.row_number,
                    id=row.id,
                    status=RowStatus.NOT_RUN,
                    output=output_path(self.output, row),
                    error_message="not run: fail_fast and invalid rows in the manifest",
                )
            )

    async def _execute(self, plan: BatchPlan, rows: list[ManifestRow]) -> tuple[int, int]:
        """Run every row in its model's lane; return (tasks created, tasks re-attached)."""
        pool = self.pool = AccountPool(await resolve_accounts(self.credentials), self.concurrency)
        models = list(dict.fromkeys(r.options.model for r in rows))
        history = await RunTimeHistory.load(self.output, self.config.storage_options)
        fan = None
        try:
            await pool.open(models, self.shard_count)
            order = self._resume_order(plan, rows, history)
            # Every lane's slots before any row starts its task runs (see SlotPool.warm).
            for acct in pool.accounts:
                for model, lane in acct.lanes.items():
                    await lane.warm(
                        sum(
                            1
                            for r, _ in order
                            if r.options.model == model and r.id not in plan.persisted
                        )
                    )
            async with contextlib.AsyncExitStack() as stack:
                fan = self._fan = _RowFanOut(
                    plan=plan,
                    pool=pool,
                    config=self.config,
                    budget=Budget(self.max_cost),
                    per_row_task=self.task_runs is TaskRuns.PER_ROW,
                    finish=self._finish,
                    history=history,
                )
                fan.sequenced = _models_in_order(order, history)
                for acct in pool.accounts:
                    acct.client = await stack.enter_async_context(
                        acct.credentials.get_client(limits=acct.limits)
                    )
                    acct.steps = make_steps(self.task_runs, self.config, acct.client)
                    acct.steps.look_aheads = acct.aheads
                    acct.steps.account = acct.label
                    acct.steps.account_name = acct.name
                    # Known from the create answer on, not from the submit step's return: a
                    # stop landing in between must still cancel it.
                    acct.client.created_hooks.append(on_created(acct, fan.created))

                async def stopped_early() -> None:
                    # Ctrl-C, SIGTERM, a Prefect cancellation, a row that raised: once every
                    # row has stopped and the creates on the wire have answered, the tasks
                    # queued ahead never started; cancelled now, they cost nothing.
                    try:
                        for acct in pool.accounts:
                            await acct.client.settle_creates()
                        await fan.record_created()
                        for acct in pool.accounts:
                            for ahead in acct.aheads.values():
                                await ahead.cancel_pending(acct.client)
                    finally:
                        # The ledger keeps every task created; a re-run re-attaches by it
                        # and must find no claim of ours in its way.
                        for fp in set(plan.fingerprints.values()):
                            await release_claim(self.config.ledger, fp)

                await run_rows((fan.run_row(row, rec) for row, rec in order), stopped_early)
        finally:
            await pool.close()
            if fan is not None and fan.learned:
                try:
                    await history.save(self.output, self.config.storage_options)
                except Exception as exc:  # only the next run's order suffers
                    logger.warning("could not keep this run's task run times: %s", exc)
        assert fan is not None
        return fan.submitted, fan.reattached

    def _resume_order(self, plan: BatchPlan, rows: list[ManifestRow], history: RunTimeHistory):
        """Rows with a live task first (re-attach), then the rest longest first (or as listed)."""
        live = set(plan.live)
        order = [(r, plan.records.get(r.id)) for r in rows]
        rest = order_rows(
            [o for o in order if o[0].id not in live],
            lambda o: (o[0].options.model, o[0].options.resolution, o[0].options.duration),
            history,
            self.order,
        )
        return [o for o in order if o[0].id in live] + rest

    def _finish(self, result: RowResult) -> None:
        self.results[result.row] = result
        self._counts[result.status.value] += 1
        self._observer.on_row(result, dict(self._counts), self._total)

    async def _write(self, name: str, text: str) -> str:
        path = join(self.output, name)
        await write_text_atomic(path, text, storage_options=self.config.storage_options)
        return path


def _models_in_order(order, history: RunTimeHistory) -> set[str]:
    """The models whose rows differ in predicted run time: their creates keep their order."""
    seen: dict[str, set[float]] = {}
    for row, _ in order:
        o = row.options
        seen.setdefault(o.model, set()).add(history.predict(o.model, o.resolution, o.duration))
    return {model for model, times in seen.items() if len(times) > 1}


@contextlib.contextmanager
def _long_lived_heap() -> Iterator[None]:
    """Leave what exists when the run starts (modules, Prefect, the run's own set-up) out of
    the garbage collector's full passes until it ends: it outlives the run anyway, and each
    full pass walked all of it: full passes took 0.18 CPU s of a 200-row run at concurrency
    32 (0.02 s with this), and one fell between the start and the first create."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class _StartPermit:
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


class _RowFanOut:
    """What every row coroutine of one run shares (never the runner itself)."""

    def __init__(
        self, *, plan, pool: AccountPool, config, budget, per_row_task: bool, finish, history
    ) -> None:
        self.plan: BatchPlan = plan
        self.pool = pool
        self.config: RowConfig = config
        self.history: RunTimeHistory = history
        self.learned = 0
        # Lanes (models) whose rows differ in predicted run time: they create in turn.
        self.sequenced: set[str] = set()
        self.turns: dict[str, asyncio.Event] = {}
        self.last_turns: dict[tuple[str, str], list[asyncio.Event]] = {}
        self.budget: Budget = budget
        self.per_row_task = per_row_task
        self.finish = finish
        # Rows that share a fingerprint are one piece of work: the first generates, the
        # others copy its file.
        self.leaders: dict[str, asyncio.Future] = {}
        self.submitted = 0
        self.reattached = 0
        self.tasks: dict[str, ManifestRow] = {}  # task id -> its row, as created
        self.starting = asyncio.Semaphore(STARTING_ROWS)

    @contextlib.asynccontextmanager
    async def _turn(self, acct: RunAccount, row: ManifestRow) -> AsyncIterator[None]:
        """Queue a lane's tasks at the service in the order its rows got their slots.

        Rows that get slots together (a lane's first fill) create in whatever order their
        task runs and ledger writes finish, and the longest task could be the one left
        queued ahead instead of running (B6 measured it). The lane's first ``running``
        rows create at once (they all run at once); each later one waits until every row
        before it has created. Only lanes whose rows differ in predicted run time wait,
        and at most TURN_SECONDS a wait.
        """
        model = row.options.model
        if model not in self.sequenced:
            yield
            return
        mine = self.turns[row.id] = asyncio.Event()
        lane = self.last_turns.setdefault((acct.label, model), [])
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
            turn = self.turns.get(row.id)
            if turn is not None:
                turn.set()  # the next row of the lane may create now
            ahead = acct.aheads.get(row.options.model)
            if ahead is not None:
                ahead.seen(state.task_id, "PENDING")

    async def run_row(self, row: ManifestRow, record) -> None:
        _ROW.set(row)  # this row's own task: its context is its own
        fp = self.plan.fingerprints[row.id]
        dest = output_path(self.config.output, row)
        base = dict(row=row.row_number, id=row.id, output=dest)
        reason = self.plan.over_budget.get(row.id)
        if reason is not None:  # decided by the plan, before anything was spent
            self.finish(
                RowResult(
                    **base,
                    status=RowStatus.OVER_BUDGET,
                    error_code="BudgetExceeded",
                    error_message=reason,
                    cost=self.plan.costs.get(row.id, 0.0),
                )
            )
            return
        leader = self.leaders.get(fp)
        if leader is not None:
            self.finish(await self._follow(leader, dest, base))
            return
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.leaders[fp] = done
        price = self.plan.costs[row.id]
        started = _StartPermit(self.starting)
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
            return RowResult(
                **base,
                status=RowStatus.SKIPPED,
                task_id=kept.task_id,
                sha256=kept.sha256,
                bytes=kept.bytes,
                cost=kept.cost,  # what it cost when it was made
                possible_duplicate=bool(record and record.possible_duplicate),
            )
        reattach = bool(record is not None and record.task_id and Ledger.is_task_reusable(record))
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
                    return RowResult(
                        **base,
                        status=RowStatus.OVER_BUDGET,
                        error_code="BudgetExceeded",
                        error_message=(
                            f"not submitted: {price:.2f} more would exceed max_cost "
                            f"{self.budget.max_cost:.2f} (reserved {self.budget.reserved:.2f})"
                        ),
                    )
                reserved = price or 0.0
            try:
                # The plan's read of the record spares the one before the claim.
                read = record if row.id in self.plan.records else UNREAD
                async with self._turn(acct, row):
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
        if where != dest:
            await copy_video(where, dest, storage_options=c.storage_options)
            await copy_previews(where, dest, storage_options=c.storage_options)
        return RowResult(
            **base,
            status=RowStatus.SKIPPED,
            task_id=kept.task_id or sub.task_id,
            sha256=kept.sha256,
            bytes=kept.bytes,
            cost=kept.cost,
            possible_duplicate=bool(sub.possible_duplicate),
        )

    async def _follow(self, leader: asyncio.Future, dest: str, base: dict) -> RowResult:
        """A row identical to an earlier one: copy the earlier row's video."""
        first: RowResult = await leader
        if first.status not in (RowStatus.SUCCEEDED, RowStatus.SKIPPED) or not first.output:
            return RowResult(
                **base,
                status=RowStatus.FAILED,
                task_id=first.task_id,
                error_code=first.error_code or "DuplicateOfFailedRow",
                error_message=f"same work as row {first.row}, which did not succeed: "
                f"{first.error_message or first.status.value}",
            )
        if first.output != dest:
            await copy_video(first.output, dest, storage_options=self.config.storage_options)
            await copy_previews(first.output, dest, storage_options=self.config.storage_options)
        return RowResult(
            **base,
            status=RowStatus.SUCCEEDED,
            task_id=first.task_id,
            sha256=first.sha256,
            bytes=first.bytes,
            cost=0.0,
        )
