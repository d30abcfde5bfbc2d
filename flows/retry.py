"""Re-run a finished batch for the rows it did not make; the ledger makes it pay only for those.

The ``retry-failed`` deployment (deployments/prefect.yaml) runs this flow when a first run
of a batch ends with rows a re-run could make: its ``kf2v.batch.finished`` event says
``kf2v.batch.retryable: "true"`` and ``kf2v.batch.attempt: "1"``. The flow reads that
batch run's own parameters from the Prefect server (manifest, output, blocks, quota) and
runs the batch flow again with them, as a subflow tagged ``kf2v-attempt:2``: kept videos
are skipped for free, a task still alive is picked up again, and only failed, cancelled
or interrupted rows are created anew. Its own ``kf2v.batch.finished`` says attempt 2,
which the shipped trigger does not match, so a row that keeps failing is tried twice,
not forever.
"""

from __future__ import annotations

from typing import Optional
from uuid import UUID

from prefect import flow, tags
from prefect.client.orchestration import get_client
from prefect.logging import get_run_logger

from kf2v_flows.batch import generate_batch
from kf2v_tasks.batch.results import BatchSummary
from kf2v_tasks.events import attempt_from_tags, attempt_tag

__all__ = ["retry_batch"]

#: The batch flow's parameters that must be there for a run to be a batch run.
_REQUIRED = ("manifest", "output")


@flow(
    name="kf2v-retry-batch",
    description="Run a finished kf2v batch again with its own parameters: only the rows it "
    "did not make are created (and paid for).",
    log_prints=False,
)
async def retry_batch(flow_run_id: str, spent: float = 0.0) -> Optional[BatchSummary]:
    """Run the batch flow run ``flow_run_id`` again, with the same parameters.

    Args:
        flow_run_id: The batch's flow run (the ``flow_run_id`` of its
            kf2v.batch.finished event).
        spent: What that run spent; with max_cost, the re-run gets what is left of it.

    Returns:
        The re-run's BatchSummary, or None when max_cost has nothing left to spend.

    Raises:
        BatchFailedError: rows still failed (or were left out by max_cost) on this attempt.
        ValueError: ``flow_run_id`` is not a run of the batch flow.

    The ``kf2v-retry-failed`` automation starts it on a failed batch; by hand:
    ``await retry_batch(flow_run_id)``.
    """
    log = get_run_logger()
    async with get_client() as client:
        run = await client.read_flow_run(UUID(flow_run_id))
    params = dict(run.parameters)
    if any(params.get(k) is None for k in _REQUIRED):
        raise ValueError(f"flow run {flow_run_id} is not a kf2v batch run (no manifest/output)")
    attempt = attempt_from_tags(run.tags) + 1
    # One run: a shard parent's deployment is not this flow's, and few rows are left.
    params.update(shards=1, dry_run=False)
    if params.get("max_cost") is not None:
        left = round(float(params["max_cost"]) - spent, 4)
        if left <= 0:
            log.warning("Not re-running %s: its max_cost is spent", run.name)
            return None
        params["max_cost"] = left
    log.info("Attempt %d of batch run %s (%s)", attempt, run.name, params["output"])
    with tags(attempt_tag(attempt)):
        return await generate_batch(**params)
