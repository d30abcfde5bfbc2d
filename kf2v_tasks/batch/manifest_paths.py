"""Paths in a manifest: frame paths resolved against its folder (URLs, fsspec chains), and
output names kept inside the output folder."""

from __future__ import annotations

import os
import posixpath
import re
from typing import NoReturn
from urllib.parse import urljoin

from kf2v_tasks.storage.paths import RESERVED_DIR

OUTPUT_MAX_CHARS = 1024
OUTPUT_SEGMENT_MAX_CHARS = 255
OUTPUT_SUFFIX = ".mp4"
#: Folder under the output root that holds run state (ledger, temp files).
RESERVED_OUTPUT_DIR = RESERVED_DIR

# A URL or fsspec chain ("s3://", "simplecache::s3://") or a data: URI. A bare "x:y" is
# deliberately *not* a scheme so that odd-but-relative file names still resolve.
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*(?:://|::)|^data:", re.IGNORECASE)
_DRIVE_RE = re.compile(r"^[A-Za-z]:[\\/]")
_URL_PREFIX_RE = re.compile(r"^(.*?://[^/]*)(.*)$", re.DOTALL)


def manifest_base_dir(url: str) -> str:
    """The folder of a manifest URL or path, which relative frame paths are resolved against."""
    if _URL_RE.match(url):
        if url.lower().startswith(("http://", "https://")):
            url = url.split("#", 1)[0].split("?", 1)[0]
        prefix, path = _split_url(url)
        return prefix + (path.rsplit("/", 1)[0] if "/" in path else "") + "/"
    return os.path.dirname(os.path.abspath(url))


def resolve_frame(value: str, base_dir: str) -> str:
    """Resolve a frame cell against the manifest folder; absolute paths and URLs pass through."""
    from kf2v_tasks.storage.paths import resolve_relative  # lazy: imports fsspec

    if not base_dir or _is_absolute(value):
        return value
    if base_dir.lower().startswith(("http://", "https://")):
        return urljoin(base_dir if base_dir.endswith("/") else base_dir + "/", value)
    if "::" in base_dir.split("://", 1)[0]:
        # fsspec chain ("simplecache::s3://b/dir"): keep the chain, join onto its path.
        prefix, path = _split_url(base_dir)
        return prefix + posixpath.normpath(posixpath.join("/" + path.lstrip("/"), value))
    # One resolver for the whole project (bucket-anchored "..", "~" expansion, file://).
    return resolve_relative(value, base_dir)


def _is_absolute(value: str) -> bool:
    return value.startswith(("/", "\\")) or bool(_DRIVE_RE.match(value) or _URL_RE.match(value))


def _split_url(url: str) -> tuple[str, str]:
    """``"s3://bucket/a/b"`` → ``("s3://bucket", "/a/b")``."""
    m = _URL_PREFIX_RE.match(url)
    if not m:  # "data:" or "x::y" without "://": no path to split
        return url, ""
    return m.group(1), m.group(2)


def output_name(value: str) -> str:
    """An output cell normalised (``.mp4`` added when it has no extension).

    Raises:
        ValueError: its one problem, in words a user can act on.
    """

    def fail(reason: str) -> NoReturn:
        raise ValueError(reason)

    shown = show_cell(value)
    if "\\" in value:
        fail(f"{shown} contains a backslash; use '/' between folders")
    if has_control(value):
        fail(f"{shown} contains a control character")
    if ":" in value:
        fail(f"{shown} contains ':'; URL schemes and drive letters are not allowed")
    if value.startswith("/"):
        fail(f"{shown} is absolute; give a name relative to the output folder")
    if value.endswith("/"):
        fail(f"{shown} names a folder, not a file")
    if ".." in value.split("/"):
        fail(f"{shown} contains '..'; outputs must stay inside the output folder")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if not parts:
        fail(f"{shown} is not a file name")
    if parts[0] == RESERVED_OUTPUT_DIR:
        fail(f"{shown} is inside {RESERVED_OUTPUT_DIR!r}, reserved for run state")
    if value.startswith("~"):
        fail(f"{shown} starts with '~'; give a name relative to the output folder")
    if any(len(p) > OUTPUT_SEGMENT_MAX_CHARS for p in parts):
        fail(f"a part of {shown} is longer than {OUTPUT_SEGMENT_MAX_CHARS} characters")
    ext = posixpath.splitext(parts[-1])[1]
    if ext and ext.lower() != OUTPUT_SUFFIX:
        fail(f"{shown} must end in {OUTPUT_SUFFIX} (videos are MP4)")
    name = "/".join(parts) + ("" if ext else OUTPUT_SUFFIX)
    if len(name) > OUTPUT_MAX_CHARS:
        fail(f"output name has {len(name)} characters (at most {OUTPUT_MAX_CHARS})")
    from kf2v_tasks.storage.paths import safe_child  # lazy: imports fsspec

    try:
        # Backstop: the runner writes through safe_child, so it must accept every name we do.
        return safe_child("the output folder", name)
    except ValueError as exc:
        fail(str(exc))


def has_control(value: str) -> bool:
    """Whether ``value`` holds a control character (a pasted newline, a NUL …)."""
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in value)


def show_cell(value: str, limit: int = 60) -> str:
    """repr of a cell, shortened so one absurd cell does not flood the report."""
    return repr(value[: limit - 1] + "…") if len(value) > limit else repr(value)
