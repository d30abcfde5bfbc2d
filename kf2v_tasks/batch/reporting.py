"""The batch's Prefect artifacts and gallery, as one observer.

:class:`PrefectReporter` turns the runner's calls into Prefect artifacts (progress, a
results table, a markdown summary, the posters), keeps the output folder's gallery
(``index.html``, :mod:`kf2v_tasks.batch.gallery`) up to date, and runs an
:class:`~kf2v_tasks.batch.reporting_events.EventReporter` unless told not to. The observer
interface is :mod:`kf2v_tasks.batch.observer`; the artifacts' text (every value from users
or the service escaped) is :mod:`kf2v_tasks.batch.reporting_markdown`.

Links in artifacts are ones a browser can follow from the Prefect UI: ``s3://`` videos,
posters and the gallery are linked by presigned HTTPS URLs, and the summary says when
they expire; a local file is shown as its path, as text (a ``file://`` link from an http
page is blocked by every browser). Progress updates are throttled (at most one API call
per second) so a 10,000-row batch does not spend its time reporting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional
from uuid import UUID

from kf2v_tasks.background import spawn
from kf2v_tasks.batch.gallery import GalleryWriter, write_gallery
from kf2v_tasks.batch.observer import BatchObserver, observing, run_observer
from kf2v_tasks.batch.reporting_events import EventReporter
from kf2v_tasks.batch.reporting_markdown import (
    artifact_key,
    link_target,
    results_table,
    summary_markdown,
)
from kf2v_tasks.batch.results import MADE_STATUSES, BatchSummary, RowResult
from kf2v_tasks.redaction import md_escape, redact_url
from kf2v_tasks.storage.presign import (
    DEFAULT_EXPIRY_SECONDS,
    PresignedUrl,
    can_presign,
    presign_many,
)

if TYPE_CHECKING:
    from kf2v_tasks.batch.plan import BatchPlan
    from kf2v_tasks.generation.pricing import CostEstimate

__all__ = [
    "MAX_IMAGE_ARTIFACTS",
    "PRESIGNED_GALLERY_NAME",
    "BatchObserver",
    "PrefectReporter",
    "observing",
    "run_observer",
]

logger = logging.getLogger("kf2v_tasks.batch.reporting")


@contextlib.contextmanager
def _logged(*message: Any) -> Iterator[None]:
    """A failure inside is logged with ``message``: reporting must never fail the batch."""
    try:
        yield
    except Exception:
        logger.warning(*message, exc_info=True)


#: Posters shown as image artifacts (S3 outputs), first rows first: one artifact each.
MAX_IMAGE_ARTIFACTS = 12
#: The gallery with presigned links, written beside index.html for S3 outputs.
PRESIGNED_GALLERY_NAME = "index.presigned.html"


class PrefectReporter(BatchObserver):
    """Creates and updates the batch's artifacts in the current flow run, and its gallery.

    Args:
        min_interval: seconds between two progress updates (and two gallery rewrites).
        storage_options: fsspec options of the output folder (to write the gallery and
            presign links to S3 objects).
        gallery: keep ``index.html`` up to date (not in dry runs).
        link_expiry: seconds the presigned links of S3 outputs work (at most 7 days).
        events: emit the batch's Prefect events (an :class:`EventReporter`); ``assets``:
            with them, record each video made as a Prefect asset.
    """

    def __init__(
        self,
        key_prefix: str = "kf2v-batch",
        min_interval: float = 1.0,
        *,
        storage_options: Optional[dict] = None,
        gallery: bool = True,
        link_expiry: int = DEFAULT_EXPIRY_SECONDS,
        events: bool = True,
        assets: bool = True,
    ) -> None:
        self.key_prefix = artifact_key(key_prefix)
        self.events = EventReporter(assets=assets) if events else None
        self.min_interval = min_interval
        self.storage_options = storage_options
        self.link_expiry = link_expiry
        self.gallery = (
            GalleryWriter(storage_options, min_interval=min_interval) if gallery else None
        )
        self._progress_id: Optional[UUID] = None
        self._last_update = 0.0
        self._pending: Optional[asyncio.Task] = None
        self._creating: Optional[asyncio.Future] = None
        self._done = 0
        self._total = 0

    async def on_plan(self, plan: BatchPlan, cost: CostEstimate, dry_run: bool) -> None:
        """Log the plan and the estimate, and create the progress artifact."""
        from prefect.artifacts import acreate_progress_artifact
        from prefect.logging import get_run_logger

        log = get_run_logger()
        source = redact_url(plan.manifest.source)
        self._total = plan.manifest.total
        log.info(
            "Manifest %s: %d rows, %d valid, %d invalid. Estimated cost: %.2f %s%s%s",
            source,
            plan.manifest.total,
            len(plan.runnable),
            len(plan.invalid),
            cost.total,
            cost.currency,
            cost.notes(),
            " (dry run: nothing will be submitted)" if dry_run else "",
        )
        if cost.warning:  # once, before anything is paid
            log.warning("Region: %s", cost.warning)
        budget = plan.budget_line(cost.currency)
        if budget:  # before the first create: which rows fit max_cost, which will not
            (log.warning if plan.over_budget else log.info)("Budget: %s", budget)
        for warning in plan.manifest.warnings:
            log.warning("Manifest: %s", warning)
        for err in plan.invalid:
            log.warning("Invalid: %s", err.error_message)

        async def create() -> None:
            self._progress_id = await acreate_progress_artifact(
                progress=0.0,
                key=f"{self.key_prefix}-progress",
                description=f"Rows finished of {plan.manifest.total} in {md_escape(source)}",
            )

        # In the background: the first submit must not wait for an API round trip;
        # updates start once the artifact exists, and on_finish waits for it.
        self._creating = spawn(create(), name="kf2v-progress-artifact")
        if self.events is not None:
            await self.events.on_plan(plan, cost, dry_run)
        if self.gallery is not None:
            with _logged("writing the gallery failed"):
                await self.gallery.on_plan(plan, cost, dry_run)

    def on_row(self, result: RowResult, counts: dict[str, int], total: int) -> None:
        """Schedule a throttled progress update (and gallery rewrite); the row's events."""
        if self.events is not None:
            with _logged("emitting the row's events failed"):
                self.events.on_row(result, counts, total)
        if self.gallery is not None:
            with _logged("gallery update failed"):
                self.gallery.on_row(result, counts, total)
        self._done = sum(counts.values())
        self._total = total or self._total
        now = time.monotonic()
        if self._progress_id is None or now - self._last_update < self.min_interval:
            return
        if self._pending is not None and not self._pending.done():
            return
        self._last_update = now
        self._pending = spawn(self._update(), name="kf2v-progress-update")

    async def _update(self) -> None:
        from prefect.artifacts import aupdate_progress_artifact

        if self._progress_id is None or not self._total:
            return
        with _logged("progress artifact update failed"):
            await aupdate_progress_artifact(
                self._progress_id, progress=round(100.0 * self._done / self._total, 1)
            )

    async def on_stopped(self, summary: BatchSummary) -> None:
        """A batch that ended early: its events (the artifacts wait for a run that ends)."""
        if self.events is not None:
            await self.events.on_stopped(summary)

    async def on_finish(self, summary: BatchSummary) -> None:
        """The batch's events; final progress, the gallery, the results table, the summary,
        links to the gallery and results.csv, and the posters."""
        from prefect.artifacts import (
            acreate_image_artifact,
            acreate_markdown_artifact,
            acreate_table_artifact,
        )

        if self.events is not None:
            with _logged("emitting the batch's events failed"):
                await self.events.on_finish(summary)

        if self._creating is not None:
            with _logged("progress artifact creation failed"):
                await self._creating
        if self._pending is not None:
            await asyncio.gather(self._pending, return_exceptions=True)
        self._done = self._total = self._total or summary.total
        await self._update()
        gallery_path: Optional[str] = None
        if self.gallery is not None and not summary.dry_run:
            with _logged("writing the gallery failed"):
                await self.gallery.on_finish(summary)
                gallery_path = self.gallery.path
        links: dict[str, PresignedUrl] = {}
        if can_presign(summary.output) and not summary.dry_run:
            # No links is better than no summary.
            with _logged("presigning links to the outputs failed"):
                links, gallery_path = await self._presigned(summary, gallery_path)
        await acreate_table_artifact(
            table=results_table(summary.results, summary.output),
            key=f"{self.key_prefix}-results",
            description=f"One line per manifest row ({md_escape(summary.results_path or '')})",
        )
        await acreate_markdown_artifact(
            markdown=summary_markdown(summary, links=links, gallery=gallery_path),
            key=f"{self.key_prefix}-summary",
            description=md_escape(summary.headline()),
        )
        if not summary.dry_run:  # a rehearsal has no gallery and no results.csv
            await self._links(summary, links, gallery_path)
        for row, poster in self._posters(summary, links):
            await acreate_image_artifact(
                image_url=poster.url,
                key=f"{self.key_prefix}-poster-row-{row.row}",
                description=f"Poster of {md_escape(row.id or row.row)} (row {row.row}); "
                f"the link expires at {poster.expiry_text()}",
            )

    async def _links(
        self, summary: BatchSummary, links: dict[str, PresignedUrl], gallery_path: Optional[str]
    ) -> None:
        """Link artifacts to the gallery and to results.csv (presigned on S3)."""
        from prefect.artifacts import acreate_link_artifact

        results = summary.results_path
        if results and can_presign(results) and results not in links:
            with _logged("presigning results.csv failed"):  # the path is still in the summary
                (signed,) = await presign_many(
                    [results], storage_options=self.storage_options, expires_in=self.link_expiry
                )
                links = {**links, results: signed}
        targets = [("gallery", gallery_path, "Open the gallery")]
        targets.append(("results-csv", results, "results.csv"))
        for name, path, text in targets:
            target = link_target(path, links) if path else None
            if target is None or path is None:
                continue
            note = md_escape(path)
            if path in links:
                note += f"; the link expires at {links[path].expiry_text()}"
            elif target.startswith("file:"):
                note += "; a local file: browsers open it when pasted in the address bar"
            # A link is a convenience; the summary has the path.
            with _logged("the %s link artifact failed", name):
                await acreate_link_artifact(
                    link=target,
                    link_text=text,
                    key=f"{self.key_prefix}-{name}",
                    description=note,
                )

    def _made(self, summary: BatchSummary) -> list[RowResult]:
        return [r for r in summary.results if r.output and r.status in MADE_STATUSES]

    async def _presigned(
        self, summary: BatchSummary, gallery_path: Optional[str]
    ) -> tuple[dict[str, PresignedUrl], Optional[str]]:
        """Presigned links to every video, poster and strip, and to a gallery that uses them.

        ``index.html`` links relative paths, which a presigned URL of it cannot follow in
        a private bucket; ``index.presigned.html`` beside it links presigned URLs instead
        (valid as long as its own link). Returns the links and the gallery to point to.
        """
        opts = self.storage_options
        paths = [r.output or "" for r in self._made(summary)]
        if self.gallery is not None and gallery_path:
            paths = self.gallery.files()
        signed = await presign_many(
            [p for p in dict.fromkeys(paths) if can_presign(p)],
            storage_options=opts,
            expires_in=self.link_expiry,
        )
        links = {link.source: link for link in signed}
        if self.gallery is None or not gallery_path:
            return links, gallery_path
        cards = await self.gallery.cards(link=lambda _root, p: links[p].url if p in links else None)
        page = self.gallery.render(cards, summary.headline())
        shared = await write_gallery(
            summary.output, page, storage_options=opts, name=PRESIGNED_GALLERY_NAME
        )
        (page_link,) = await presign_many(
            [shared], storage_options=opts, expires_in=self.link_expiry
        )
        links[shared] = page_link
        return links, shared

    def _posters(
        self, summary: BatchSummary, links: dict[str, PresignedUrl]
    ) -> list[tuple[RowResult, PresignedUrl]]:
        """The first rows' posters that have a presigned link (image artifacts)."""
        if self.gallery is None:
            return []
        out = []
        for r in self._made(summary):
            poster = self.gallery.poster_of(r.row)
            if poster and poster in links:
                out.append((r, links[poster]))
            if len(out) >= MAX_IMAGE_ARTIFACTS:
                break
        return out
