"""A run's rows fanned out over its accounts' lanes, and what an early stop leaves behind.

Every account opens its lanes and its client, every row runs as its own coroutine
(:meth:`~kf2v_tasks.batch.row_lifecycle.RowLifecycle.run_row`), and when the run stops
early the tasks queued ahead that never started are cancelled (free) and our claims given
back, so a re-run re-attaches to what was created and pays for nothing twice.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Container
from typing import Any, Optional

from kf2v_tasks.batch.manifest_row import ManifestRow
from kf2v_tasks.batch.plan import BatchPlan, row_base
from kf2v_tasks.batch.results import RowResult, RowStatus
from kf2v_tasks.batch.row_lifecycle import RowLifecycle
from kf2v_tasks.batch.steps import TaskRuns, make_steps
from kf2v_tasks.batch.stopping import run_rows
from kf2v_tasks.credentials import MissingCredentialsError
from kf2v_tasks.generation.claims import release_claim

__all__ = ["fan_out", "unfinished_results"]

# The runner's logger: what the fan-out logs, the run says.
logger = logging.getLogger("kf2v_tasks.batch.runner")


async def fan_out(
    rows: RowLifecycle,
    order: list[tuple[ManifestRow, Any]],
    *,
    task_runs: TaskRuns,
    shard_count: int,
) -> None:
    """Run every row of ``order`` in its model's lane on ``rows.pool``; keep what was learned."""
    pool, plan, config = rows.pool, rows.plan, rows.config
    models = list(dict.fromkeys(r.options.model for r in plan.runnable))
    try:
        await pool.open(models, shard_count)
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
            for acct in pool.accounts:
                acct.client = await stack.enter_async_context(
                    acct.credentials.get_client(limits=acct.limits)
                )
                acct.steps = make_steps(task_runs, config, acct.client)
                acct.steps.look_aheads = acct.aheads
                acct.steps.account = acct.label
                acct.steps.account_name = acct.name
                # Known from the create answer on, not from the submit step's return: a
                # stop landing in between must still cancel it.
                acct.client.created_hooks.append(lambda state, a=acct: rows.created(a, state))

            async def stopped_early() -> None:
                # Ctrl-C, SIGTERM, a Prefect cancellation, a row that raised: once every
                # row has stopped and the creates on the wire have answered, the tasks
                # queued ahead never started; cancelled now, they cost nothing.
                try:
                    for acct in pool.accounts:
                        await acct.client.settle_creates()
                    await rows.record_created()
                    for acct in pool.accounts:
                        for ahead in acct.aheads.values():
                            await ahead.cancel_pending(acct.client)
                finally:
                    # The ledger keeps every task created; a re-run re-attaches by it
                    # and must find no claim of ours in its way.
                    for fp in set(plan.fingerprints.values()):
                        await release_claim(config.ledger, fp)

            await run_rows((rows.run_row(row, rec) for row, rec in order), stopped_early)
    finally:
        await pool.close()
        if rows.learned:
            try:
                await rows.history.save(config.output, config.storage_options)
            except Exception as exc:  # only the next run's order suffers
                logger.warning("could not keep this run's task run times: %s", exc)


def unfinished_results(
    plan: BatchPlan,
    output: str,
    finished: Container[int],
    rows: Optional[RowLifecycle],
    cancelled: set[str],
    exc: BaseException,
) -> list[RowResult]:
    """What results.csv says of each row an early stop (``exc``) cut short.

    ``cancelled`` if its task was queued ahead and cancelled (not billed), else ``not_run``:
    a task it created may still run, and the next run re-attaches to it.
    """
    created = {row.id: tid for tid, row in (rows.tasks.items() if rows else ())}
    out = []
    for row in plan.runnable:
        if row.row_number in finished:
            continue
        base = row_base(output, row)
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
        out.append(result)
    return out
