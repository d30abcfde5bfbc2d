"""The gallery: ``index.html`` in the output folder, one card per row, rewritten as rows finish.

Each card shows the poster, an inline player, the strip, the prompt (and the one the
service actually used), status, cost and error. The page (self-contained, every value
escaped) is :mod:`kf2v_tasks.batch.gallery_page`. On S3 it is stored as
``text/html``, so static hosting and a presigned URL show it rather than download it.

:class:`GalleryWriter` rewrites the page at most once per ``min_interval`` (less often
when pages take long to build) and once at the end; a row's sidecar is read once, or taken
from memory when this process just wrote it. A page never shows less than the output
holds: rows of the output's results.csv this run has none for keep their cards, marked
"earlier run" (as results.csv keeps them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Optional

from pydantic import BaseModel

from kf2v_tasks.background import spawn
from kf2v_tasks.batch.gallery_page import GalleryCard, relative_link, render_gallery
from kf2v_tasks.batch.results import (
    MADE_STATUSES,
    RESULTS_NAME,
    BatchSummary,
    RowResult,
    RowStatus,
    earlier_rows,
    n_rows,
    read_results,
)
from kf2v_tasks.generation.previews import Previews, preview_paths
from kf2v_tasks.generation.sidecar import written_sidecar
from kf2v_tasks.redaction import redact_text
from kf2v_tasks.storage.files import read_json, sidecar_path, write_bytes_atomic
from kf2v_tasks.storage.objects import object_exists
from kf2v_tasks.storage.paths import join, open_fs, run_sync

if TYPE_CHECKING:
    from kf2v_tasks.batch.plan import BatchPlan
    from kf2v_tasks.generation.pricing import CostEstimate

__all__ = [
    "GALLERY_NAME",
    "GalleryWriter",
    "write_gallery",
]

logger = logging.getLogger("kf2v_tasks.batch.gallery")

#: The gallery's file name under the output root.
GALLERY_NAME = "index.html"
#: What index.html is served as (S3 static hosting and presigned URLs serve the stored type).
HTML_CONTENT_TYPE = "text/html; charset=utf-8"


async def write_gallery(
    root: str, page: str, *, storage_options: Optional[dict] = None, name: str = GALLERY_NAME
) -> str:
    """Write ``page`` to ``<root>/<name>`` atomically; return where it went."""
    dest = join(root, name)
    # On S3 the object says text/html: static hosting serves what the object says.
    await write_bytes_atomic(
        dest, page.encode(), storage_options=storage_options, content_type=HTML_CONTENT_TYPE
    )
    return dest


# -- what a finished row's files say ---------------------------------------------------------


class _Made(BaseModel):
    """What a finished row's sidecar (and previews) say; read once per row."""

    prompt: Optional[str] = None
    actual_prompt: Optional[str] = None
    currency: Optional[str] = None
    previews: Optional[Previews] = None
    poster: Optional[str] = None
    strip: Optional[str] = None


async def _read_made(video: str, storage_options: Optional[dict]) -> _Made:
    # Written by this process (this run kept the video): no need to fetch it back.
    doc = written_sidecar(sidecar_path(video), forget=True)
    written_here = doc is not None
    if doc is None:
        try:
            doc = await read_json(sidecar_path(video), storage_options=storage_options)
        except (OSError, ValueError):
            doc = {}
    doc = doc if isinstance(doc, dict) else {}
    made = _Made(
        prompt=doc.get("prompt"),
        actual_prompt=doc.get("actual_prompt"),
        currency=doc.get("currency"),
    )
    with contextlib.suppress(ValueError, TypeError):
        if doc.get("previews"):
            made.previews = Previews.model_validate(doc["previews"])
    if made.previews is not None:
        made.poster, made.strip = made.previews.poster, made.previews.strip
    elif not written_here:  # an older sidecar: previews may have been made since
        poster, strip = preview_paths(video)

        def exists(p: str) -> bool:
            fs, path = open_fs(p, storage_options)
            return object_exists(fs, path)  # one HeadObject on S3, no listing

        if await run_sync(exists, poster):
            made.poster = poster
            made.strip = strip if await run_sync(exists, strip) else None
    return made


