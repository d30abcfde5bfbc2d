"""Prefect-native reporting of a batch: progress, results table and a markdown summary.

Artifact keys may only hold lowercase letters, digits and dashes. Progress updates are
throttled (at most one API call per second) so a 2,000-row batch does not spend its
time reporting.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Optional
from uuid import UUID

from kf2v_tasks.batch.results import BatchSummary, RowResult

if TYPE_CHECKING:
    from kf2v_tasks.batch.runner import BatchPlan, BatchRunner
    from kf2v_tasks.generation.pricing import CostEstimate

logger = logging.getLogger("kf2v_tasks.batch.reporting")


def artifact_key(text: str) -> str:
    """A valid artifact key derived from ``text``."""
    key = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (key or "kf2v")[:100]


class PrefectReporter:
    """Creates and updates the batch's artifacts in the current flow run."""

    def __init__(self, key_prefix: str = "kf2v-batch", min_interval: float = 1.0) -> None:
        self.key_prefix = artifact_key(key_prefix)
        self.min_interval = min_interval
        self._progress_id: Optional[UUID] = None
        self._last_update = 0.0
        self._pending: Optional[asyncio.Task] = None
        self._creating: Optional[asyncio.Future] = None
        self._done = 0
        self._total = 0

    async def start(self, plan: BatchPlan, cost: CostEstimate, runner: BatchRunner) -> None:
        """Create the progress artifact and log the cost estimate."""
        from prefect.artifacts import acreate_progress_artifact
        from prefect.logging import get_run_logger

        self._total = plan.manifest.total
        get_run_logger().info(
            "Manifest %s: %d rows, %d valid, %d invalid. Estimated cost: %.2f %s%s",
            runner.manifest_url,
            plan.manifest.total,
            len(plan.runnable),
            len(plan.invalid),
            cost.total,
            cost.currency,
            " (dry run: nothing will be submitted)" if runner.dry_run else "",
        )
        for err in plan.invalid:
            get_run_logger().warning("Invalid: %s", err.error_message)

        async def create() -> None:
            self._progress_id = await acreate_progress_artifact(
                progress=0.0,
                key=f"{self.key_prefix}-progress",
                description=f"Rows finished of {plan.manifest.total} in {runner.manifest_url}",
            )

        # In the background: the first submit must not wait for an API round trip;
        # updates start once the artifact exists, and finish() waits for it.
        self._creating = asyncio.ensure_future(create())

    def row_finished(self, result: RowResult, counts: dict[str, int], total: int) -> None:
        """Called for every finished row; schedules a throttled progress update."""
        self._done = sum(counts.values())
        self._total = total or self._total
        now = time.monotonic()
        if self._progress_id is None or now - self._last_update < self.min_interval:
            return
        if self._pending is not None and not self._pending.done():
            return
        self._last_update = now
        self._pending = asyncio.ensure_future(self._update())

    async def _update(self) -> None:
        from prefect.artifacts import aupdate_progress_artifact

        if self._progress_id is None or not self._total:
            return
        try:
            await aupdate_progress_artifact(
                self._progress_id, progress=round(100.0 * self._done / self._total, 1)
            )
        except Exception:  # reporting must never fail the batch
            logger.warning("progress artifact update failed", exc_info=True)

    async def finish(self, summary: BatchSummary, results: list[RowResult]) -> None:
        """Final progress, the results table and the markdown summary."""
        from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

        if self._creating is not None:
            try:
                await self._creating
            except Exception:  # reporting must never fail the batch
                logger.warning("progress artifact creation failed", exc_info=True)
        if self._pending is not None:
            await asyncio.gather(self._pending, return_exceptions=True)
        self._done = self._total
        await self._update()
        table = [{k: v for k, v in r.csv_row().items() if k not in ("sha256",)} for r in results]
        await acreate_table_artifact(
            table=table,
            key=f"{self.key_prefix}-results",
            description=f"One line per manifest row ({summary.results_path})",
        )
        await acreate_markdown_artifact(
            markdown=summary_markdown(summary, results),
            key=f"{self.key_prefix}-summary",
            description=summary.headline(),
        )


def summary_markdown(summary: BatchSummary, results: list[RowResult], max_links: int = 50) -> str:
    """The markdown summary: counts, cost, time and links to the outputs."""
    lines = [
        f"# kf2v batch: {summary.headline()}",
        "",
        f"- Manifest: `{summary.manifest}`",
        f"- Output: `{summary.output}`",
        f"- Results: `{summary.results_path}`",
        f"- Submitted {summary.submitted}, re-attached {summary.reattached}, "
        f"skipped (already persisted) {summary.skipped}, possible duplicates "
        f"{summary.possible_duplicates}",
        f"- Cost: estimated {summary.estimated_cost:.2f} {summary.currency}, "
        f"spent {summary.spent:.2f} {summary.currency}",
        f"- Wall time: {summary.wall_seconds:.1f} s",
        "",
        "| status | rows |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(summary.counts.items())],
        "",
    ]
    done = [r for r in results if r.output and r.status.value in ("succeeded", "skipped")]
    if done:
        lines += ["## Videos", ""]
        lines += [f"- [{r.id}]({_link(r.output)})" for r in done[:max_links]]
        if len(done) > max_links:
            lines.append(f"- … and {len(done) - max_links} more in results.csv")
    failed = [r for r in results if r.status.value in ("failed", "invalid")]
    if failed:
        lines += ["", "## Failures", ""]
        lines += [
            f"- row {r.row} `{r.id}`: {r.error_code}: {r.error_message}" for r in failed[:100]
        ]
    return "\n".join(lines) + "\n"


def _link(path: str) -> str:
    return path if "://" in path else f"file://{path}" if path.startswith("/") else path
