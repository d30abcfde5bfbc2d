"""The batch engine behind the batch flow: validate everything, estimate, then fan out within quota.

One coroutine per row on the flow's event loop; every row and frame is validated first
(one Prefect task run for the whole manifest), then each row step is one Prefect task
run (submit, poll, persist) — never a subflow per row, which costs about a second each.
Rows share one client, one :class:`~kf2v_tasks.dashscope.limits.AccountLimits` (submits/s,
queries/s) and one :class:`~kf2v_tasks.batch.slots.SlotPool` (tasks in flight), so the run
stays under the account's quota instead of finding it through 429s, and a slot freed by
a finished task goes straight to the next row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Optional

from pydantic import BaseModel, Field

from kf2v_tasks.batch.manifest import ManifestRow, ParsedManifest, RowDefaults, load_manifest
from kf2v_tasks.batch.results import BatchSummary, RowResult, RowStatus
from kf2v_tasks.batch.slots import SlotPool
from kf2v_tasks.batch.steps import TaskRuns, run_row_task, validate_manifest_task
from kf2v_tasks.dashscope.limits import AccountLimits
from kf2v_tasks.dashscope.models import FramePair
from kf2v_tasks.dashscope.polling import DEFAULT_DEADLINE, DEFAULT_QUEUE_DEADLINE, PollSchedule
from kf2v_tasks.dashscope.watcher import watcher_for
from kf2v_tasks.errors import AmbiguousCreateError, Kf2vError, ManifestError
from kf2v_tasks.generation.frames import FrameLimits, check_pair
from kf2v_tasks.generation.ledger import Ledger
from kf2v_tasks.generation.persist import find_persisted
from kf2v_tasks.generation.pricing import Budget, PriceTable, estimate, estimate_row
from kf2v_tasks.generation.submit import AmbiguousPolicy, request_fingerprint

logger = logging.getLogger("kf2v_tasks.batch.runner")

#: Name of the Prefect global concurrency limit that stands for the account's task quota.
DEFAULT_GLOBAL_LIMIT = "kf2v-dashscope-tasks"


class ConcurrencySettings(BaseModel):
    """The account quota this run must respect."""

    max_in_flight: int = Field(
        default=2,
        ge=1,
        le=1024,
        description="Remote tasks submitted and not yet finished (the service default is 2).",
    )
    submits_per_second: float = Field(
        default=2.0, gt=0, description="Create calls per second (the service default is 2)."
    )
    queries_per_second: float = Field(
        default=20.0, gt=0, description="Task queries per second (the service default is 20)."
    )
    global_limit: Optional[str] = Field(
        default=DEFAULT_GLOBAL_LIMIT,
        description=(
            "Prefect global concurrency limit shared by every run and worker using this "
            "account; used only when it exists on the server (see `kf2v limits apply`)."
        ),
    )
    validate_concurrency: int = Field(
        default=8, ge=1, le=256, description="Frame pairs validated at the same time."
    )


class PollingSettings(BaseModel):
    """How long to wait for each task."""

    deadline_seconds: float = Field(
        default=DEFAULT_DEADLINE, gt=0, description="Give up waiting on a task after this."
    )
    queue_deadline_seconds: float = Field(
        default=DEFAULT_QUEUE_DEADLINE,
        gt=0,
        description="Cancel a task still PENDING after this (never billed).",
    )
    schedule: PollSchedule = Field(
        default_factory=PollSchedule, description="Polling intervals (service seconds)."
    )


ProgressListener = Callable[[RowResult, dict[str, int], int], None]

#: Process-wide listener (the CLI's progress bar); flows cannot take callables as parameters.
_progress_listeners: list[ProgressListener] = []


def add_progress_listener(listener: ProgressListener) -> None:
    """Call ``listener(result, counts, total)`` whenever a row finishes in this process."""
    _progress_listeners.append(listener)


def remove_progress_listener(listener: ProgressListener) -> None:
    """Stop calling ``listener``."""
    if listener in _progress_listeners:
        _progress_listeners.remove(listener)


PlanListener = Callable[["BatchPlan", Any, bool], None]

#: Told the plan and the cost estimate before anything is submitted (the CLI prints it).
_plan_listeners: list[PlanListener] = []


def add_plan_listener(listener: PlanListener) -> None:
    """Call ``listener(plan, cost_estimate, dry_run)`` once validation is done, before spending."""
    _plan_listeners.append(listener)


def remove_plan_listener(listener: PlanListener) -> None:
    """Stop calling ``listener``."""
    if listener in _plan_listeners:
        _plan_listeners.remove(listener)


class BatchPlan(BaseModel):
    """A validated manifest: runnable rows with their frames, and the rest with reasons."""

    manifest: ParsedManifest
    frames: dict[str, FramePair] = Field(default_factory=dict)  # by row id
    fingerprints: dict[str, str] = Field(default_factory=dict)  # by row id
    invalid: list[RowResult] = Field(default_factory=list)

    @property
    def runnable(self) -> list[ManifestRow]:
        """Rows that passed every check, in manifest order."""
        return [r for r in self.manifest.rows if r.id in self.frames]


def output_path(output_root: str, row: ManifestRow) -> str:
    """Where a row's video goes (its ``output`` name is already checked to stay inside)."""
    from kf2v_tasks.storage.paths import join, safe_child

    return join(output_root, safe_child(output_root, row.output))


