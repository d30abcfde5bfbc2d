"""The gallery page: one card per row, as self-contained HTML in which every value is escaped.

Inline CSS, no script (a Content-Security-Policy forbids any), no font, no network
address. Files are linked relative to the page (:func:`relative_link`), so one file works
from disk and from S3 static hosting; absolute (presigned) links serve the copy opened
through a presigned URL. Prompts, ids, errors and file names come from users and the
service: all are escaped, links percent-encoded, and only relative or http(s) links reach
an attribute, so ``<img src=x onerror=alert(1)>`` stays text. Writing and updating the
page is :mod:`kf2v_tasks.batch.gallery`.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable
from typing import Optional
from urllib.parse import quote

from pydantic import BaseModel, Field

from kf2v_tasks.storage.paths import is_url

__all__ = ["GalleryCard", "relative_link", "render_gallery"]


class GalleryCard(BaseModel):
    """One row of the gallery: what it shows, with links already made (relative or absolute)."""

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
    cost: Optional[float] = Field(default=0.0, description="What it cost when made; None: unknown.")
    currency: str = "CNY"
    error: Optional[str] = None
    task_id: Optional[str] = None
    earlier_run: bool = Field(
        default=False, description="Kept from an earlier run: this run's manifest has no such row."
    )

    @property
    def made(self) -> bool:
        """Whether the row has a video to play."""
        return self.video is not None


def relative_link(root: str, path: Optional[str]) -> Optional[str]:
    """``path`` as a percent-encoded link relative to the folder ``root``; ``None`` outside it.

    Every character but ``/`` and unreserved ones is encoded, so a name can neither end
    an attribute nor become a ``javascript:`` URL.
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
.badge.earlier{background:var(--dim)}
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
    anchor = f"earlier-row-{c.row}" if c.earlier_run else f"row-{c.row}"
    earlier = ' data-earlier-run="true"' if c.earlier_run else ""
    parts = [
        f'<article class="card" id="{anchor}" data-status="{_e(c.status)}"{earlier}>',
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
        f'<span class="badge s-{_e(c.status)}">{_e(c.status.replace("_", " "))}</span>'
        + ('<span class="badge earlier">earlier run</span>' if c.earlier_run else "")
        + "</h2>"
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
    meta = ["cost unknown" if c.cost is None else f"cost {c.cost:.2f} {_e(c.currency)}"]
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
    """The gallery page for ``cards``, in the order given (self-contained HTML, escaped)."""
    cards = list(cards)
    if counts is None:  # an earlier run's cards are counted apart
        counts = _count("earlier_run" if c.earlier_run else c.status for c in cards)
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
