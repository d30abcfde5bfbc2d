"""The batch flow: a CSV manifest of frame pairs and prompts, fanned out within the account quota."""

from __future__ import annotations

from typing import Annotated, Optional

from prefect import flow
from prefect.states import Completed, Failed
from pydantic import Field

from kf2v_tasks.batch.manifest import RowDefaults
from kf2v_tasks.batch.reporting import PrefectReporter
from kf2v_tasks.batch.results import BatchSummary
from kf2v_tasks.batch.runner import BatchRunner, ConcurrencySettings, PollingSettings
from kf2v_tasks.batch.sharding import run_shards
from kf2v_tasks.batch.steps import TaskRuns
from kf2v_tasks.generation.pricing import PriceTable
from kf2v_tasks.generation.submit import AmbiguousPolicy
from kf2v_tasks.storage.options import resolve_storage_options


@flow(
    name="kf2v-generate-batch",
    description="Generate one kf2v video per row of a CSV manifest, within the account quota.",
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
    credentials_block: Optional[str] = None,
    storage_block: Optional[str] = None,
    storage_options: Optional[dict] = None,
    price_table: Optional[PriceTable] = None,
    ambiguous_policy: AmbiguousPolicy = AmbiguousPolicy.RETRY_ONCE,
    shards: Annotated[int, Field(ge=1, le=256)] = 1,
    shard_index: Annotated[int, Field(ge=0)] = 0,
    shard_count: Annotated[int, Field(ge=1)] = 1,
    results_name: str = "results.csv",
    task_runs: TaskRuns = TaskRuns.PER_STEP,
):
    """Generate a video for every row of a CSV manifest.

    Every row is validated first (columns, values, ids, output names, the frames
    themselves); invalid rows are reported and never submitted. The cost is estimated
    before anything is spent. Rows already persisted by an earlier run are skipped and
    tasks already submitted are re-attached, so re-running after a crash never pays twice.
    Outputs: ``<output>/<id>.mp4``, ``<output>/<id>.json`` and ``<output>/results.csv``.

    Args:
        manifest: CSV manifest, local path or any fsspec URL (s3://bucket/manifest.csv).
        output: output folder, local path or any fsspec URL.
        defaults: values for the manifest's empty or missing optional columns.
        concurrency: the account quota (tasks in flight, submits/s, queries/s).
        polling: deadlines and polling schedule.
        dry_run: validate and estimate the cost; submit nothing.
        max_cost: stop submitting new rows once this budget would be exceeded.
        fail_fast: if any row is invalid, submit nothing.
        credentials_block: name of a saved DashScopeCredentials block; empty for the
            DASHSCOPE_API_KEY environment variable.
        storage_block: a saved block with storage credentials, as
            '<block-type-slug>/<name>': 'secret/kf2v-s3' (a Secret holding JSON fsspec
            options), 'aws-credentials/prod' or 'remote-file-system/lake' (never put
            secrets in storage_options).
        storage_options: non-secret fsspec options (e.g. an S3 endpoint_url).
        price_table: prices per model and resolution (per generated second).
        ambiguous_policy: after a create whose outcome is unknown: one guarded retry, or fail.
        shards: split the batch into this many shard runs of this deployment, picked up
            by any worker; the account limits hold across them (needs a deployment).
        shard_index: which shard this run handles (set by the parent run; 0-based).
        shard_count: how many shards the manifest is split into (set by the parent run).
        results_name: name of the results file in the output folder.
        task_runs: 'per_step' (default): submit, poll and persist are separate Prefect
            task runs per row; 'per_row': one task run per row, lighter for batches of
            thousands of rows. Either way, one task run validates the whole manifest first.

    Returns:
        A BatchSummary; the flow run ends Failed (with the counts) if any row failed.

    Example:
        ```python
        import asyncio
        from kf2v_flows.batch import generate_batch

        summary = asyncio.run(generate_batch("examples/manifest.csv", "out/example"))
        print(summary.counts)
        ```
    """
    if shards > 1:
        summary = await run_shards(
            manifest,
            output,
            shards,
            storage_options=await resolve_storage_options(storage_block, storage_options),
            parameters=dict(
                defaults=defaults,
                concurrency=concurrency,
                polling=polling,
                dry_run=dry_run,
                max_cost=max_cost,
                fail_fast=fail_fast,
                credentials_block=credentials_block,
                storage_block=storage_block,
                storage_options=storage_options,
                price_table=price_table,
                ambiguous_policy=ambiguous_policy,
                task_runs=task_runs,
            ),
            results_name=results_name,
        )
        return final_state(summary)
    runner = BatchRunner(
        manifest,
        output,
        defaults=defaults,
        concurrency=concurrency,
        polling=polling,
        credentials=credentials_block,
        storage_options=await resolve_storage_options(storage_block, storage_options),
        price_table=price_table,
        max_cost=max_cost,
        dry_run=dry_run,
        fail_fast=fail_fast,
        ambiguous_policy=ambiguous_policy,
        shard_index=shard_index,
        shard_count=shard_count,
        results_name=results_name,
        reporter=PrefectReporter(),
        task_runs=task_runs,
    )
    summary = await runner.run()
    return final_state(summary)


def final_state(summary: BatchSummary):
    """Completed with the summary, or Failed saying how many rows failed."""
    if summary.failed:
        return Failed(
            message=f"{summary.failed} of {summary.total} rows failed; {summary.headline()}",
            data=summary,
        )
    return Completed(message=summary.headline(), data=summary)
