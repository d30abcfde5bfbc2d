"""Scale-out: split a batch into shard runs of the same deployment and merge their results.

Each shard is a flow run of the deployment that is running now (``run_deployment``),
so any worker of the pool picks it up. The account's tasks-in-flight quota holds across
shards through the Prefect global concurrency limit; the per-second rates are split
evenly between shards so that together they never exceed the account's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from kf2v_tasks.batch.reporting import PrefectReporter
from kf2v_tasks.batch.results import BatchSummary, RowResult, RowStatus, from_csv, to_csv

logger = logging.getLogger("kf2v_tasks.batch.sharding")


def shard_parameters(params: dict[str, Any], index: int, count: int) -> dict[str, Any]:
    """Parameters of shard ``index``: its slice, its results file, its share of the rates."""
    out = dict(params)
    conc = out.get("concurrency")
    if conc is not None:
        data = conc.model_dump() if hasattr(conc, "model_dump") else dict(conc)
        data["submits_per_second"] = data.get("submits_per_second", 2.0) / count
        data["queries_per_second"] = data.get("queries_per_second", 20.0) / count
        out["concurrency"] = data
    out.update(shards=1, shard_index=index, shard_count=count)
    out["results_name"] = shard_results_name(index)
    return {
        k: (v.model_dump(mode="json") if hasattr(v, "model_dump") else v) for k, v in out.items()
    }


async def run_shards(
    manifest: str,
    output: str,
    shards: int,
    *,
    parameters: dict[str, Any],
    storage_options: dict | None = None,
    results_name: str = "results.csv",
) -> BatchSummary:
    """Run ``shards`` flow runs of the current deployment and merge their results.csv.

    ``parameters`` go to the shards and hold nothing secret; ``storage_options`` (which
    may carry credentials resolved from a block) are used only here, to read the shards'
    results and write the merged file. A shard that did not finish, or left no results,
    counts as failed: the merged summary says so and the parent run ends Failed.
    """
    from prefect.deployments import run_deployment
    from prefect.logging import get_run_logger
    from prefect.runtime import deployment

    from kf2v_tasks.storage.download import write_text_atomic
    from kf2v_tasks.storage.paths import join

    log = get_run_logger()
    name = deployment.name
    flow_name = "kf2v-generate-batch"
    if not name:
        raise ValueError(
            "shards > 1 needs a deployment to run the shards on; deploy the flow "
            "(deployments/prefect.yaml) and trigger the deployment"
        )
    started = time.monotonic()
    base = dict(parameters, manifest=manifest, output=output)
    log.info("Splitting %s into %d shard runs of %s/%s", manifest, shards, flow_name, name)
    runs = await asyncio.gather(
        *(
            run_deployment(
                name=f"{flow_name}/{name}",
                parameters=shard_parameters(base, i, shards),
                flow_run_name=f"shard-{i + 1}-of-{shards}",
                timeout=None,
                poll_interval=2,
                as_subflow=True,
            )
            for i in range(shards)
        )
    )
    results: list[RowResult] = []
    broken: list[str] = []
    for i, run in enumerate(runs):
        path = join(output, shard_results_name(i))
        state = run.state
        try:
            results.extend(from_csv(await read_text(path, storage_options=storage_options)))
        except FileNotFoundError:
            broken.append(f"shard {i} ({run.id}) wrote no results: {state and state.message}")
            continue
        # A shard whose rows failed ends Failed but wrote its results: that is accounted
        # for row by row. One that crashed or was cancelled may have left rows undone.
        if state is None or not (state.is_completed() or state.is_failed()):
            broken.append(f"shard {i} ({run.id}) ended {state and state.name}")
    for message in broken:
        log.error(message)
    final = join(output, results_name)
    await write_text_atomic(final, to_csv(results), storage_options=storage_options)
    shard_summaries = []
    for i in range(shards):
        try:
            text = await read_text(
                join(output, shard_summary_name(i)), storage_options=storage_options
            )
            shard_summaries.append(BatchSummary.model_validate_json(text))
        except FileNotFoundError:
            pass
    summary = BatchSummary(
        manifest=manifest,
        output=output,
        results_path=final,
        total=len(results),
        counts=BatchSummary.count(results),
        submitted=sum(s.submitted for s in shard_summaries),
        reattached=sum(s.reattached for s in shard_summaries),
        skipped=sum(1 for r in results if r.status is RowStatus.SKIPPED),
        possible_duplicates=sum(1 for r in results if r.possible_duplicate),
        estimated_cost=round(sum(s.estimated_cost for s in shard_summaries), 4),
        spent=round(sum(r.cost for r in results if r.status is RowStatus.SUCCEEDED), 4),
        currency=shard_summaries[0].currency if shard_summaries else "CNY",
        wall_seconds=round(time.monotonic() - started, 3),
        dry_run=bool(parameters.get("dry_run")),
    )
    if broken:
        summary.counts["shard_failed"] = len(broken)
    log.info("Merged %d shard results: %s", shards, summary.headline())
    await PrefectReporter(key_prefix="kf2v-batch").finish(summary, results)
    return summary


async def read_text(path: str, *, storage_options: dict | None = None) -> str:
    """A small text file from any fsspec URL (FileNotFoundError if missing)."""
    from kf2v_tasks.storage.paths import open_fs, run_sync

    def _read() -> str:
        fs, p = open_fs(path, storage_options)
        return fs.cat_file(p).decode("utf-8")

    return await run_sync(_read)


def shard_results_name(index: int) -> str:
    """Where shard ``index`` writes its results.csv, under the output folder."""
    return f".kf2v/shards/results-{index:03d}.csv"


def shard_summary_name(index: int) -> str:
    """Where shard ``index`` writes its BatchSummary JSON, under the output folder."""
    return f".kf2v/shards/summary-{index:03d}.json"
