"""Small committed files on any fsspec storage: atomic writes, fresh reads, hashes, copies.

Readers never see half a file. On local disk a file is written to a hidden temp name
beside it (``<dir>/.kf2v/tmp/<uuid>-<name>``), fsynced, then renamed (``os.replace``); on
object stores a small file is one PUT, which replaces the object atomically, and a large
copy goes to a temp object that is then moved (the copy appears in one step). Reads start
from the store, never from fsspec's listing cache, since another worker may have written
the file since. The streamed video download lives in :mod:`kf2v_tasks.storage.download`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from typing import Any, Optional

import fsspec
from pydantic import BaseModel, Field

from kf2v_tasks.storage.content_types import content_type_for
from kf2v_tasks.storage.content_types import type_kwargs as _type_kwargs
from kf2v_tasks.storage.objects import object_exists, read_object
from kf2v_tasks.storage.paths import (
    RESERVED_DIR,
    forget_cached,
    is_local,
    is_object_store,
    is_url,
    open_fs,
    run_sync,
)

__all__ = [
    "MIB",
    "StoredFile",
    "copy_video",
    "read_bytes",
    "read_json",
    "read_text",
    "remove_stale_temps",
    "sidecar_path",
    "verify_file",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

logger = logging.getLogger("kf2v_tasks.storage.files")

MIB = 1024 * 1024
#: s3fs part size: bounds the upload buffer (peak memory); S3 parts must be at least 5 MiB.
WRITE_BLOCK_SIZE = 5 * MIB + 64 * 1024


class StoredFile(BaseModel):
    """A file committed at its final path: where, its sha256 and size, and how it got there."""

    path: str = Field(description="Final path or URL of the file.")
    sha256: str = Field(description="Hex sha256 of the committed bytes.")
    bytes: int = Field(description="Size of the committed file.")
    sidecar_path: Optional[str] = Field(
        default=None, description="The JSON sidecar written beside it, if any."
    )
    attempts: int = Field(default=1, description="HTTP requests the download took (0 for a copy).")
    resumed: bool = Field(default=False, description="Whether a download resumed mid-way.")


def sidecar_path(video_path: str) -> str:
    """The JSON sidecar beside a video: same folder, same stem, ``.json``."""
    head, sep, name = video_path.rpartition("/")
    stem, dot, _ext = name.rpartition(".")
    stem = stem if dot and stem else name
    return f"{head}{sep}{stem}.json"


# ---------------------------------------------------------------------- temp files


def _tmp_path(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A hidden temp name beside ``path`` on the same filesystem (same-device rename)."""
    folder, _, name = path.rstrip("/").rpartition("/")
    return f"{folder}/{RESERVED_DIR}/tmp/{uuid.uuid4().hex}-{name}"


def _open_write(fs: fsspec.AbstractFileSystem, path: str, content_type: Optional[str] = None):
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return open(path, "wb")
    # The temp object carries the type: S3's server-side copy onto the final name keeps it.
    return fs.open(path, "wb", block_size=WRITE_BLOCK_SIZE, **_type_kwargs(fs, content_type))


def _discard(fs: fsspec.AbstractFileSystem, f: Any, path: str, direct: bool = False) -> None:
    """Abandon a temp file: abort pending uploads, then delete whatever exists.

    ``direct``: ``f`` is a deferred-commit upload to the final ``path`` itself; aborting it
    is all there is to do (deleting ``path`` would delete the previous good video).
    """
    try:
        if hasattr(f, "discard") and not is_local(fs):
            f.discard()  # s3fs: abort the multipart upload instead of completing it
            f.closed = True  # else __del__ would try to complete the discarded upload
        else:
            f.close()
    except Exception:  # cleanup is best-effort; the temp name is never read as a result
        logger.debug("closing temp %s failed", path, exc_info=True)
    if not direct:
        _remove_quietly(fs, path)


def _remove_quietly(fs: fsspec.AbstractFileSystem, path: str) -> None:
    try:
        if is_local(fs):
            if os.path.exists(path):
                os.remove(path)
        elif object_exists(fs, path):  # one HeadObject on S3, present or not
            fs.rm_file(path)
    except Exception:
        logger.warning("could not remove temp file %s", path, exc_info=True)


def _commit(fs: fsspec.AbstractFileSystem, tmp: str, dest: str) -> None:
    """Move a finished temp file onto its final name, atomically where the store allows."""
    if is_local(fs):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(tmp, dest)  # atomic rename on the same filesystem
        return
    # Object stores: the copy appears at ``dest`` in one step (server-side copy), then the
    # temp is deleted; ``dest`` never holds a partial object.
    fs.mv(tmp, dest)
    forget_cached(fs, dest)


def _fsync_close(f: Any, local: bool) -> None:
    if local:
        f.flush()
        os.fsync(f.fileno())
    f.close()


# ---------------------------------------------------------------------- atomic writes


def _write_bytes_atomic_sync(
    dest: str, data: bytes, storage_options: Optional[dict], content_type: Optional[str]
) -> None:
    fs, path = open_fs(dest, storage_options)
    if is_object_store(fs):
        # A single PUT replaces the object atomically.
        fs.pipe_file(path, data, **_type_kwargs(fs, content_type))
        return
    tmp = _tmp_path(fs, path)
    f = _open_write(fs, tmp)
    try:
        f.write(data)
        _fsync_close(f, is_local(fs))
        _commit(fs, tmp, path)
    except BaseException:
        _discard(fs, f, tmp)
        raise


async def write_bytes_atomic(
    dest: str,
    data: bytes,
    *,
    storage_options: Optional[dict] = None,
    content_type: Optional[str] = None,
) -> None:
    """Write small ``data`` to ``dest`` so readers see the old or the new content, never half.

    ``content_type``: the object's Content-Type on S3 (default: from the name,
    :func:`content_type_for`).
    """
    kind = content_type or content_type_for(dest)
    await run_sync(_write_bytes_atomic_sync, dest, data, storage_options, kind)


