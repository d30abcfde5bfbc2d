"""Scale-out: split a batch into shard runs of the same deployment and merge their results.

Each shard is a flow run of the deployment that is running now, so any worker of the pool
picks it up. A shard learns which slice it runs from its flow-run tag
``kf2v-shard:<i>-of-<n>`` (set by the parent), not from parameters, so the deployment's
form shows nothing internal. The account's tasks-in-flight quota holds across shards
through the Prefect global concurrency limit, and so do the per-second rates (rate-mode
limits, :mod:`~kf2v_tasks.lanes.rates`): each shard is given the account's whole rates and
the server shares them, whether the shards run alone or all at once. A shard that cannot
reach those limits divides the rates by the shard count itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from typing import Any, Optional

from kf2v_tasks.batch.observer import BatchObserver
from kf2v_tasks.batch.results import (
    DRY_RUN_RESULTS_NAME,
    RESULTS_NAME,
    BatchSummary,
    RowResult,
    from_csv,
    row_totals,
    to_csv,
    with_earlier_rows,
)
from kf2v_tasks.storage.files import read_text, write_text_atomic
from kf2v_tasks.storage.paths import join

logger = logging.getLogger("kf2v_tasks.batch.sharding")

#: The batch flow's name: shard runs are runs of its current deployment.
BATCH_FLOW_NAME = "kf2v-generate-batch"

_TAG = re.compile(r"^kf2v-shard:(\d+)-of-(\d+)$")


def shard_tag(index: int, count: int) -> str:
    """The flow-run tag that tells a run it is shard ``index`` (0-based) of ``count``."""
    return f"kf2v-shard:{index}-of-{count}"


def shard_from_tags(tags: Iterable[str]) -> tuple[int, int]:
    """``(index, count)`` from a run's tags; ``(0, 1)`` when it is not a shard.

    Raises:
        ValueError: a shard tag whose index is not in ``0..count-1``.
    """
    for tag in tags:
        m = _TAG.match(tag)
        if m:
            index, count = int(m.group(1)), int(m.group(2))
            if not 0 <= index < count:
                raise ValueError(f"flow-run tag {tag!r}: shard {index} is not in 0..{count - 1}")
            return index, count
    return 0, 1


def results_name_for(index: int, count: int) -> str:
    """Where a run writes its results under the output folder: a shard's own file, or
    ``results.csv``.
    """
    return shard_results_name(index) if count > 1 else RESULTS_NAME


def shard_results_name(index: int) -> str:
    """Where shard ``index`` writes its results.csv, under the output folder."""
    return f".kf2v/shards/results-{index:03d}.csv"


def shard_summary_name(index: int) -> str:
    """Where shard ``index`` writes its BatchSummary JSON, under the output folder."""
    return f".kf2v/shards/summary-{index:03d}.json"


def shard_parameters(params: dict[str, Any], count: int) -> dict[str, Any]:
    """Parameters of a shard run: the parent's, one shard each, and its share of the budget.

    Shards run at once on other workers and cannot see each other's spending, so each
    gets ``max_cost / count``: together they never spend more than the parent's budget.
    The rates stay whole: the server shares them between the shards.
    """
    out = dict(params)
    if out.get("max_cost") is not None:
        out["max_cost"] = out["max_cost"] / count
    out["shards"] = 1
    return {
        k: (v.model_dump(mode="json") if hasattr(v, "model_dump") else v) for k, v in out.items()
    }


async def run_shards(
    manifest: str,
    output: str,
    shards: int,
    *,
    parameters: dict[str, Any],
    storage_options: Optional[dict] = None,
    observer: Optional[BatchObserver] = None,
) -> BatchSummary:
    """Run ``shards`` flow runs of the current deployment and merge their results.

    ``parameters`` go to the shards and hold nothing secret; ``storage_options`` (which
    may carry credentials resolved from a block) are used only here, to read the shards'
    results and write the merged file. A shard that did not finish, or left no results,
    counts as failed: the merged summary says so.

    Raises:
        ValueError: the current run is not a run of a deployment.
    """
    from prefect.deployments.flow_runs import arun_deployment
    from prefect.logging import get_run_logger
    from prefect.runtime import deployment

    log = get_run_logger()
    name = deployment.name
    if not name:
        raise ValueError(
            "shards > 1 needs a deployment to run the shards on; deploy the flow "
            "(deployments/prefect.yaml) and run the deployment"
        )
    started = time.monotonic()
    base = shard_parameters(dict(parameters, manifest=manifest, output=output), shards)
    log.info("Splitting %s into %d shard runs of %s/%s", manifest, shards, BATCH_FLOW_NAME, name)
    runs = await asyncio.gather(
        *(
            arun_deployment(
                name=f"{BATCH_FLOW_NAME}/{name}",
                parameters=base,
                flow_run_name=f"shard-{i + 1}-of-{shards}",
                tags=[shard_tag(i, shards)],
                timeout=None,
                poll_interval=2,
                as_subflow=True,
            )
            for i in range(shards)
        )
    )
    results: list[RowResult] = []
    broken: list[str] = []
    shard_summaries: list[BatchSummary] = []
    for i, run in enumerate(runs):
        state = run.state
        try:
            text = await read_text(
                join(output, shard_results_name(i)), storage_options=storage_options
            )
        except FileNotFoundError:
            broken.append(f"shard {i} ({run.id}) wrote no results: {state and state.message}")
            continue
        results.extend(from_csv(text))
        # A shard whose rows failed ends Failed but wrote its results: that is accounted
        # for row by row. One that crashed or was cancelled may have left rows undone.
        if state is None or not (state.is_completed() or state.is_failed()):
            broken.append(f"shard {i} ({run.id}) ended {state and state.name}")
        try:
            text = await read_text(
                join(output, shard_summary_name(i)), storage_options=storage_options
            )
            shard_summaries.append(BatchSummary.model_validate_json(text))
        except FileNotFoundError:
            pass
    for message in broken:
        log.error(message)
    results.sort(key=lambda r: r.row)
    # A rehearsal never replaces a real run's results.csv.
    name = DRY_RUN_RESULTS_NAME if parameters.get("dry_run") else RESULTS_NAME
    final = join(output, name)
    # Rows of an earlier run that this manifest has none for are kept (marked so).
    kept = await with_earlier_rows(output, name, results, storage_options=storage_options)
    await write_text_atomic(final, to_csv(kept), storage_options=storage_options)
    summary = BatchSummary(
        manifest=manifest,
        output=output,
        results_path=final,
        total=len(results),
        **row_totals(results),
        submitted=sum(s.submitted for s in shard_summaries),
        reattached=sum(s.reattached for s in shard_summaries),
        estimated_cost=round(sum(s.estimated_cost for s in shard_summaries), 4),
        currency=shard_summaries[0].currency if shard_summaries else "CNY",
        wall_seconds=round(time.monotonic() - started, 3),
        dry_run=bool(parameters.get("dry_run")),
        max_cost=parameters.get("max_cost"),
        results=results,
    )
    if broken:
        summary.counts["shard_failed"] = len(broken)
    log.info("Merged %d shard results: %s", shards, summary.headline())
    if observer is not None:
        await observer.on_finish(summary)
    return summary
