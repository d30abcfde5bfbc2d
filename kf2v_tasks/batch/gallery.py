"""The gallery: ``index.html`` in the output folder, one card per row, rewritten as rows finish.

Each card shows the row's poster and an inline ``<video>`` player, its strip (first,
middle and last frames), the prompt and the prompt the service actually used, the status,
the cost and, for a row that did not succeed, its error.

The page is self-contained: CSS inline, no script (and a Content-Security-Policy that
forbids any), no font, no network address. Videos and previews are linked by paths
relative to the page, so the same file works opened from disk and served by S3 static
hosting. :func:`render_gallery` can also take absolute links (presigned URLs, see
:mod:`kf2v_tasks.batch.reporting`), for a copy opened through a presigned URL.

Prompts, ids, error messages and file names come from users and from the service: every
one is escaped with :func:`html.escape` and every link is percent-encoded, so a prompt
such as ``<img src=x onerror=alert(1)>`` stays text.

:class:`GalleryWriter` has the three methods of a
:class:`~kf2v_tasks.batch.reporting.BatchObserver`: it learns the prompts from the plan,
rewrites the page at most once per ``min_interval`` seconds while rows finish (less often
for pages that take long to build), and once more at the end. What a finished row's video holds (the actual prompt, its previews) is
read once from its sidecar.

Example:
    ```python
    from kf2v_tasks.batch.gallery import GalleryWriter
    from kf2v_tasks.batch.reporting import run_observer
    from kf2v_tasks.batch.runner import BatchRunner

    runner = BatchRunner("manifest.csv", "out/", observer=run_observer(GalleryWriter()))
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Optional
from urllib.parse import quote

from pydantic import BaseModel, Field

from kf2v_tasks.batch.results import BatchSummary, RowResult, RowStatus
from kf2v_tasks.generation.previews import Previews, preview_paths
from kf2v_tasks.redaction import redact_text
from kf2v_tasks.storage.files import read_json, sidecar_path, write_bytes_atomic
from kf2v_tasks.storage.paths import is_url, join, open_fs, run_sync

if TYPE_CHECKING:
    from kf2v_tasks.batch.plan import BatchPlan
    from kf2v_tasks.generation.pricing import CostEstimate

__all__ = [
    "GALLERY_NAME",
    "GalleryCard",
    "GalleryWriter",
    "relative_link",
    "render_gallery",
    "write_gallery",
]

logger = logging.getLogger("kf2v_tasks.batch.gallery")

#: The gallery's file name under the output root.
GALLERY_NAME = "index.html"
#: Statuses whose rows have a video to show.
_MADE = frozenset({RowStatus.SUCCEEDED, RowStatus.SKIPPED})


class GalleryCard(BaseModel):
    """One row of the gallery: what it shows, with links already made (relative or absolute).

    Example:
        ```python
        from kf2v_tasks.batch.gallery import GalleryCard
        card = GalleryCard(row=2, id="sunrise", status="succeeded", video="sunrise.mp4",
                           poster="sunrise.poster.jpg", cost=0.5)
        assert card.made
        ```
    """

    row: int
    id: Optional[str] = None
    status: str
    prompt: Optional[str] = None
    actual_prompt: Optional[str] = None
    video: Optional[str] = Field(default=None, description="Link to the video, if made.")
    poster: Optional[str] = Field(default=None, description="Link to the poster JPEG.")
    strip: Optional[str] = Field(default=None, description="Link to the strip JPEG.")
    width: Optional[int] = None
    height: Optional[int] = None
    cost: float = 0.0
    currency: str = "CNY"
    error: Optional[str] = None
    task_id: Optional[str] = None

    @property
    def made(self) -> bool:
        """Whether the row has a video to play."""
        return self.video is not None


def relative_link(root: str, path: Optional[str]) -> Optional[str]:
    """``path`` as a percent-encoded link relative to the folder ``root``; ``None`` outside it.

    Every character but ``/`` and unreserved ones is encoded, so a name can neither end
    an attribute nor become a ``javascript:`` URL.

    Example:
        ```python
        from kf2v_tasks.batch.gallery import relative_link
        assert relative_link("s3://b/out", "s3://b/out/a b/c.mp4") == "a%20b/c.mp4"
        assert relative_link("out", "out/x:1.mp4") == "x%3A1.mp4"
        assert relative_link("out", "elsewhere/a.mp4") is None
        ```
    """
    if not path:
        return None
    if is_url(root) or is_url(path):
        prefix = root.rstrip("/") + "/"
        if not path.startswith(prefix):
            return None
        rel = path[len(prefix) :]
    else:
        base, target = os.path.abspath(root), os.path.abspath(path)
        if os.path.commonpath([base, target]) != base or base == target:
            return None
        rel = os.path.relpath(target, base).replace(os.sep, "/")
    return quote(rel, safe="/")


# -- the page --------------------------------------------------------------------------------

_CSS = """
:root{color-scheme:light dark;--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--dim:#5b6475;
--line:#dde1e8;--ok:#1f7a3f;--skip:#2f5f9e;--bad:#b3261e;--warn:#8a5a00}
@media (prefers-color-scheme:dark){:root{--bg:#14171c;--card:#1d2128;--ink:#e8ebf0;
--dim:#9aa3b2;--line:#2f3540}}
*{box-sizing:border-box}
body{margin:0;padding:24px;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header h1{margin:0 0 4px;font-size:20px}
header p{margin:0 0 16px;color:var(--dim)}
.counts span{display:inline-block;margin-right:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;overflow:hidden;
display:flex;flex-direction:column}
.card .media{background:#000;aspect-ratio:16/9;display:flex;align-items:center;
justify-content:center}
.card video,.card img.poster{width:100%;height:100%;object-fit:contain;display:block}
.card .none{color:#aab;font-size:13px;padding:16px;text-align:center}
.card img.strip{width:100%;display:block;border-top:1px solid var(--line)}
.card .body{padding:10px 12px 12px;display:flex;flex-direction:column;gap:6px}
.card h2{margin:0;font-size:15px;display:flex;gap:8px;align-items:baseline;flex-wrap:wrap}
.card h2 .row{color:var(--dim);font-weight:normal;font-size:12px}
.badge{font-size:11px;font-weight:600;text-transform:uppercase;letter-spacing:.04em;
padding:1px 6px;border-radius:4px;color:#fff;background:var(--dim)}
.s-succeeded{background:var(--ok)}.s-skipped{background:var(--skip)}
.s-failed,.s-invalid{background:var(--bad)}.s-over_budget,.s-not_run{background:var(--warn)}
dl{margin:0;display:grid;grid-template-columns:auto 1fr;gap:2px 10px}
dt{color:var(--dim)}dd{margin:0;white-space:pre-wrap;overflow-wrap:anywhere}
.error dd{color:var(--bad)}
.meta{color:var(--dim);font-size:12px;overflow-wrap:anywhere}
"""

# No script may run in this page, whatever a cell holds; it loads nothing but its files.
_CSP = "script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'"


def _e(text: object) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _href(link: Optional[str]) -> Optional[str]:
    """A link fit for an attribute: relative, or our own http(s) URL; never another scheme."""
    if not link:
        return None
    scheme, sep, _ = link.partition("://")
    if sep and scheme.lower() not in ("http", "https"):
        return None
    if not sep and ":" in link.split("/", 1)[0]:
        return None  # "javascript:…" and friends: not a relative path
    return _e(link)


def _card(c: GalleryCard) -> str:
    label = c.id or f"row {c.row}"
    video, poster, strip = _href(c.video), _href(c.poster), _href(c.strip)
    size = f' width="{c.width}" height="{c.height}"' if c.width and c.height else ""
    if video:
        poster_attr = f' poster="{poster}"' if poster else ""
        media = (
            f'<video controls preload="none" playsinline{poster_attr}{size}>'
            f'<source src="{video}" type="video/mp4">'
            f'<a href="{video}">{_e(label)}.mp4</a></video>'
        )
    elif poster:
        media = f'<img class="poster" src="{poster}" alt="poster of {_e(label)}"{size}>'
    else:
        media = f'<div class="none">{_e(c.status.replace("_", " "))}: no video</div>'
    parts = [
        f'<article class="card" id="row-{c.row}" data-status="{_e(c.status)}">',
        f'<div class="media">{media}</div>',
    ]
    if strip:
        parts.append(
            f'<img class="strip" src="{strip}" alt="first, middle and last frames of '
            f'{_e(label)}" loading="lazy">'
        )
    parts.append('<div class="body">')
    parts.append(
        f'<h2><span class="id">{_e(label)}</span><span class="row">row {c.row}</span>'
        f'<span class="badge s-{_e(c.status)}">{_e(c.status.replace("_", " "))}</span></h2>'
    )
    fields = [("prompt", c.prompt), ("actual prompt", c.actual_prompt)]
    rows = "".join(
        f'<dt>{_e(k)}</dt><dd class="{k.replace(" ", "-")}">{_e(v)}</dd>' for k, v in fields if v
    )
    if rows:
        parts.append(f"<dl>{rows}</dl>")
    if c.error:
        parts.append(
            f'<dl class="error"><dt>error</dt><dd class="error-text">{_e(c.error)}</dd></dl>'
        )
    meta = [f"cost {c.cost:.2f} {_e(c.currency)}"]
    if c.task_id:
        meta.append(f"task {_e(c.task_id)}")
    if video:
        meta.append(f'<a href="{video}">video</a>')
    parts.append(f'<div class="meta">{" · ".join(meta)}</div>')
    parts.append("</div></article>")
    return "".join(parts)


def render_gallery(
    cards: Iterable[GalleryCard],
    *,
    title: str = "kf2v gallery",
    subtitle: str = "",
    counts: Optional[dict[str, int]] = None,
) -> str:
    """The gallery page for ``cards``, in the order given (self-contained HTML, escaped).

    Example:
        ```python
        from kf2v_tasks.batch.gallery import GalleryCard, render_gallery
        page = render_gallery([GalleryCard(row=2, status="failed",
                                           prompt="<img src=x onerror=alert(1)>")])
        assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img src=x" not in page
        ```
    """
    cards = list(cards)
    counts = counts if counts is not None else _count(c.status for c in cards)
    count_html = "".join(
        f"<span>{_e(k.replace('_', ' '))}: {v}</span>" for k, v in sorted(counts.items())
    )
    body = "\n".join(_card(c) for c in cards)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>"
        f"<header><h1>{_e(title)}</h1><p>{_e(subtitle)}</p>"
        f'<p class="counts">{count_html}</p></header>\n'
        f'<main class="grid">\n{body}\n</main></body></html>\n'
    )


def _count(statuses: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in statuses:
        out[s] = out.get(s, 0) + 1
    return out


def _write_html_sync(dest: str, data: bytes, storage_options: Optional[dict]) -> bool:
    """On S3, one PUT that says text/html (static hosting serves what the object says)."""
    fs, path = open_fs(dest, storage_options)
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if not {"s3", "s3a"} & set(protocols):
        return False
    fs.pipe_file(path, data, ContentType="text/html; charset=utf-8")
    return True


async def write_gallery(
    root: str, page: str, *, storage_options: Optional[dict] = None, name: str = GALLERY_NAME
) -> str:
    """Write ``page`` to ``<root>/<name>`` atomically; return where it went.

    Example:
        ```python
        from kf2v_tasks.batch.gallery import render_gallery, write_gallery
        path = await write_gallery("out", render_gallery([]))   # out/index.html
        ```
    """
    dest = join(root, name)
    data = page.encode()
    if not await run_sync(_write_html_sync, dest, data, storage_options):
        await write_bytes_atomic(dest, data, storage_options=storage_options)
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
    else:  # an older sidecar: previews may have been made since, under their usual names
        poster, strip = preview_paths(video)

        def exists(p: str) -> bool:
            fs, path = open_fs(p, storage_options)
            return fs.exists(path)

        if await run_sync(exists, poster):
            made.poster = poster
            made.strip = strip if await run_sync(exists, strip) else None
    return made


def _error_text(r: RowResult) -> Optional[str]:
    if r.status in _MADE or not (r.error_code or r.error_message):
        return None
    return redact_text(": ".join(x for x in (r.error_code, r.error_message) if x))


class GalleryWriter:
    """Keeps ``index.html`` in the output folder up to date while a batch runs.

    It has :class:`~kf2v_tasks.batch.reporting.BatchObserver`'s three methods; it never
    fails a batch (a failed write is logged and the next one tries again).

    Args:
        storage_options: fsspec options of the output folder.
        min_interval: seconds between two rewrites while rows finish.
        link: how a stored file becomes a link (default: relative to the output root).

    Example:
        ```python
        from kf2v_tasks.batch.gallery import GalleryWriter
        from kf2v_tasks.batch.reporting import ObserverGroup, PrefectReporter
        observer = ObserverGroup([PrefectReporter(), GalleryWriter({"anon": False})])
        ```
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
        self._made: dict[int, _Made] = {}
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
            await self._write()

    def on_row(self, result: RowResult, counts: dict[str, int], total: int) -> None:
        """Note the row; the page is rewritten at most once per ``min_interval``."""
        self._results[result.row] = result
        if self.root is None or self.dry_run:
            return
        self._dirty = True
        if self._loop is None or self._loop.done():
            self._loop = asyncio.ensure_future(self._rewrite_while_dirty())

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
        await self._write(subtitle=summary.headline())

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
        """The gallery's cards for the rows known so far, in row order.

        Args:
            link: how a stored file becomes a link (default: this writer's ``link``).

        Example:
            ```python
            cards = await writer.cards()
            print([c.status for c in cards])
            ```
        """
        results = [self._results[n] for n in sorted(self._results)]
        todo = [r for r in results if r.status in _MADE and r.output and r.row not in self._made]
        found = await asyncio.gather(
            *(_read_made(r.output or "", self.storage_options) for r in todo)
        )
        self._made.update({r.row: m for r, m in zip(todo, found, strict=True)})
        return [self._card(r, link or self.link) for r in results]

    def files(self) -> list[str]:
        """Every video, poster and strip the cards link to (after :meth:`cards`).

        Example:
            ```python
            await writer.cards()
            links = await presign_many(writer.files())
            ```
        """
        out: list[str] = []
        for r in sorted(self._results.values(), key=lambda r: r.row):
            made = self._made.get(r.row)
            if made is None or r.status not in _MADE or not r.output:
                continue
            out += [p for p in (r.output, made.poster, made.strip) if p]
        return out

    def poster_of(self, row: int) -> Optional[str]:
        """The stored poster of a finished row (after :meth:`cards`), or ``None``."""
        made = self._made.get(row)
        return made.poster if made else None

    def render(self, cards: list[GalleryCard], subtitle: Optional[str] = None) -> str:
        """The page for ``cards``, titled for this batch.

        Example:
            ```python
            page = writer.render(await writer.cards())
            ```
        """
        if subtitle is None:
            subtitle = f"{len(cards)} rows finished so far"
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return render_gallery(cards, title=self.title, subtitle=f"{subtitle} · {stamp}")

    def _card(
        self, r: RowResult, link: Callable[[str, Optional[str]], Optional[str]]
    ) -> GalleryCard:
        made = self._made.get(r.row) if r.status in _MADE else None
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
        )

    async def _write(self, subtitle: Optional[str] = None) -> None:
        if self.root is None:
            return
        async with self._lock:  # one write at a time; the last one has every row so far
            cards = await self.cards()
            page = await run_sync(self.render, cards, subtitle)  # off the flow's event loop
            self.path = await write_gallery(self.root, page, storage_options=self.storage_options)
            self.writes += 1
