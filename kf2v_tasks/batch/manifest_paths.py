"""The manifest's folder, and relative frame paths resolved against it (URLs, fsspec chains)."""

from __future__ import annotations

import os
import posixpath
import re
from urllib.parse import urljoin

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
