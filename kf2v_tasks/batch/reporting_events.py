"""A batch's Prefect events (:mod:`kf2v_tasks.events`), as one observer.

Per row: ``kf2v.video.failed``, ``kf2v.video.possible-duplicate`` and each video as a
Prefect asset; per batch: ``kf2v.budget.exceeded`` and ``kf2v.batch.finished``. A dry run
emits nothing, and a shard run only its rows' events: the parent run reports the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional
from uuid import uuid4

from kf2v_tasks.batch.observer import BatchObserver
from kf2v_tasks.batch.results import BatchSummary, RowResult, RowStatus
from kf2v_tasks.events import (
    MAX_LISTED_ROWS,
    attempt_from_tags,
    emit_batch_finished,
    emit_budget_exceeded,
    emit_possible_duplicate,
    emit_video_asset,
    emit_video_failed,
    is_shard,
)
from kf2v_tasks.redaction import redact_text, redact_url

if TYPE_CHECKING:
    from kf2v_tasks.batch.manifest_row import ManifestRow
    from kf2v_tasks.batch.plan import BatchPlan
    from kf2v_tasks.generation.pricing import CostEstimate

__all__ = ["RETRYABLE_STATUSES", "EventReporter"]

#: Rows a re-run of the batch could make: failed at the service, cancelled, interrupted.
RETRYABLE_STATUSES = frozenset({RowStatus.FAILED, RowStatus.CANCELLED, RowStatus.NOT_RUN})


class EventReporter(BatchObserver):
    """Emits a batch's events as the rows end and once at the end (see the module docstring).

    ``kf2v.batch.finished`` is emitted also when the batch ends Failed;
    ``kf2v.video.persisted`` is emitted by the persist step itself, not here. ``assets``:
    record each video made as a Prefect asset (its frames and audio upstream).
    """

    def __init__(self, *, assets: bool = True) -> None:
        self.assets = assets
        self.batch_id = uuid4().hex  # the flow run's id once one is seen
        self.flow_run_id: Optional[str] = None
        self.attempt = 1
        self.shard = False
        self._dry_run = False
        self._rows: dict[int, ManifestRow] = {}
        self._fingerprints: dict[str, str] = {}
        self._models: set[str] = set()

    def _see_run(self) -> None:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        run = ctx.flow_run if ctx is not None else None
        if run is not None and self.flow_run_id is None:
            self.flow_run_id = self.batch_id = str(run.id)
            self.attempt = attempt_from_tags(run.tags)
            self.shard = is_shard(run.tags)

    async def on_plan(self, plan: BatchPlan, cost: CostEstimate, dry_run: bool) -> None:
        """Note the run, and each row's model, fingerprint and inputs for its events."""
        self._see_run()
        self._dry_run = dry_run
        self._rows = {r.row_number: r for r in plan.runnable}
        self._fingerprints = dict(plan.fingerprints)
        self._models = {r.options.model for r in plan.runnable}

    def on_row(self, result: RowResult, counts: dict[str, int], total: int) -> None:
        """The row's events: failed, possible duplicate, and the video as an asset."""
        if self._dry_run:
            return
        row = self._rows.get(result.row)
        model = row.options.model if row is not None else None
        about = dict(
            output=result.output,
            model=model,
            task_id=result.task_id,
            fingerprint=self._fingerprints.get(result.id or ""),
            row_id=result.id,
            row=result.row,
            batch_id=self.batch_id,
        )
        status = result.status
        if status in (RowStatus.FAILED, RowStatus.CANCELLED):
            emit_video_failed(
                error_code=result.error_code,
                error_message=result.error_message,
                # A failed row costs only if its task succeeded (None: billed, price unknown).
                billed=result.cost is None or result.cost > 0,
                status=status.value,
                cost=result.cost,
                possible_duplicate=result.possible_duplicate,
                **about,
            )
        if result.possible_duplicate and status in (RowStatus.SUCCEEDED, RowStatus.FAILED):
            emit_possible_duplicate(status=status.value, **about)
        if self.assets and status is RowStatus.SUCCEEDED and result.output:
            inputs = [row.first_clip, row.first_frame, row.last_frame, row.audio] if row else []
            emit_video_asset(
                result.output,
                upstream=inputs,
                name=result.id,
                metadata={
                    "sha256": result.sha256,
                    "bytes": result.bytes,
                    "task_id": result.task_id,
                    "model": model,
                    "cost": result.cost,
                    "row": result.row,
                },
            )

    async def on_stopped(self, summary: BatchSummary) -> None:
        """A batch that ended early finishes too: ``kf2v.batch.finished``, Failed."""
        await self.on_finish(summary)

    async def on_finish(self, summary: BatchSummary) -> None:
        """``kf2v.budget.exceeded`` if rows were left out, then ``kf2v.batch.finished``."""
        self._see_run()
        if summary.dry_run or self.shard:
            return
        results = summary.results

        def ids(statuses) -> list[str]:
            return [r.id or str(r.row) for r in results if r.status in statuses][:MAX_LISTED_ROWS]

        facts = dict(
            flow_run_id=self.flow_run_id,
            manifest=redact_url(summary.manifest),
            results_csv=redact_url(summary.results_path),
            currency=summary.currency,
            estimated_cost=summary.estimated_cost,
            spent=summary.spent,
            max_cost=summary.max_cost,
            stopped=redact_text(summary.stopped) if summary.stopped else None,
        )
        models = sorted(self._models)
        if summary.over_budget:
            emit_budget_exceeded(
                batch_id=self.batch_id,
                rows=ids({RowStatus.OVER_BUDGET}),
                output=summary.output,
                models=models,
                **facts,
            )
        retry = [r for r in results if r.status in RETRYABLE_STATUSES]
        emit_batch_finished(
            batch_id=self.batch_id,
            state="Failed"
            if summary.failed or summary.over_budget or summary.stopped
            else "Completed",
            # A re-run needs the run's parameters: only a flow run can be re-run.
            retryable=bool(retry or summary.counts.get("shard_failed"))
            and self.flow_run_id is not None,
            attempt=self.attempt,
            output=summary.output,
            models=models,
            total=summary.total,
            counts=summary.counts,
            failed=summary.failed,
            over_budget=summary.over_budget,
            submitted=summary.submitted,
            reattached=summary.reattached,
            skipped=summary.skipped,
            cancelled=summary.cancelled,
            possible_duplicates=summary.possible_duplicates,
            wall_seconds=summary.wall_seconds,
            failed_rows=ids(RETRYABLE_STATUSES),
            invalid_rows=ids({RowStatus.INVALID}),
            **facts,
        )