async def write_json_atomic(
    dest: str, data: dict[str, Any], *, storage_options: Optional[dict] = None
) -> None:
    """Write a JSON document (e.g. a sidecar) atomically."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    await write_bytes_atomic(
        dest, text.encode(), storage_options=storage_options, content_type="application/json"
    )


async def write_text_atomic(
    dest: str,
    text: str,
    *,
    storage_options: Optional[dict] = None,
    content_type: Optional[str] = None,
) -> None:
    """Write a UTF-8 text file (e.g. ``results.csv``) atomically (``content_type``: as
    :func:`write_bytes_atomic`)."""
    await write_bytes_atomic(
        dest, text.encode(), storage_options=storage_options, content_type=content_type
    )


# ---------------------------------------------------------------------- fresh reads


def _read_bytes_sync(path: str, storage_options: Optional[dict]) -> bytes:
    fs, p = open_fs(path, storage_options)
    return read_object(fs, p)  # one GetObject on S3, a missing file included


async def read_bytes(path: str, *, storage_options: Optional[dict] = None) -> bytes:
    """Read a small file whole, from the store (not fsspec's listing cache).

    Raises:
        FileNotFoundError: no such file.
    """
    return await run_sync(_read_bytes_sync, path, storage_options)


async def read_json(path: str, *, storage_options: Optional[dict] = None) -> Any:
    """Read a JSON document, from the store (not fsspec's listing cache).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON.
    """
    return json.loads(await run_sync(_read_bytes_sync, path, storage_options))


async def read_text(path: str, *, storage_options: Optional[dict] = None) -> str:
    """Read a small UTF-8 text file from any fsspec URL, from the store (not a cache).

    Raises:
        FileNotFoundError: no such file.
        UnicodeDecodeError: not UTF-8.
    """
    data = await run_sync(_read_bytes_sync, path, storage_options)
    return data.decode("utf-8")


def _hash_sync(path: str, storage_options: Optional[dict]) -> tuple[str, int]:
    fs, p = open_fs(path, storage_options)
    forget_cached(fs, p)
    h = hashlib.sha256()
    n = 0
    with fs.open(p, "rb", block_size=WRITE_BLOCK_SIZE) as f:
        while chunk := f.read(MIB):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


async def verify_file(path: str, sha256: str, *, storage_options: Optional[dict] = None) -> bool:
    """Whether ``path`` exists and hashes (streamed) to ``sha256``."""
    if not sha256:
        return False
    try:
        digest, _ = await run_sync(_hash_sync, path, storage_options)
    except (FileNotFoundError, IsADirectoryError):
        return False
    return digest == sha256.lower()


# ---------------------------------------------------------------------- copies


def _copy_sync(src: str, dest: str, storage_options: Optional[dict]) -> tuple[str, int]:
    sfs, spath = open_fs(src, storage_options)
    dfs, dpath = open_fs(dest, storage_options)
    forget_cached(sfs, spath)
    tmp = _tmp_path(dfs, dpath)
    h = hashlib.sha256()
    n = 0
    out = _open_write(dfs, tmp, content_type_for(dest))
    try:
        with sfs.open(spath, "rb", block_size=WRITE_BLOCK_SIZE) as f:
            while chunk := f.read(MIB):
                h.update(chunk)
                out.write(chunk)
                n += len(chunk)
        _fsync_close(out, is_local(dfs))
        _commit(dfs, tmp, dpath)
    except BaseException:
        _discard(dfs, out, tmp)
        raise
    return h.hexdigest(), n


async def copy_video(
    src: str,
    dest: str,
    *,
    storage_options: Optional[dict] = None,
) -> StoredFile:
    """Copy a committed video (and its sidecar, if any) to ``dest`` atomically, streamed.

    Used when two manifest rows ask for identical work: the second gets a copy, not a
    second paid generation. The copied sidecar names its own video and ``copied_from``.
    """
    digest, size = await run_sync(_copy_sync, src, dest, storage_options)
    side: Optional[str] = None
    try:
        doc = await read_json(sidecar_path(src), storage_options=storage_options)
    except (FileNotFoundError, ValueError):
        doc = None
    if isinstance(doc, dict):
        doc.update(video=dest, copied_from=src, sha256=digest, bytes=size)
        side = sidecar_path(dest)
        await write_json_atomic(side, doc, storage_options=storage_options)
    return StoredFile(path=dest, sha256=digest, bytes=size, sidecar_path=side, attempts=0)


# ---------------------------------------------------------------------- cleanup


#: Seconds a temp file must be untouched before it counts as abandoned: another shard of the
#: same run may still be writing a younger one.
STALE_TEMP_SECONDS = 900.0


def _remove_stale_temps_sync(folder: str) -> int:
    tmp = os.path.join(folder, RESERVED_DIR, "tmp")
    removed = 0
    if not os.path.isdir(tmp):
        return 0
    cutoff = time.time() - STALE_TEMP_SECONDS
    for entry in os.scandir(tmp):
        # A temp still being written keeps a fresh mtime; only abandoned ones age.
        if entry.is_file() and entry.stat().st_mtime < cutoff:
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)
                removed += 1
    return removed


async def remove_stale_temps(root: str) -> int:
    """Delete temp files a killed run left under ``<root>/.kf2v/tmp`` (local roots only).

    Object stores need nothing: an interrupted multipart upload never becomes an object.
    """
    local = root[len("file://") :] if root.startswith("file://") else root
    if is_url(local):
        return 0
    return await run_sync(_remove_stale_temps_sync, local)
