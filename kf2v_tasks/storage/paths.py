"""Small fsspec helpers shared by frames, ledger and storage: one way to name and open files.

Paths may be plain local paths, ``file://`` URLs or any fsspec URL (``s3://``, ``memory://``,
…). fsspec's sync API blocks, so async callers run it through :func:`run_sync`
(``asyncio.to_thread``); s3fs is safe to call synchronously from a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import re
from collections.abc import Callable
from typing import Any, Optional, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

T = TypeVar("T")

#: ``scheme://`` at the start of a string (s3://, file://, memory://, https://, …).
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

#: botocore retries for S3 unless the caller sets its own: "standard" mode retries 500,
#: 502, 503, 504, throttling and connection errors with capped exponential backoff. The
#: default (legacy, 5 attempts, sub-second waits) gives up inside a short outage, and s3fs
#: does not retry a 500 itself; a ledger or claim write lost that way fails its row.
S3_RETRIES = {"mode": "standard", "max_attempts": 10}

#: Filesystems on which a single PUT (``fs.pipe``) replaces an object atomically.
_OBJECT_STORE_PROTOCOLS = frozenset(
    {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "memory"}
)

#: Hidden folder under an output root for the ledger and in-progress temp files.
RESERVED_DIR = ".kf2v"


def is_url(value: str) -> bool:
    """Whether ``value`` starts with ``scheme://`` (anything but a plain local path)."""
    return bool(_URL_RE.match(value))


def open_fs(
    url: str, storage_options: Optional[dict] = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and in-filesystem path of ``url`` (plain paths: local, ``~`` expanded)."""
    if not is_url(url):
        url = os.path.abspath(os.path.expanduser(url))
    fs, path = fsspec.core.url_to_fs(url, **with_s3_retries(url, storage_options))
    return fs, path


def with_s3_retries(url: str, storage_options: Optional[dict]) -> dict:
    """``storage_options``, plus :data:`S3_RETRIES` for an S3 URL that does not set retries."""
    options = dict(storage_options or {})
    if url.split("://", 1)[0].lower() not in ("s3", "s3a"):
        return options
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("retries", dict(S3_RETRIES))
    options["config_kwargs"] = config
    return options


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local disk (where ``os.replace`` gives atomic renames)."""
    return isinstance(fs, LocalFileSystem)


def is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether a single ``fs.pipe`` of a small object is atomic on ``fs``."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in _OBJECT_STORE_PROTOCOLS for p in protocols)


def forget_cached(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Drop cached listings of ``path`` and its parents before reading it.

    fsspec shares one filesystem instance per set of options, and s3fs answers ``info``
    / ``size`` (used by ``cat_file`` and ``open``) from its listing cache: after any
    ``ls``, an object written since by another worker would look missing. For the ledger,
    "missing" means "pay again", so every read starts from the store, not the cache.
    """
    if is_local(fs):
        return
    try:
        fs.invalidate_cache(path)
    except Exception:  # a backend without a cache: nothing to forget
        pass


def join(root: str, *parts: str) -> str:
    """Join path parts onto a local path or a URL, using ``/`` for URLs."""
    clean = [p.strip("/") for p in parts if p and p.strip("/")]
    if not is_url(root):
        return os.path.join(root, *clean) if clean else root
    if not clean:
        return root
    if root.endswith("://"):  # e.g. "memory://"
        return root + "/".join(clean)
    return root.rstrip("/") + "/" + "/".join(clean)


def parent(path: str) -> str:
    """The folder containing ``path`` (local path or URL)."""
    if not is_url(path):
        return os.path.dirname(os.path.abspath(os.path.expanduser(path)))
    scheme, rest = path.split("://", 1)
    head = posixpath.dirname(rest.rstrip("/"))
    return f"{scheme}://{head}"


def basename(path: str) -> str:
    """The last component of a local path or URL (query and fragment dropped)."""
    if is_url(path):
        path = path.split("?", 1)[0].split("#", 1)[0]
    return posixpath.basename(path.replace("\\", "/").rstrip("/"))


def resolve_relative(value: str, base_dir_url: str) -> str:
    """Resolve a frame path given relative to a manifest's folder.

    URLs, ``data:`` URIs and absolute local paths are returned unchanged; relative paths are
    joined onto ``base_dir_url`` (itself local or a URL such as ``s3://bucket/manifests``)
    and normalised (``./`` and ``../`` folded).
    """
    value = value.strip()
    if is_url(value) or value.startswith("data:"):
        return value
    if value.startswith("~"):
        return os.path.expanduser(value)
    if os.path.isabs(value):
        return value
    if not is_url(base_dir_url):
        return os.path.normpath(os.path.join(os.path.expanduser(base_dir_url), value))
    scheme, rest = base_dir_url.split("://", 1)
    rel = value.replace("\\", "/")
    if scheme == "file":
        return "file://" + posixpath.normpath(posixpath.join(rest or "/", rel))
    # Keep the bucket (first component) fixed: "../" may not climb above it.
    bucket, _, key = rest.strip("/").partition("/")
    joined = posixpath.normpath(posixpath.join("/", key, rel)).lstrip("/")
    return f"{scheme}://{bucket}/{joined}" if joined else f"{scheme}://{bucket}"


def safe_child(root: str, name: str) -> str:
    """Check that ``name`` stays inside ``root`` and return it normalised (``a/./b`` → ``a/b``).

    Rejected with a :class:`ValueError` naming the reason: empty names, ``..`` components,
    absolute paths, backslashes, NUL and control characters, URL schemes or drive letters,
    names ending in ``/`` and names inside the reserved ``.kf2v`` folder.
    """
    if name is None or not name.strip():
        raise ValueError("output name is empty")
    if "\x00" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"output name {name!r} contains a NUL or control character")
    if "\\" in name:
        raise ValueError(f"output name {name!r} contains a backslash; use '/' between folders")
    if is_url(name) or "://" in name:
        raise ValueError(f"output name {name!r} is a URL; give a path relative to {root!r}")
    if re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"output name {name!r} starts with a drive letter")
    if name.startswith("/") or name.startswith("~"):
        raise ValueError(f"output name {name!r} is absolute; give a path relative to {root!r}")
    if name.endswith("/"):
        raise ValueError(f"output name {name!r} names a folder, not a file")
    parts = name.split("/")
    if ".." in parts:
        raise ValueError(f"output name {name!r} contains '..' and could leave {root!r}")
    clean = posixpath.normpath(name)
    if clean in (".", ""):
        raise ValueError(f"output name {name!r} does not name a file")
    if clean.split("/", 1)[0] == RESERVED_DIR:
        raise ValueError(f"output name {name!r} is inside the reserved {RESERVED_DIR!r} folder")
    return clean


async def run_sync(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a blocking fsspec call in a worker thread."""
    return await asyncio.to_thread(func, *args, **kwargs)


def resolves_outside(root: str, dest: str) -> bool:
    """Whether a *local* ``dest`` really lands outside ``root`` once symlinks are followed.

    ``safe_child`` checks the text of a name; a symlinked folder inside a local output
    root could still lead elsewhere. Object stores have no symlinks, so they never do.
    """

    def local(p: str) -> Optional[str]:
        if p.startswith("file://"):
            return p[len("file://") :]
        return None if is_url(p) else p

    lroot, ldest = local(root), local(dest)
    if lroot is None or ldest is None:
        return False
    real_root = os.path.realpath(lroot)
    real_dest = os.path.realpath(ldest)
    return os.path.commonpath([real_root, real_dest]) != real_root
