"""How a batch runs each row step: as its own Prefect task run, or inside one per row.

The steps are the plain generation functions (submit, wait, persist) with the run's one
client and its :class:`~kf2v_tasks.batch.config.RowConfig`; they never see the runner.

``per_step`` (the default) makes submit, poll and persist separate task runs per row
(``submit-<row id>``, ``poll-…``, ``persist-…``): each is visible and logged on its own in
the Prefect UI. ``per_row`` runs the same coroutines inside one task run per row
(``row-<row id>``): a Prefect task run costs several milliseconds of CPU in the flow
process and as much again in the API server, so for batches of thousands of rows on a
small machine that is the lighter choice. Validation is one task run for the whole
manifest in both modes (``validate-frames-<n>-rows``).

The step tasks are private and take ``(row_id, work)``: they await the closure. The
public tasks of :mod:`kf2v_tasks.tasks` are not used here: they open a client per call
and create an artifact per video, which a 10,000-row batch must not pay for. Retries
happen in one layer, the client's, as for the public tasks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, Generic, Optional, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from kf2v_tasks.batch.config import RowConfig
from kf2v_tasks.batch.manifest_row import ManifestRow
from kf2v_tasks.dashscope.polling import wait_for_task
from kf2v_tasks.dashscope.task_state import TaskState
from kf2v_tasks.errors import QueueTimeoutError
from kf2v_tasks.events import emit_video_persisted
from kf2v_tasks.generation.ledger import UNREAD
from kf2v_tasks.generation.models import FramePair
from kf2v_tasks.generation.outcome import record_outcome
from kf2v_tasks.generation.persist import persist_task_video
from kf2v_tasks.generation.persisted import PersistedVideo
from kf2v_tasks.generation.submit import Submission, submit_generation

T = TypeVar("T")
Work = Callable[[], Awaitable[T]]


class TaskRuns(str, Enum):
    """Prefect task runs per manifest row."""

    PER_STEP = "per_step"
    PER_ROW = "per_row"


class RowSteps:
    """Submit, poll and persist one row as plain coroutines (``per_row`` mode, and the core)."""

    def __init__(self, config: RowConfig, client: Any) -> None:
        self.config = config
        self.client = client
        #: Each lane's look-ahead (lanes.lookahead.LookAhead), by model: told every task's
        #: status, and the clock that says when a queued task is late.
        self.look_aheads: dict[str, Any] = {}
        #: The account this run creates on: its label goes into the ledger (a re-run polls
        #: there), its name (the block's, never key material) into each sidecar.
        self.account: Optional[str] = None
        self.account_name: Optional[str] = None

    def _extra(self, row: ManifestRow) -> dict[str, Any]:
        """What the sidecar says about the row it came from."""
        extra = {"row": row.row_number, "id": row.id, "manifest": self.config.manifest_url}
        if self.account_name:
            extra["account"] = self.account_name
        return extra

    async def submit(
        self, row: ManifestRow, frames: FramePair, fingerprint: str, record: Any = UNREAD
    ) -> Submission:
        """Create the row's remote task, or re-attach to the one the ledger knows.

        ``record``: the row's ledger record as the plan read it (``None``: it had none),
        which spares a read before the claim; the record is read again under the claim.
        """
        c = self.config
        sub = await submit_generation(
            self.client,
            frames,
            row.prompt,
            row.negative_prompt,
            row.options,
            ledger=c.ledger,
            ambiguous_policy=c.ambiguous_policy,
            row_id=row.id,
            storage_options=c.storage_options,
            record=record,
            account=self.account,
        )
        ahead = self.look_aheads.get(row.options.model)
        if ahead is not None and sub.already_persisted_at is None:
            ahead.seen(sub.task_id, "PENDING")  # until a poll says otherwise
        return sub

    async def poll(self, row: ManifestRow, sub: Submission) -> TaskState:
        """Wait for the task to end; record how it ended so a dead task is never reused."""
        c = self.config
        ahead = self.look_aheads.get(row.options.model)

        async def tell(state: TaskState) -> None:
            if ahead is not None:
                ahead.seen(state.task_id, state.status)

        try:
            state = await wait_for_task(
                self.client,
                sub.task_id,
                schedule=c.polling.schedule,
                deadline=c.polling.deadline_seconds,
                queue_deadline=c.polling.queue_deadline_seconds,
                on_status=tell,
                queue_clock=ahead,
            )
        except Exception as exc:
            if ahead is not None:
                ahead.seen(sub.task_id, "UNKNOWN")  # ended, as far as we wait
                if isinstance(exc, QueueTimeoutError):
                    ahead.fall_back(f"task {sub.task_id} was queued and never started")
            await record_outcome(c.ledger, sub.fingerprint, exc)
            raise
        # A success is written with "persisted", which the batch's persist step does next.
        await record_outcome(c.ledger, sub.fingerprint, state, persist_follows=True)
        return state

    async def persist(
        self, row: ManifestRow, state: TaskState, sub: Submission, dest: str
    ) -> PersistedVideo:
        """Keep the video and its sidecar at ``dest``, then emit ``kf2v.video.persisted``."""
        c = self.config
        video = await persist_task_video(
            state,
            dest,
            client=self.client,
            submission=sub,
            ledger=c.ledger,
            storage_options=c.storage_options,
            extra=self._extra(row),
            price_table=c.prices,
        )
        emit_video_persisted(video, row_id=row.id, row=row.row_number)
        return video


class _Out(Generic[T]):
    """A step task's return value, opaque to Prefect.

    Prefect walks a task's return value (pydantic fields, lists, dicts) to link it to the
    task run for dependency tracking; our steps' values are never passed to another task,
    so that walk (≈0.1 ms of CPU per task run, three per row) is skipped by handing
    Prefect an object it does not look into.
    """

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value


class TaskSteps(RowSteps):
    """The same steps, each one Prefect task run (``submit-``, ``poll-``, ``persist-<row id>``)."""

    async def submit(
        self, row: ManifestRow, frames: FramePair, fingerprint: str, record: Any = UNREAD
    ) -> Submission:
        """:meth:`RowSteps.submit` as the task run ``submit-<row id>``."""
        work = super().submit
        return (await _submit_step(row.id, lambda: work(row, frames, fingerprint, record))).value

    async def poll(self, row: ManifestRow, sub: Submission) -> TaskState:
        """:meth:`RowSteps.poll` as the task run ``poll-<row id>``."""
        work = super().poll
        return (await _poll_step(row.id, lambda: work(row, sub))).value

    async def persist(
        self, row: ManifestRow, state: TaskState, sub: Submission, dest: str
    ) -> PersistedVideo:
        """:meth:`RowSteps.persist` as the task run ``persist-<row id>``."""
        work = super().persist
        return (await _persist_step(row.id, lambda: work(row, state, sub, dest))).value


def make_steps(task_runs: TaskRuns, config: RowConfig, client: Any) -> RowSteps:
    """The row steps for ``task_runs``: task runs per step, or plain (inside one per row)."""
    return RowSteps(config, client) if task_runs is TaskRuns.PER_ROW else TaskSteps(config, client)


# The step tasks run the closure they are given; NO_CACHE because a closure has no stable
# cache key, and idempotency comes from the ledger, not from Prefect's result cache. For
# the same reason no result is ever persisted (persist_result=False), whatever
# PREFECT_RESULTS_PERSIST_BY_DEFAULT says: a result file per task run would be pure cost.


@task(
    name="kf2v submit",
    description="Creates the row's kf2v task, or re-attaches to the one already created.",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="submit-{row_id}",
)
async def _submit_step(row_id: str, work: Work[Submission]) -> _Out[Submission]:
    sub = await work()
    log = get_run_logger()
    log.info("%s task %s", "Re-attached to" if sub.reused else "Created", sub.task_id)
    if sub.possible_duplicate:
        log.warning("Task %s may be a duplicate (after an ambiguous create)", sub.task_id)
    return _Out(sub)


@task(
    name="kf2v poll",
    description="Waits for the row's kf2v task to end, within the polling deadlines.",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="poll-{row_id}",
)
async def _poll_step(row_id: str, work: Work[TaskState]) -> _Out[TaskState]:
    return _Out(await work())


@task(
    name="kf2v persist",
    description="Streams the row's video and its JSON sidecar to the output folder.",
    cache_policy=NO_CACHE,
    persist_result=False,
    cache_result_in_memory=False,
    task_run_name="persist-{row_id}",
)
async def _persist_step(row_id: str, work: Work[PersistedVideo]) -> _Out[PersistedVideo]:
    return _Out(await work())


@task(
    name="kf2v row",
    description="Submits, polls and persists one manifest row in one task run.",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="row-{row_id}",
)
async def run_row_task(row_id: str, work: Work[Any]) -> Any:
    """One task run for a whole row (``task_runs="per_row"``); awaits ``work()``."""
    return await work()


@task(
    name="Validate kf2v manifest frames",
    description="Checks every row's frames (type, size, dimensions) before the first submit.",
    cache_policy=NO_CACHE,
    task_run_name="validate-frames-{rows}-rows",
)
async def validate_manifest_task(rows: int, work: Work[Any]) -> Any:
    """One task run for the batch's validation: the ``gate`` of :func:`plan_batch`."""
    return await work()
