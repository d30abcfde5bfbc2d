"""The text of a batch's Prefect artifacts: the results table, the summary, artifact keys.

The Prefect UI renders artifact descriptions, markdown artifacts and the string cells of
table artifacts as markdown, so text that comes from users or from the service (ids,
paths, error messages) goes through :func:`~kf2v_tasks.redaction.md_escape` first.
Artifact keys may only hold lowercase letters, digits and dashes (:func:`artifact_key`).

Links are ones a browser can follow from the Prefect UI: presigned HTTPS URLs (with
their expiry stated) or http(s) paths; any other stored path (``s3://``, a local file)
is shown as text, since a browser blocks ``file://`` from an http page and cannot open
``s3://``. Creating the artifacts is :mod:`kf2v_tasks.batch.reporting`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

from kf2v_tasks.batch.results import (
    FAILED_STATUSES,
    MADE_STATUSES,
    BatchSummary,
    RowResult,
    n_rows,
)
from kf2v_tasks.redaction import md_escape
from kf2v_tasks.storage.presign import PresignedUrl

__all__ = ["ERROR_CELL_CHARS", "artifact_key", "link_target", "results_table", "summary_markdown"]

#: Longest error text shown in a results-table cell (results.csv has the whole message).
ERROR_CELL_CHARS = 120
_MAX_LINKS, _MAX_FAILURES = 50, 100  # videos and failures the summary lists at most


def artifact_key(text: str) -> str:
    """A valid artifact key derived from ``text``."""
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
    """
    return [
        {
            "row": r.row,
            "id": md_escape(r.id or ""),
            "status": r.status.value,
            "video": md_escape(_shown_path(output_root, r.output)),
            "cost": None if r.cost is None else round(r.cost, 4),
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


def link_target(path: str, links: dict[str, PresignedUrl]) -> Optional[str]:
    """The target of a link artifact to a stored file: as :func:`_where`, and a local file
    as a ``file://`` URI (a link artifact is one place a person can copy it from).
    """
    where = _where(path, links)
    if where is not None:
        return where
    scheme, sep, _ = path.partition("://")
    if sep and scheme.lower() != "file":
        return None
    local = path[len("file://") :] if sep else path
    return Path(os.path.abspath(local)).as_uri()


def summary_markdown(
    summary: BatchSummary,
    *,
    links: Optional[dict[str, PresignedUrl]] = None,
    gallery: Optional[str] = None,
) -> str:
    """The markdown summary: counts, cost, time, the videos and the failures.

    At most :data:`_MAX_LINKS` videos and :data:`_MAX_FAILURES` failures are listed (the
    rest are in results.csv and the gallery). Paths in ``links`` (presigned) become links with their
    expiry stated; any other stored path is text, since a browser cannot follow ``s3://`` or
    ``file://`` from the UI.
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
            f", max\\_cost {s.max_cost:.2f}: {n_rows(s.over_budget)} over budget, not submitted"
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
    done = [r for r in s.results if r.output and r.status in MADE_STATUSES]
    if done:
        lines += ["## Videos", ""]
        for r in done[:_MAX_LINKS]:
            name, target = md_escape(r.id or r.output), _where(r.output or "", links)
            lines.append(
                f"- [{name}]({target})" if target else f"- {name}: {md_escape(r.output or '')}"
            )
        if len(done) > _MAX_LINKS:
            lines.append(f"- … and {len(done) - _MAX_LINKS} more in results.csv")
    failed = [r for r in s.results if r.status in FAILED_STATUSES]
    if failed:
        lines += ["", "## Failures", ""]
        lines += [
            f"- row {r.row} {md_escape(r.id or '')}: {md_escape(r.error_code or r.status.value)}: "
            f"{md_escape(r.error_message or '')}"
            for r in failed[:_MAX_FAILURES]
        ]
        if len(failed) > _MAX_FAILURES:
            lines.append(f"- … and {len(failed) - _MAX_FAILURES} more in results.csv")
    return "\n".join(lines) + "\n"