class BatchRunner:
    """Runs one manifest (or one shard of it) to an output root.

    Example:
        ```python
        import asyncio
        from kf2v_tasks.batch.runner import BatchRunner

        runner = BatchRunner("examples/manifest.csv", "out/")
        summary = asyncio.run(runner.run())   # normally called by the batch flow
        ```
    """

    def __init__(
        self,
        manifest: str,
        output: str,
        *,
        defaults: Optional[RowDefaults] = None,
        concurrency: Optional[ConcurrencySettings] = None,
        polling: Optional[PollingSettings] = None,
        credentials: Any = None,
        storage_options: Optional[dict] = None,
        price_table: Optional[PriceTable] = None,
        max_cost: Optional[float] = None,
        dry_run: bool = False,
        fail_fast: bool = False,
        ambiguous_policy: AmbiguousPolicy = AmbiguousPolicy.RETRY_ONCE,
        frame_limits: Optional[FrameLimits] = None,
        shard_index: int = 0,
        shard_count: int = 1,
        results_name: str = "results.csv",
        reporter: Any = None,
        task_runs: str = "per_step",
    ) -> None:
        from kf2v_tasks.batch.steps import TaskRuns

        self.manifest_url = manifest
        self.output = output.rstrip("/") if "://" in output else output
        self.defaults = defaults or RowDefaults()
        self.concurrency = concurrency or ConcurrencySettings()
        self.polling = polling or PollingSettings()
        self.credentials = credentials
        self.storage_options = storage_options
        self.prices = price_table or PriceTable.default()
        self.max_cost = max_cost
        self.dry_run = dry_run
        self.fail_fast = fail_fast
        self.ambiguous_policy = ambiguous_policy
        self.frame_limits = frame_limits or FrameLimits()
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.results_name = results_name
        self.reporter = reporter
        self.task_runs = TaskRuns(task_runs)
        self.ledger = Ledger(self.output, storage_options=storage_options)
        self.results: dict[int, RowResult] = {}
        self._total = 0

    # -- phase 1: validate everything before the first submit -------------------------
    def steps(self, client: Any):
        """The row steps for this run's ``task_runs`` setting."""
        from kf2v_tasks.batch.steps import PlainSteps, TaskRuns, TaskSteps

        if self.task_runs is TaskRuns.PER_ROW:
            return PlainSteps(self, client)
        return TaskSteps(self, client)

    async def plan(self) -> BatchPlan:
        """Parse the manifest and validate every row and its frames; submit nothing."""
        parsed = await load_manifest(
            self.manifest_url, defaults=self.defaults, storage_options=self.storage_options
        )
        if self.shard_count > 1:
            parsed = _shard(parsed, self.shard_index, self.shard_count)
        plan = BatchPlan(manifest=parsed)

        def invalid(number: int, row_id, code: str, message: str) -> None:
            plan.invalid.append(
                RowResult(
                    row=number,
                    id=row_id,
                    status=RowStatus.INVALID,
                    error_code=code,
                    error_message=message,
                )
            )

        for err in parsed.errors:
            invalid(err.row_number, err.id, "InvalidRow", err.message())
        gate = asyncio.Semaphore(self.concurrency.validate_concurrency)

        async def check(row: ManifestRow) -> None:
            from kf2v_tasks.storage.paths import resolves_outside

            where = f"row {row.row_number}, column"
            if resolves_outside(self.output, output_path(self.output, row)):
                invalid(
                    row.row_number,
                    row.id,
                    "InvalidRow",
                    f"{where} 'output': {row.output!r} leads outside the output folder "
                    "through a symlink",
                )
                return
            async with gate:
                try:
                    pair = await check_pair(
                        row.first_frame,
                        row.last_frame,
                        limits=self.frame_limits,
                        storage_options=self.storage_options,
                    )
                except Kf2vError as exc:
                    column = "last_frame" if getattr(exc, "role", None) == "last" else "first_frame"
                    invalid(row.row_number, row.id, "InvalidFrame", f"{where} {column!r}: {exc}")
                    return
                plan.frames[row.id] = pair
                plan.fingerprints[row.id] = request_fingerprint(
                    pair, row.prompt, row.negative_prompt, row.options
                )

        async def check_all() -> None:
            await asyncio.gather(*(check(r) for r in parsed.rows))

        # One task run gates the whole batch: a task run per row cost ~4 ms of CPU in this
        # process (and more in the API server) for every row, all before the first submit.
        await validate_manifest_task(len(parsed.rows), check_all)
        plan.invalid.sort(key=lambda r: r.row)
        return plan

    # -- phase 2: run -------------------------------------------------------------------
    async def run(self) -> BatchSummary:
        """Validate, estimate, then generate every runnable row; write results.csv."""
        from kf2v_tasks.storage.download import remove_stale_temps

        started = time.monotonic()
        if not self.dry_run:
            await remove_stale_temps(self.output)
        plan = await self.plan()
        rows = plan.runnable
        self._total = plan.manifest.total
        for r in plan.invalid:
            self._finish(r)
        cost = estimate([r.options for r in rows], self.prices)
        logger.info(
            "%d valid rows, %d invalid; estimated cost %.2f %s",
            len(rows),
            len(plan.invalid),
            cost.total,
            cost.currency,
        )
        summary = BatchSummary(
            manifest=self.manifest_url,
            output=self.output,
            total=plan.manifest.total,
            estimated_cost=cost.total,
            currency=cost.currency,
            dry_run=self.dry_run,
        )
        for listener in list(_plan_listeners):
            try:
                listener(plan, cost, self.dry_run)
            except Exception:  # printing the estimate must not break the batch
                logger.exception("plan listener failed")
        if self.reporter:
            await self.reporter.start(plan, cost, self)

        stop_everything = self.fail_fast and plan.invalid
        if self.dry_run or stop_everything:
            status = RowStatus.PLANNED if self.dry_run else RowStatus.NOT_RUN
            for row in rows:
                self._finish(
                    RowResult(
                        row=row.row_number,
                        id=row.id,
                        status=status,
                        output=output_path(self.output, row),
                        cost=estimate_row(row.options, self.prices),
                        error_message=None
                        if self.dry_run
                        else "not run: fail_fast and invalid rows in the manifest",
                    )
                )
        else:
            await self._execute(plan, rows, summary)

        results = sorted(self.results.values(), key=lambda r: r.row)
        summary.counts = BatchSummary.count(results)
        summary.spent = round(sum(r.cost for r in results if r.status is RowStatus.SUCCEEDED), 4)
        summary.skipped = summary.counts.get(RowStatus.SKIPPED.value, 0)
        summary.possible_duplicates = sum(1 for r in results if r.possible_duplicate)
        summary.wall_seconds = round(time.monotonic() - started, 3)
        summary.results_path = await self._write_results(results)
        if self.shard_count > 1:
            await self._write_shard_summary(summary)
        if self.reporter:
            await self.reporter.finish(summary, results)
        return summary

    async def _execute(self, plan: BatchPlan, rows: list[ManifestRow], summary: BatchSummary):
        from kf2v_tasks.tasks import client_scope

        limits = AccountLimits(
            max_in_flight=self.concurrency.max_in_flight,
            submits_per_second=self.concurrency.submits_per_second,
            queries_per_second=self.concurrency.queries_per_second,
        )
        pool = await SlotPool.create(self.concurrency.max_in_flight, self.concurrency.global_limit)
        budget = Budget(self.max_cost)
        # Rows that share a fingerprint are one piece of work: the first generates, the
        # others copy its file.
        leaders: dict[str, asyncio.Future] = {}
        order = await self._resume_order(plan, rows)
        try:
            async with client_scope(None, self.credentials, limits) as client:
                ctx = _RowContext(self, plan, self.steps(client), pool, budget, leaders)
                await asyncio.gather(*(ctx.run_row(row, state) for row, state in order))
        finally:
            await pool.close()
        summary.submitted = ctx.submitted
        summary.reattached = ctx.reattached

    async def _resume_order(self, plan: BatchPlan, rows: list[ManifestRow]):
        """Rows with a live task first (re-attach), then the rest in manifest order."""
        records = await asyncio.gather(*(self.ledger.get(plan.fingerprints[r.id]) for r in rows))
        live, fresh = [], []
        for row, rec in zip(rows, records, strict=True):
            (
                live if rec is not None and rec.task_id and Ledger.is_task_reusable(rec) else fresh
            ).append((row, rec))
        return live + fresh

    def _finish(self, result: RowResult) -> None:
        self.results[result.row] = result
        counts = BatchSummary.count(list(self.results.values()))
        for listener in list(_progress_listeners):
            try:
                listener(result, counts, self._total)
            except Exception:  # a broken progress bar must not break the batch
                logger.exception("progress listener failed")
        if self.reporter:
            self.reporter.row_finished(result, counts, self._total)

    async def _write_shard_summary(self, summary: BatchSummary) -> None:
        from kf2v_tasks.batch.sharding import shard_summary_name
        from kf2v_tasks.storage.download import write_text_atomic
        from kf2v_tasks.storage.paths import join

        path = join(self.output, shard_summary_name(self.shard_index))
        await write_text_atomic(
            path, summary.model_dump_json(indent=2), storage_options=self.storage_options
        )

    async def _write_results(self, results: list[RowResult]) -> str:
        from kf2v_tasks.batch.results import to_csv
        from kf2v_tasks.storage.download import write_text_atomic
        from kf2v_tasks.storage.paths import join

        path = join(self.output, self.results_name)
        await write_text_atomic(path, to_csv(results), storage_options=self.storage_options)
        return path


