"""The batch flow: a CSV manifest of frame pairs and prompts, fanned out within the account quota.

``generate_batch`` is an async flow that a sync parent flow can call too (it then runs to
the end and returns its value). A batch with failed or invalid rows, or rows left
unsubmitted by ``max_cost``, ends Failed with a one-line message by raising
:class:`~kf2v_tasks.errors.BatchFailedError`, whose ``summary`` lists every row
(``summary.over_budget`` counts the rows the budget left out); a parent flow catches it
like any other error.
"""

from __future__ import annotations

from typing import Annotated, Optional, Union

from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from pydantic import Field

from kf2v_tasks._twins import twin_flow
from kf2v_tasks.batch.config import ConcurrencySettings, PollingSettings
from kf2v_tasks.batch.manifest import ExtraColumns, RowDefaults
from kf2v_tasks.batch.reporting import PrefectReporter, run_observer
from kf2v_tasks.batch.results import BatchSummary
from kf2v_tasks.batch.runner import BatchRunner
from kf2v_tasks.batch.runtimes import Order
from kf2v_tasks.batch.sharding import run_shards, shard_from_tags
from kf2v_tasks.batch.steps import TaskRuns
from kf2v_tasks.credentials import DashScopeCredentials, resolve_storage_options
from kf2v_tasks.errors import BatchFailedError
from kf2v_tasks.generation.pricing import PriceTable
from kf2v_tasks.generation.submit import AmbiguousPolicy

__all__ = ["generate_batch"]