def _error_text(r: RowResult) -> Optional[str]:
    if r.status in MADE_STATUSES or not (r.error_code or r.error_message):
        return None
    return redact_text(": ".join(x for x in (r.error_code, r.error_message) if x))


def _key(r: RowResult) -> tuple[bool, int]:
    """A card's key: an earlier run's row 2 is not this run's row 2."""
    return (r.earlier_run, r.row)


class GalleryWriter:
    """Keeps ``index.html`` in the output folder up to date while a batch runs.

    It has :class:`~kf2v_tasks.batch.observer.BatchObserver`'s methods; it never fails a
    batch (a failed write is logged and the next one tries again). ``link`` makes a stored
    file a link (default: relative to the output root).
    """

    def __init__(
        self,
        storage_options: Optional[dict] = None,
        *,
        min_interval: float = 1.0,
        link: Optional[Callable[[str, Optional[str]], Optional[str]]] = None,
    ) -> None:
        self.storage_options = storage_options
        self.min_interval = min_interval
        self.link = link or relative_link
        self.root: Optional[str] = None
        self.title = "kf2v gallery"
        self.currency = "CNY"
        self.dry_run = False
        self.path: Optional[str] = None
        self.writes = 0
        self._prompts: dict[int, str] = {}
        self._results: dict[int, RowResult] = {}
        self._earlier: Optional[list[RowResult]] = None  # cards kept from an earlier run
        self._made: dict[object, _Made] = {}
        self._dirty = False
        self._loop: Optional[asyncio.Task] = None
        self._lock = asyncio.Lock()

    # -- the observer's methods --------------------------------------------------------------

    async def on_plan(self, plan: BatchPlan, cost: CostEstimate, dry_run: bool) -> None:
        """Learn the output root, the prompts and the currency; write the first page."""
        self.root = plan.output
        self.dry_run = dry_run
        self.currency = cost.currency
        self.title = f"kf2v gallery: {os.path.basename(plan.manifest.source.split('?')[0])}"
        self._prompts = {r.row_number: r.prompt for r in plan.manifest.rows if r.prompt}
        if not dry_run:  # a rehearsal writes nothing into the output folder
            from kf2v_tasks.batch.plan import output_path

            this_run = [
                RowResult(
                    row=r.row_number,
                    id=r.id,
                    status=RowStatus.PLANNED,
                    output=output_path(plan.output, r),
                )
                for r in plan.manifest.rows
            ] + list(plan.invalid)
            await self._load_earlier(this_run)
            await self._write()

    def on_row(self, result: RowResult, counts: dict[str, int], total: int) -> None:
        """Note the row; the page is rewritten at most once per ``min_interval``."""
        self._results[result.row] = result
        if self.root is None or self.dry_run:
            return
        self._dirty = True
        if self._loop is None or self._loop.done():
            self._loop = spawn(self._rewrite_while_dirty(), name="kf2v-gallery")

    async def on_finish(self, summary: BatchSummary) -> None:
        """The final page, from the summary's rows (every row, as results.csv says)."""
        if summary.dry_run or self.dry_run:
            return
        self.root = self.root or summary.output
        self.currency = summary.currency or self.currency
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop
        self._results = {r.row: r for r in summary.results}
        if self._earlier is None:  # no plan seen here (a sharded run's parent)
            await self._load_earlier(summary.results)
        else:  # the final rows say best which earlier ones this run replaced
            self._earlier = earlier_rows(summary.results, self._earlier)
        await self._write(subtitle=summary.headline())

    async def _load_earlier(self, this_run: list[RowResult]) -> None:
        """The rows of the output's results.csv that ``this_run`` has none for."""
        if self.root is None:
            return
        try:
            found = await read_results(
                join(self.root, RESULTS_NAME), storage_options=self.storage_options
            )
        except Exception as exc:  # the page goes on without them; said once
            logger.warning("earlier rows of %s not shown: %s", self.root, exc)
            found = []
        self._earlier = earlier_rows(this_run, found)

    # -- writing ----------------------------------------------------------------------------

    async def _rewrite_while_dirty(self) -> None:
        pause = self.min_interval
        while self._dirty:
            await asyncio.sleep(pause)
            self._dirty = False
            started = time.monotonic()
            try:
                await self._write()
            except Exception:  # reporting never fails a batch; the next write tries again
                logger.warning("writing the gallery failed", exc_info=True)
            # A page of 10,000 rows takes a while to build and store: keep its share of
            # the run small (about a tenth) by waiting longer between big rewrites.
            pause = max(self.min_interval, 10 * (time.monotonic() - started))

    async def cards(
        self, link: Optional[Callable[[str, Optional[str]], Optional[str]]] = None
    ) -> list[GalleryCard]:
        """The gallery's cards for the rows known so far, in row order (``link``: as the writer's)."""
        results = self._rows()
        todo = [
            r
            for r in results
            if r.status in MADE_STATUSES and r.output and _key(r) not in self._made
        ]
        found = await asyncio.gather(
            *(_read_made(r.output or "", self.storage_options) for r in todo)
        )
        self._made.update({_key(r): m for r, m in zip(todo, found, strict=True)})
        return [self._card(r, link or self.link) for r in results]

    def _rows(self) -> list[RowResult]:
        """This run's rows in row order, then the earlier run's kept ones."""
        return [self._results[n] for n in sorted(self._results)] + list(self._earlier or [])

    def files(self) -> list[str]:
        """Every video, poster and strip the cards link to (after :meth:`cards`)."""
        out: list[str] = []
        for r in self._rows():
            made = self._made.get(_key(r))
            if made is None or r.status not in MADE_STATUSES or not r.output:
                continue
            out += [p for p in (r.output, made.poster, made.strip) if p]
        return out

    def poster_of(self, row: int) -> Optional[str]:
        """The stored poster of a finished row (after :meth:`cards`), or ``None``."""
        made = self._made.get((False, row))
        return made.poster if made else None

    def render(self, cards: list[GalleryCard], subtitle: Optional[str] = None) -> str:
        """The page for ``cards``, titled for this batch."""
        if subtitle is None:
            subtitle = f"{n_rows(sum(not c.earlier_run for c in cards))} finished so far"
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return render_gallery(cards, title=self.title, subtitle=f"{subtitle} · {stamp}")

    def _card(
        self, r: RowResult, link: Callable[[str, Optional[str]], Optional[str]]
    ) -> GalleryCard:
        made = self._made.get(_key(r)) if r.status in MADE_STATUSES else None
        root = self.root or ""
        previews = made.previews if made else None
        return GalleryCard(
            row=r.row,
            id=r.id,
            status=r.status.value,
            prompt=self._prompts.get(r.row) or (made.prompt if made else None),
            actual_prompt=made.actual_prompt if made else None,
            video=link(root, r.output) if made else None,
            poster=link(root, made.poster) if made and made.poster else None,
            strip=link(root, made.strip) if made and made.strip else None,
            width=previews.width if previews else None,
            height=previews.height if previews else None,
            cost=r.cost,
            currency=(made.currency if made and made.currency else None) or self.currency,
            error=_error_text(r),
            task_id=r.task_id,
            earlier_run=r.earlier_run,
        )

    async def _write(self, subtitle: Optional[str] = None) -> None:
        if self.root is None:
            return
        async with self._lock:  # one write at a time; the last one has every row so far
            cards = await self.cards()
            page = await run_sync(self.render, cards, subtitle)  # off the flow's event loop
            self.path = await write_gallery(self.root, page, storage_options=self.storage_options)
            self.writes += 1
