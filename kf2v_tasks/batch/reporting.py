"""Reporting a batch as one observer: the plan, each finished row, and the final summary.

The runner calls one :class:`BatchObserver`. :class:`PrefectReporter` turns the calls into
Prefect artifacts (progress, a results table, a markdown summary, the posters) and keeps
the output folder's gallery (``index.html``, :mod:`kf2v_tasks.batch.gallery`) up to date;
the CLI's progress bar registers itself for the whole process with :func:`observing`,
because a flow cannot take a callable as a parameter. An observer that fails is logged
and ignored: reporting never fails a batch.

Links in artifacts are ones a browser can follow from the Prefect UI: ``s3://`` videos,
posters and the gallery are linked by presigned HTTPS URLs, and the summary says when
they expire; a local file is shown as its path, as text (a ``file://`` link from an http
page is blocked by every browser). Posters of S3 outputs are also image artifacts.

The Prefect UI renders artifact descriptions, markdown artifacts and the string cells of
table artifacts as markdown, so text that comes from users or from the service (ids,
paths, error messages) goes through :func:`md_escape` first. Artifact keys may only hold
lowercase letters, digits and dashes (:func:`artifact_key`). Progress updates are
throttled (at most one API call per second) so a 10,000-row batch does not spend its time
reporting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import quote
from uuid import UUID

from kf2v_tasks.batch.gallery import GalleryWriter, write_gallery
from kf2v_tasks.batch.results import FAILED_STATUSES, BatchSummary, RowResult, RowStatus
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

logger = logging.getLogger("kf2v_tasks.batch.reporting")

#: Longest error text shown in a results-table cell (results.csv has the whole message).
ERROR_CELL_CHARS = 120
#: Posters shown as image artifacts (S3 outputs), first rows first: one artifact each.
MAX_IMAGE_ARTIFACTS = 12
#: The gallery with presigned links, written beside index.html for S3 outputs.
PRESIGNED_GALLERY_NAME = "index.presigned.html"


class BatchObserver:
    """Told what a batch does; every method is a no-op here, override the ones you need.

    Example:
        ```python
        from kf2v_tasks.batch.reporting import BatchObserver, observing

        class Printer(BatchObserver):
            def on_row(self, result, counts, total):
                print(f"{sum(counts.values())}/{total}: row {result.row} {result.status.value}")

        with observing(Printer()):
            summary = asyncio.run(generate_batch("manifest.csv", "out/"))
        ```
    """

    async def on_plan(self, plan: BatchPlan, cost: CostEstimate, dry_run: bool) -> None:
        """Every row is validated and the cost estimated; nothing is spent yet."""

    def on_row(self, result: RowResult, counts: dict[str, int], total: int) -> None:
        """A row finished (``counts``: rows per status so far, ``total``: rows in all)."""

    async def on_finish(self, summary: BatchSummary) -> None:
        """The batch is done; ``summary.results`` has every row, in row order."""


class ObserverGroup(BatchObserver):
    """Several observers as one; a failing observer is logged and the others still run.

    Example:
        ```python
        from kf2v_tasks.batch.reporting import ObserverGroup, PrefectReporter
        observer = ObserverGroup([PrefectReporter(), my_observer])
        ```
    """

    def __init__(self, observers: Iterable[BatchObserver]) -> None:
        self.observers = list(observers)

    async def on_plan(self, plan: BatchPlan, cost: CostEstimate, dry_run: bool) -> None:
        """Tell every observer the plan."""
        for o in self.observers:
            try:
                await o.on_plan(plan, cost, dry_run)
            except Exception:  # reporting must never fail the batch
                logger.exception("observer %r failed in on_plan", o)

    def on_row(self, result: RowResult, counts: dict[str, int], total: int) -> None:
        """Tell every observer a row finished."""
        for o in self.observers:
            try:
                o.on_row(result, counts, total)
            except Exception:  # a broken progress bar must not break the batch
                logger.exception("observer %r failed in on_row", o)

    async def on_finish(self, summary: BatchSummary) -> None:
        """Tell every observer the batch is done."""
        for o in self.observers:
            try:
                await o.on_finish(summary)
            except Exception:  # reporting must never fail the batch
                logger.exception("observer %r failed in on_finish", o)


#: Observers registered for every batch run in this process (the CLI's progress bar).
_registered: list[BatchObserver] = []


@contextlib.contextmanager
def observing(observer: BatchObserver) -> Iterator[BatchObserver]:
    """Tell ``observer`` about every batch that runs in this process while inside the block.

    Example:
        ```python
        from kf2v_tasks.batch.reporting import BatchObserver, observing

        with observing(BatchObserver()) as watcher:
            ...  # run batches; watcher.on_row is called for each finished row
        ```
    """
    _registered.append(observer)
    try:
        yield observer
    finally:
        with contextlib.suppress(ValueError):
            _registered.remove(observer)


def run_observer(*extra: Optional[BatchObserver]) -> ObserverGroup:
    """The one observer a run calls: ``extra`` plus every :func:`observing` registration.

    Example:
        ```python
        from kf2v_tasks.batch.reporting import PrefectReporter, run_observer
        observer = run_observer(PrefectReporter())
        ```
    """
    return ObserverGroup([o for o in extra if o is not None] + list(_registered))


# -- text that the Prefect UI renders as markdown ---------------------------------------------


def artifact_key(text: str) -> str:
    """A valid artifact key derived from ``text``.

    Example:
        ```python
        from kf2v_tasks.batch.reporting import artifact_key
        assert artifact_key("KF2V batch #1") == "kf2v-batch-1"
        ```
    """
    key = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (key or "kf2v")[:100]


def _short_error(r: RowResult) -> str:
    text = ": ".join(x for x in (r.error_code, r.error_message) if x)
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= ERROR_CELL_CHARS else text[: ERROR_CELL_CHARS - 1] + "…"


def _shown_path(output_root: Optional[str], path: Optional[str]) -> str:
    """``path`` relative to the output root when it is inside it (shorter cells), else whole."""
    if not path:
        return ""
    if output_root:
        prefix = output_root.rstrip("/") + "/"
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def results_table(
    results: list[RowResult], output_root: Optional[str] = None
) -> list[dict[str, Any]]:
    """The results table artifact's rows: what a user looks for first, short cells, escaped.

    ``row``, ``id``, ``status``, ``video`` (relative to the output folder), ``cost``, a
    short ``error``, then ``task_id`` and ``possible_duplicate``. The Prefect UI lays the
    table out at its natural width and clips what does not fit, so the cells a person
    reads come first and long values (absolute paths) are shortened; the sha256, the byte
    count and the whole message stay in ``results.csv``.

    Example:
        ```python
        from kf2v_tasks.batch.reporting import results_table
        from kf2v_tasks.batch.results import RowResult, RowStatus
        rows = results_table([RowResult(row=2, id="a_b", status=RowStatus.SUCCEEDED,
                                        output="s3://b/out/a_b.mp4")], "s3://b/out")
        assert rows[0]["id"] == "a\\_b" and rows[0]["video"] == "a\\_b.mp4"
        ```
    """
    return [
        {
            "row": r.row,
            "id": md_escape(r.id or ""),
            "status": r.status.value,
            "video": md_escape(_shown_path(output_root, r.output)),
            "cost": round(r.cost, 4),
            "error": md_escape(_short_error(r)),
            "task_id": md_escape(r.task_id or ""),
            "possible_duplicate": r.possible_duplicate,
        }
        for r in results
    ]


def _where(path: str, links: dict[str, PresignedUrl]) -> Optional[str]:
    """A link target a browser can follow from the UI, or ``None`` (show the path as text)."""
    link = links.get(path)
    if link is not None:
        return quote(link.url, safe="/:@?&=%+~.-_")
    scheme, sep, _ = path.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        return quote(path, safe="/:@%")
    return None


def summary_markdown(
    summary: BatchSummary,
    max_links: int = 50,
    max_failures: int = 100,
    *,
    links: Optional[dict[str, PresignedUrl]] = None,
    gallery: Optional[str] = None,
) -> str:
    """The markdown summary: counts, cost, time, the videos and the failures.

    Args:
        summary: the batch's summary.
        max_links: videos listed at most (the rest are in results.csv and the gallery).
        max_failures: failures listed at most.
        links: presigned links by stored path (videos, posters, the gallery): those
            become links, with their expiry stated; any other stored path is shown as
            text, since a browser cannot follow ``s3://`` or ``file://`` from the UI.
        gallery: where the gallery (``index.html``) is.

    Example:
        ```python
        from kf2v_tasks.batch.reporting import summary_markdown
        from kf2v_tasks.batch.results import BatchSummary
        text = summary_markdown(BatchSummary(manifest="m.csv", output="out", total=0))
        assert text.startswith("# kf2v batch")
        ```
    """
    s = summary
    links = links or {}
    lines = [
        f"# kf2v batch: {md_escape(s.headline())}",
        "",
        f"- Manifest: {md_escape(s.manifest)}",
        f"- Output: {md_escape(s.output)}",
        f"- Results: {md_escape(s.results_path or '')}",
        f"- Submitted {s.submitted}, re-attached {s.reattached}, skipped (already persisted) "
        f"{s.skipped}, possible duplicates {s.possible_duplicates}",
        f"- Cost: estimated {s.estimated_cost:.2f} {md_escape(s.currency)}, "
        f"spent {s.spent:.2f} {md_escape(s.currency)}"
        + (
            f", max\\_cost {s.max_cost:.2f}: {s.over_budget} rows over budget, not submitted"
            if s.max_cost is not None
            else ""
        ),
        f"- Wall time: {s.wall_seconds:.1f} s",
    ]
    if gallery:
        target = _where(gallery, links)
        lines.append(
            f"- Gallery: [open the gallery]({target})"
            if target
            else f"- Gallery: {md_escape(gallery)}"
        )
    if links:
        first = min(links.values(), key=lambda x: x.expires_at)
        lines.append(
            f"- Links are presigned and expire at {first.expiry_text()}; "
            "the files stay in the output folder."
        )
    lines += [
        "",
        "| status | rows |",
        "|---|---|",
        *[f"| {md_escape(k)} | {v} |" for k, v in sorted(s.counts.items())],
        "",
    ]
    done = [
        r for r in s.results if r.output and r.status in (RowStatus.SUCCEEDED, RowStatus.SKIPPED)
    ]
    if done:
        lines += ["## Videos", ""]
        for r in done[:max_links]:
            name, target = md_escape(r.id or r.output), _where(r.output or "", links)
            lines.append(
                f"- [{name}]({target})" if target else f"- {name}: {md_escape(r.output or '')}"
            )
        if len(done) > max_links:
            lines.append(f"- … and {len(done) - max_links} more in results.csv")
    failed = [r for r in s.results if r.status in FAILED_STATUSES]
    if failed:
        lines += ["", "## Failures", ""]
        lines += [
            f"- row {r.row} {md_escape(r.id or '')}: {md_escape(r.error_code or r.status.value)}: "
            f"{md_escape(r.error_message or '')}"
            for r in failed[:max_failures]
        ]
        if len(failed) > max_failures:
            lines.append(f"- … and {len(failed) - max_failures} more in results.csv")
    return "\n".join(lines) + "\n"


class PrefectReporter(BatchObserver):
    """Creates and updates the batch's artifacts in the current flow run, and its gallery.

    Args:
        key_prefix: artifact keys start with it.
        min_interval: seconds between two progress updates (and two gallery rewrites).
        storage_options: fsspec options of the output folder (to write the gallery and
            to presign links to S3 objects).
        gallery: keep ``index.html`` in the output folder up to date (not in dry runs).
        link_expiry: seconds the presigned links of S3 outputs work (at most 7 days).
        max_images: posters shown as image artifacts (S3 outputs only).

    Example:
        ```python
        from kf2v_tasks.batch.reporting import PrefectReporter
        from kf2v_tasks.batch.runner import BatchRunner

        reporter = PrefectReporter(storage_options={"anon": False}, link_expiry=24 * 3600)
        runner = BatchRunner("manifest.csv", "s3://bucket/out", observer=reporter)
        ```
    """

    def __init__(
        self,
        key_prefix: str = "kf2v-batch",
        min_interval: float = 1.0,
        *,
        storage_options: Optional[dict] = None,
        gallery: bool = True,
        link_expiry: int = DEFAULT_EXPIRY_SECONDS,
        max_images: int = MAX_IMAGE_ARTIFACTS,
    ) -> None:
        self.key_prefix = artifact_key(key_prefix)
        self.min_interval = min_interval
        self.storage_options = storage_options
        self.link_expiry = link_expiry
        self.max_images = max_images
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
            "Manifest %s: %d rows, %d valid, %d invalid. Estimated cost: %.2f %s%s",
            source,
            plan.manifest.total,
            len(plan.runnable),
            len(plan.invalid),
            cost.total,
            cost.currency,
            " (dry run: nothing will be submitted)" if dry_run else "",
        )
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
        self._creating = asyncio.ensure_future(create())
        if self.gallery is not None:
            try:
                await self.gallery.on_plan(plan, cost, dry_run)
            except Exception:  # reporting must never fail the batch
                logger.warning("writing the gallery failed", exc_info=True)

    def on_row(self, result: RowResult, counts: dict[str, int], total: int) -> None:
        """Schedule a throttled progress update (and gallery rewrite)."""
        if self.gallery is not None:
            try:
                self.gallery.on_row(result, counts, total)
            except Exception:  # reporting must never fail the batch
                logger.warning("gallery update failed", exc_info=True)
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

    async def on_finish(self, summary: BatchSummary) -> None:
        """Final progress, the gallery, the results table, the summary and the posters."""
        from prefect.artifacts import (
            acreate_image_artifact,
            acreate_markdown_artifact,
            acreate_table_artifact,
        )

        if self._creating is not None:
            try:
                await self._creating
            except Exception:  # reporting must never fail the batch
                logger.warning("progress artifact creation failed", exc_info=True)
        if self._pending is not None:
            await asyncio.gather(self._pending, return_exceptions=True)
        self._done = self._total = self._total or summary.total
        await self._update()
        gallery_path: Optional[str] = None
        if self.gallery is not None and not summary.dry_run:
            try:
                await self.gallery.on_finish(summary)
                gallery_path = self.gallery.path
            except Exception:  # reporting must never fail the batch
                logger.warning("writing the gallery failed", exc_info=True)
        links: dict[str, PresignedUrl] = {}
        if can_presign(summary.output) and not summary.dry_run:
            try:
                links, gallery_path = await self._presigned(summary, gallery_path)
            except Exception:  # no links is better than no summary
                logger.warning("presigning links to the outputs failed", exc_info=True)
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
        for row, poster in self._posters(summary, links):
            await acreate_image_artifact(
                image_url=poster.url,
                key=f"{self.key_prefix}-poster-row-{row.row}",
                description=f"Poster of {md_escape(row.id or row.row)} (row {row.row}); "
                f"the link expires at {poster.expiry_text()}",
            )

    def _made(self, summary: BatchSummary) -> list[RowResult]:
        return [
            r
            for r in summary.results
            if r.output and r.status in (RowStatus.SUCCEEDED, RowStatus.SKIPPED)
        ]

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
            if len(out) >= self.max_images:
                break
        return out