class _RowContext:
    """What every row coroutine of one run shares."""

    def __init__(self, runner, plan, steps, pool, budget, leaders):
        self.runner: BatchRunner = runner
        self.plan: BatchPlan = plan
        self.steps = steps
        self.pool: SlotPool = pool
        self.budget: Budget = budget
        self.leaders: dict[str, asyncio.Future] = leaders
        self.submitted = 0
        self.reattached = 0

    async def run_row(self, row: ManifestRow, record) -> None:
        r = self.runner
        fp = self.plan.fingerprints[row.id]
        dest = output_path(r.output, row)
        price = estimate_row(row.options, r.prices)
        base = dict(row=row.row_number, id=row.id, output=dest)
        leader = self.leaders.get(fp)
        if leader is not None:
            result = await self._follow(leader, row, dest, base)
            r._finish(result)
            return
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.leaders[fp] = done
        try:
            if self.runner.task_runs is TaskRuns.PER_ROW:
                result = await run_row_task(
                    row.id, lambda: self._generate(row, record, fp, dest, price, base)
                )
            else:
                result = await self._generate(row, record, fp, dest, price, base)
        except Exception as exc:  # never let one row take the batch down
            logger.exception("row %s failed unexpectedly", row.id)
            result = RowResult(
                **base,
                status=RowStatus.FAILED,
                error_code=type(exc).__name__,
                error_message=str(exc)[:500],
            )
        done.set_result(result)
        r._finish(result)

    async def _generate(self, row, record, fp, dest, price, base) -> RowResult:
        r = self.runner
        # Already persisted by an earlier run and still there: nothing to pay, nothing to call.
        # The ledger record was read once for the whole run (_resume_order).
        kept = await find_persisted(
            r.ledger, fp, dest, storage_options=r.storage_options, record=record
        )
        if kept is not None:
            return RowResult(
                **base,
                status=RowStatus.SKIPPED,
                task_id=kept.task_id,
                sha256=kept.sha256,
                bytes=kept.bytes,
                possible_duplicate=bool(record and record.possible_duplicate),
            )
        reattach = bool(record is not None and record.task_id and Ledger.is_task_reusable(record))
        reserved = 0.0
        async with self.pool.slot() as held:
            if not reattach:
                if not self.budget.try_reserve(price):
                    return RowResult(
                        **base,
                        status=RowStatus.OVER_BUDGET,
                        error_code="BudgetExceeded",
                        error_message=(
                            f"not submitted: {price:.2f} more would exceed max_cost "
                            f"{r.max_cost:.2f} (reserved {self.budget.reserved:.2f})"
                        ),
                    )
                reserved = price
            try:
                sub = await self.steps.submit(row, self.plan.frames[row.id], fp)
                if sub.reused:
                    self.reattached += 1
                else:
                    self.submitted += 1
                # Free the slot the moment the task is seen ended, not after its
                # bookkeeping: the next row's create goes out milliseconds sooner.
                watcher = watcher_for(self.steps.client)
                watcher.on_end(sub.task_id, lambda _state: held.release())
                try:
                    state = await self.steps.poll(row, sub)
                finally:
                    watcher.forget(sub.task_id)
            except Exception as exc:
                if reserved:
                    self.budget.release(reserved)  # failed tasks are not billed
                return _failure(base, exc, locals().get("sub"))
        if reserved:
            self.budget.commit(reserved)
        try:
            video = await self.steps.persist(row, state, sub, dest)
        except Exception as exc:  # the task succeeded (and is billed); only keeping it failed
            return _failure(base, exc, sub, cost=price)
        await _emit_persisted(row, video, sub)
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

    async def _follow(self, leader: asyncio.Future, row, dest, base) -> RowResult:
        """A row identical to an earlier one: copy the earlier row's video."""
        from kf2v_tasks.storage.download import copy_video

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
            await copy_video(first.output, dest, storage_options=self.runner.storage_options)
        return RowResult(
            **base,
            status=RowStatus.SUCCEEDED,
            task_id=first.task_id,
            sha256=first.sha256,
            bytes=first.bytes,
            cost=0.0,
        )


