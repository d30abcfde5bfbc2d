"""How a batch runs each row step: as its own Prefect task run, or inside one per row.

``per_step`` (the default) makes submit, poll and persist separate task runs per row:
each is visible, retried and logged on its own in the Prefect UI. Validation is one task
run for the whole manifest in both modes (``validate-frames-<n>-rows``): it gates
the batch, reports every bad row by number, column and reason, and a task run per row
would cost milliseconds of CPU per row before the first submit. ``per_row`` runs the
same plain coroutines inside a single task run per row; a Prefect task run costs
several milliseconds of CPU in the flow process and as much again in the API server,
so for batches of thousands of rows on a small machine that is the lighter choice.
Both build their Prefect tasks once per run (``with_options`` per row is costly too).
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from kf2v_tasks.dashscope.models import FramePair, TaskState
from kf2v_tasks.dashscope.polling import wait_for_task
from kf2v_tasks.generation.persist import PersistedVideo, persist_task_video
from kf2v_tasks.generation.submit import Submission, submit_generation

if TYPE_CHECKING:
    from kf2v_tasks.batch.manifest import ManifestRow
    from kf2v_tasks.batch.runner import BatchRunner


class TaskRuns(str, Enum):
    """Prefect task runs per manifest row."""

    PER_STEP = "per_step"
    PER_ROW = "per_row"


def _extra(runner: BatchRunner, row: ManifestRow) -> dict[str, Any]:
    return {"row": row.row_number, "id": row.id, "manifest": runner.manifest_url}


class TaskSteps:
    """Each step is one Prefect task run (submit-, poll-, persist-<row id>)."""

    def __init__(self, runner: BatchRunner, client: Any) -> None:
        from kf2v_tasks.tasks import persist_video, poll_until_done, submit_kf2v

        self.runner = runner
        self.client = client
        self._submit = submit_kf2v.with_options(task_run_name="submit-{row_id}")
        self._poll = poll_until_done.with_options(task_run_name="poll-{row_id}")
        self._persist = persist_video.with_options(task_run_name="persist-{row_id}")

    async def submit(self, row: ManifestRow, frames: FramePair, fingerprint: str) -> Submission:
        r = self.runner
        return await self._submit(
            frames,
            row.prompt,
            row.negative_prompt,
            row.options,
            ledger_root=r.output,
            storage_options=r.storage_options,
            ambiguous_policy=r.ambiguous_policy,
            row_id=row.id,
            client=self.client,
        )

    async def poll(self, row: ManifestRow, sub: Submission) -> TaskState:
        r = self.runner
        return await self._poll(
            sub.task_id,
            schedule=r.polling.schedule,
            deadline_seconds=r.polling.deadline_seconds,
            queue_deadline_seconds=r.polling.queue_deadline_seconds,
            client=self.client,
            ledger_root=r.output,
            fingerprint=sub.fingerprint,
            storage_options=r.storage_options,
            row_id=row.id,
        )

    async def persist(
        self, row: ManifestRow, state: TaskState, sub: Submission, dest: str
    ) -> PersistedVideo:
        r = self.runner
        return await self._persist(
            state,
            dest,
            submission=sub,
            ledger_root=r.output,
            storage_options=r.storage_options,
            extra=_extra(r, row),
            client=self.client,
            row_id=row.id,
        )


class PlainSteps:
    """The same steps as plain coroutines, for use inside one task run per row."""

    def __init__(self, runner: BatchRunner, client: Any) -> None:
        self.runner = runner
        self.client = client

    async def submit(self, row: ManifestRow, frames: FramePair, fingerprint: str) -> Submission:
        r = self.runner
        return await submit_generation(
            self.client,
            frames,
            row.prompt,
            row.negative_prompt,
            row.options,
            ledger=r.ledger,
            ambiguous_policy=r.ambiguous_policy,
            row_id=row.id,
            storage_options=r.storage_options,
        )

    async def poll(self, row: ManifestRow, sub: Submission) -> TaskState:
        from kf2v_tasks.tasks import record_outcome

        r = self.runner
        try:
            state = await wait_for_task(
                self.client,
                sub.task_id,
                schedule=r.polling.schedule,
                deadline=r.polling.deadline_seconds,
                queue_deadline=r.polling.queue_deadline_seconds,
            )
        except Exception as exc:
            await record_outcome(r.ledger, sub.fingerprint, exc)
            raise
        await record_outcome(r.ledger, sub.fingerprint, state)
        return state

    async def persist(
        self, row: ManifestRow, state: TaskState, sub: Submission, dest: str
    ) -> PersistedVideo:
        r = self.runner
        return await persist_task_video(
            state,
            dest,
            client=self.client,
            submission=sub,
            ledger=r.ledger,
            storage_options=r.storage_options,
            extra=_extra(r, row),
        )


@task(
    name="kf2v row",
    description="Validate-free row pipeline: submit, poll and persist in one task run.",
    cache_policy=NO_CACHE,
    task_run_name="row-{row_id}",
)
async def run_row_task(row_id: str, work: Any) -> Any:
    """One task run for a whole row (``task_runs="per_row"``); ``work`` is the row coroutine."""
    return await work()


@task(
    name="Validate kf2v manifest frames",
    description="Checks every row's frames (type, size, dimensions) before the first submit.",
    cache_policy=NO_CACHE,
    task_run_name="validate-frames-{rows}-rows",
)
async def validate_manifest_task(rows: int, work: Any) -> Any:
    """One task run for the batch's validation; ``work`` checks every row."""
    return await work()