@twin_flow(
    name="kf2v-generate-batch",
    description="Generate one video per row of a CSV manifest, within the account quota.",
    log_prints=False,
)
async def generate_batch(
    manifest: str,
    output: str,
    defaults: RowDefaults = RowDefaults(),
    concurrency: ConcurrencySettings = ConcurrencySettings(),
    polling: PollingSettings = PollingSettings(),
    dry_run: bool = False,
    max_cost: Optional[float] = None,
    fail_fast: bool = False,
    credentials_block: Union[
        DashScopeCredentials, str, list[Union[DashScopeCredentials, str]], None
    ] = None,
    storage_block: Optional[str] = None,
    storage_options: Optional[dict] = None,
    price_table: Optional[PriceTable] = None,
    ambiguous_policy: AmbiguousPolicy = AmbiguousPolicy.RETRY_ONCE,
    shards: Annotated[int, Field(ge=1, le=256)] = 1,
    task_runs: TaskRuns = TaskRuns.PER_STEP,
    extra_columns: ExtraColumns = False,
    order: Order = Order.LONGEST,
):
    """Generate a video for every row of a CSV manifest.

    Every row is checked first (columns, values, ids, output names, the frames
    themselves); invalid rows are reported and never submitted, and rows sharing an id
    are all invalid. The cost is estimated, and with max_cost the rows that fit are named,
    before anything is spent. Rows already kept by an earlier run are skipped and tasks
    already submitted are picked up again, so re-running after a crash never pays twice.
    Each row gives a video and a JSON sidecar in the output folder, and results.csv lists
    every row's latest outcome. A dry run writes results.dry-run.csv instead and leaves
    results.csv alone.

    Args:
        manifest: CSV manifest: a local path or any fsspec URL (s3://bucket/manifest.csv).
        output: Output folder: a local path or any fsspec URL.
        defaults: Values for the manifest's empty or missing optional columns.
        concurrency: The account's quota, a lane per model: running tasks and creates
            per second (default: each model's own, from the models table), queries per
            second, and the look-ahead.
        polling: How long to wait for each video, and how often to ask.
        dry_run: Check every row and estimate the cost; submit nothing. The table goes
            to results.dry-run.csv (rows already made show as skipped).
        max_cost: Budget for this run. Rows are counted in manifest order; a row that
            would go over it is not submitted (over_budget), and the run then ends Failed.
        fail_fast: If any row is invalid, submit nothing.
        credentials_block: DashScope credentials: a saved block, or its name, or a list of
            them (an account pool: each account has its own lanes, and a row goes to the
            account whose lane frees first). Empty: the
            DASHSCOPE_API_KEY environment variable of the worker.
        storage_block: A saved block with storage credentials, as type/name:
            secret/kf2v-s3 (a Secret holding JSON fsspec options), aws-credentials/prod
            or remote-file-system/lake. Never put secrets in storage_options.
        storage_options: Non-secret fsspec options, e.g. an S3 endpoint_url.
        price_table: Prices per model and resolution, per generated second; empty for
            Model Studio's, in the region of the credentials (see the README's Cost).
        ambiguous_policy: When a create got no clear answer (the task may exist): retry
            once and report a possible duplicate, or fail the row.
        shards: Split the batch into this many runs of this deployment, picked up by any
            worker; the account quota holds across them. Needs a deployment.
        task_runs: per_step: submit, poll and persist are separate Prefect task runs per
            row. per_row: one task run per row, lighter for thousands of rows.
        extra_columns: Accept manifest columns of your own and copy them into
            results.csv (after its own columns): True for any column, or a list of
            their names (any other unknown column is then still an error, with a
            did-you-mean). Off: an unknown column is an error.
        order: longest: within each model's lane, rows start longest first (predicted
            from duration, resolution and the run times this output has seen), so the
            batch's tail is short. manifest: rows start in manifest order.

    Returns:
        A BatchSummary, with one result per row in ``results``.

    Raises:
        BatchFailedError: some rows failed, were invalid or were left out by max_cost;
            ``.summary`` says which and why (the run ends Failed with a one-line message).
        ManifestFileError: the manifest cannot be used at all (unreadable, a required
            column missing, an unknown column): nothing is submitted.

    Example:
        ```python
        import asyncio
        from prefect import flow
        from kf2v_flows.batch import generate_batch

        summary = asyncio.run(generate_batch("manifest.csv", "out/"))
        assert summary.failed == 0

        @flow
        def nightly():                      # a sync parent gets the summary itself
            return generate_batch("manifest.csv", "out/")

        assert nightly().total == summary.total   # kept rows: nothing is paid again
        ```
    """
    opts = await resolve_storage_options(storage_block, storage_options)
    # A shard run learns its slice from the tag its parent gave it, not from parameters.
    shard_index, shard_count = shard_from_tags(flow_run.tags)
    if shards > 1 and shard_count == 1:
        summary = await run_shards(
            manifest,
            output,
            shards,
            storage_options=opts,
            parameters=dict(
                defaults=defaults,
                concurrency=concurrency,
                polling=polling,
                dry_run=dry_run,
                max_cost=max_cost,
                fail_fast=fail_fast,
                credentials_block=_shareable(credentials_block),
                storage_block=storage_block,
                storage_options=storage_options,
                price_table=price_table,
                ambiguous_policy=ambiguous_policy,
                task_runs=task_runs,
                extra_columns=extra_columns,
                order=order,
            ),
            observer=run_observer(PrefectReporter(storage_options=opts)),
        )
    else:
        runner = BatchRunner(
            manifest,
            output,
            defaults=defaults,
            concurrency=concurrency,
            polling=polling,
            credentials=credentials_block,
            storage_options=opts,
            price_table=price_table,
            max_cost=max_cost,
            dry_run=dry_run,
            fail_fast=fail_fast,
            ambiguous_policy=ambiguous_policy,
            shard_index=shard_index,
            shard_count=shard_count,
            # A shard's gallery would overwrite its siblings': the parent writes the whole one.
            observer=PrefectReporter(storage_options=opts, gallery=shard_count == 1),
            task_runs=task_runs,
            extra_columns=extra_columns,
            order=order,
        )
        summary = await runner.run()
    return _final_state(summary)


def _final_state(summary: BatchSummary):
    """Completed with the summary, or raise: a parent gets a typed error, not a bare state.

    Rows left out by max_cost are not failures of the service, but the batch is not done:
    a run that ended Completed would tell a scheduled pipeline that every video exists.
    """
    if summary.failed or summary.over_budget:
        # Not raised: as a Failed state holding the error, a caller still gets the typed
        # BatchFailedError (a parent flow catches it), and the engine logs no traceback
        # at ERROR for an outcome the run states in one line.
        error = BatchFailedError(summary)
        return Failed(message=str(error), data=error)
    return Completed(message=summary.headline(), data=summary)


def _shareable(credentials):
    """What shard runs on other workers can load: saved blocks' names (or None: the env)."""
    if isinstance(credentials, (list, tuple)):
        return [_shareable(c) for c in credentials]
    if not isinstance(credentials, DashScopeCredentials):
        return credentials or None
    name = getattr(credentials, "_block_document_name", None)
    if not name or getattr(credentials, "_is_anonymous", False):
        raise ValueError(
            "shards > 1 runs the shards on other workers, which cannot receive an unsaved "
            "DashScopeCredentials block: save it first (credentials.save('my-dashscope')) "
            "and pass the saved block or its name"
        )
    return name