def _failure(base: dict, exc: BaseException, sub=None, cost: float = 0.0) -> RowResult:
    message = str(exc)
    history = getattr(exc, "history", None)
    if history:
        message += "; status history: " + ", ".join(
            f"{h.status.value}@{h.seen_at:%H:%M:%S}" for h in history
        )
    return RowResult(
        **base,
        status=RowStatus.FAILED,
        task_id=getattr(sub, "task_id", None) or getattr(exc, "task_id", None),
        error_code=getattr(exc, "code", None) or type(exc).__name__,
        error_message=message[:1000],
        cost=cost,
        # An ambiguous create may have left a billed task behind: say so.
        possible_duplicate=bool(getattr(sub, "possible_duplicate", False))
        or isinstance(exc, AmbiguousCreateError),
    )


async def _emit_persisted(row: ManifestRow, video, sub) -> None:
    """Emit ``kf2v.video.persisted`` so automations can react to each new video."""
    try:
        from prefect.events import emit_event

        emit_event(
            event="kf2v.video.persisted",
            resource={
                "prefect.resource.id": f"kf2v.video.{video.fingerprint or sub.task_id}",
                "prefect.resource.name": row.id,
                "kf2v.row.id": row.id,
            },
            payload={
                "row_id": row.id,
                "row": row.row_number,
                "path": video.path,
                "sha256": video.sha256,
                "bytes": video.bytes,
                "task_id": sub.task_id,
            },
        )
    except Exception:  # events are best effort; the video is already safe
        logger.warning("could not emit kf2v.video.persisted for row %s", row.id, exc_info=True)


def _shard(parsed: ParsedManifest, index: int, count: int) -> ParsedManifest:
    """Keep the rows (and row errors) of one shard: by position, so shards never overlap."""
    if not 0 <= index < count:
        raise ManifestError(0, None, f"shard_index {index} is not in 0..{count - 1}")
    numbers = sorted({r.row_number for r in parsed.rows} | {e.row_number for e in parsed.errors})
    mine = {n for i, n in enumerate(numbers) if i % count == index}
    return parsed.model_copy(
        update={
            "rows": [r for r in parsed.rows if r.row_number in mine],
            "errors": [e for e in parsed.errors if e.row_number in mine],
        }
    )
