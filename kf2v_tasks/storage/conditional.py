"""Compare-and-swap for small files: exclusive create, conditional replace, conditional delete.

What two processes that race for one file can rely on, per storage:

* **Local disk** — atomic. A create writes a temp file and hard-links it onto the name
  (``os.link`` fails if the name exists, and readers never see a half-written file). A
  replace or delete takes an exclusive ``flock`` on ``<folder>/.lock``, checks the current
  content's version, then ``os.replace``/``os.remove``. Holds between processes on one
  machine (and on network file systems that honour ``flock`` and hard links).
* **S3** (s3fs) — atomic. A create is a PUT with ``If-None-Match: *``
  (``pipe_file(mode="create")``); a replace is a PUT with ``If-Match: <etag>``; a delete
  is a DeleteObject with ``If-Match``. S3 answers ``412 PreconditionFailed`` (or ``409
  ConditionalRequestConflict`` for two writes at the same instant) to the loser.
* **Any other fsspec store** (``memory://``, GCS, Azure, ...) — *racy*. A create checks the
  name is free, writes, reads back and compares; a replace reads, compares the version,
  writes and reads back. Two writers that interleave between the check and the write can
  both believe they won; the read-back catches most, not all, such races.
  :func:`guarantee` says which applies.

The *version* of a file is its S3 ETag, or the sha256 of its bytes elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal, Optional

from kf2v_tasks.storage.objects import get_object, is_s3, object_exists, stat_object
from kf2v_tasks.storage.paths import forget_cached, is_local, open_fs, run_sync

try:  # POSIX only; without it a local replace is check-then-replace (see guarantee())
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ConditionFailedError",
    "create_exclusive",
    "create_exclusive_sync",
    "delete_if",
    "delete_if_sync",
    "guarantee",
    "read_versioned",
    "read_versioned_sync",
    "replace_if",
    "replace_if_sync",
]

Guarantee = Literal["atomic", "racy"]

#: S3 error codes that mean "your condition did not hold" (412, or 409 for a same-instant race).
_LOST_RACE_CODES = frozenset(
    {"PreconditionFailed", "ConditionalRequestConflict", "412", "409", "NoSuchKey"}
)


class ConditionFailedError(Exception):
    """The file is not at the version the caller expected (changed, replaced or gone)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"{path}: {reason}")


def guarantee(url: str, storage_options: Optional[dict] = None) -> Guarantee:
    """``"atomic"`` where two racing writers cannot both win, else ``"racy"``."""
    fs, _ = open_fs(url, storage_options)
    if is_local(fs):
        return "atomic" if fcntl is not None else "racy"
    return "atomic" if is_s3(fs) else "racy"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _s3_lost_race(exc: BaseException) -> bool:
    """Whether an s3fs error is S3 saying "your condition did not hold"."""
    if isinstance(exc, FileExistsError):
        return True
    cause = exc.__cause__
    response = getattr(cause, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code", ""))
    status = str((response.get("ResponseMetadata") or {}).get("HTTPStatusCode", ""))
    return code in _LOST_RACE_CODES or status in ("412", "409")


# ---------------------------------------------------------------------- local disk


@contextlib.contextmanager
def _folder_lock(folder: str) -> Iterator[None]:
    """Exclusive flock on ``<folder>/.lock`` (one lock file per folder, never removed)."""
    os.makedirs(folder, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows: documented as racy
        yield
        return
    fd = os.open(os.path.join(folder, ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _local_write_temp(path: str, data: bytes) -> str:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the name must not outlive the data on a crash
    return tmp


def _local_create(path: str, data: bytes) -> str:
    tmp = _local_write_temp(path, data)
    try:
        os.link(tmp, path)  # atomic, fails if the name exists: exactly one creator wins
    finally:
        os.remove(tmp)
    return _digest(data)


def _local_read(path: str) -> tuple[bytes, str]:
    with open(path, "rb") as f:
        data = f.read()
    return data, _digest(data)


def _check(path: str, read: Callable[[], tuple[bytes, str]], version: str) -> None:
    """Raise unless ``read()`` finds ``path`` still at ``version``."""
    try:
        _, current = read()
    except FileNotFoundError:
        raise ConditionFailedError(path, "it no longer exists") from None
    if current != version:
        raise ConditionFailedError(path, "it changed since it was read")


def _local_replace(path: str, data: bytes, version: str) -> str:
    with _folder_lock(os.path.dirname(path)):
        _check(path, lambda: _local_read(path), version)
        tmp = _local_write_temp(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
    return _digest(data)


def _local_delete(path: str, version: str) -> None:
    with _folder_lock(os.path.dirname(path)):
        _check(path, lambda: _local_read(path), version)
        os.remove(path)


# ---------------------------------------------------------------------- S3


def _s3_create(fs: Any, path: str, data: bytes) -> str:
    try:
        out = fs.pipe_file(path, data, mode="create")  # If-None-Match: *
    except OSError as exc:
        if _s3_lost_race(exc):
            raise FileExistsError(errno.EEXIST, "already exists", path) from None
        raise
    forget_cached(fs, path)
    return str((out or {}).get("ETag") or _s3_etag(fs, path))


def _s3_etag(fs: Any, path: str) -> str:
    return str(stat_object(fs, path)["ETag"])


def _s3_read(fs: Any, path: str) -> tuple[bytes, str]:
    # One GET gives the bytes and the ETag of those very bytes (HEAD + GET would race).
    data, etag = get_object(fs, path)
    return data, str(etag)


def _s3_replace(fs: Any, path: str, data: bytes, version: str) -> str:
    try:
        out = fs.pipe_file(path, data, IfMatch=version)
    except (OSError, FileNotFoundError) as exc:
        if isinstance(exc, FileNotFoundError) or _s3_lost_race(exc):
            raise ConditionFailedError(path, "it changed or is gone since it was read") from None
        raise
    forget_cached(fs, path)
    return str((out or {}).get("ETag") or _s3_etag(fs, path))


def _s3_delete(fs: Any, path: str, version: str) -> None:
    bucket, key, _ = fs.split_path(path)
    try:
        fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=version)
    except (OSError, FileNotFoundError) as exc:
        if isinstance(exc, FileNotFoundError) or _s3_lost_race(exc):
            raise ConditionFailedError(path, "it changed or is gone since it was read") from None
        raise
    forget_cached(fs, path)


# ---------------------------------------------------------------------- other stores (racy)


def _other_read(fs: Any, path: str) -> tuple[bytes, str]:
    data, _ = get_object(fs, path)
    return data, _digest(data)


def _other_create(fs: Any, path: str, data: bytes) -> str:
    if object_exists(fs, path):
        raise FileExistsError(errno.EEXIST, "already exists", path)
    fs.pipe_file(path, data)
    # Racy: another writer may have written between the check and our write. Reading back
    # catches a writer that came after us; one that came before and was overwritten
    # cannot be detected here.
    back, version = _other_read(fs, path)
    if back != data:
        raise FileExistsError(errno.EEXIST, "another writer won", path)
    return version


def _other_replace(fs: Any, path: str, data: bytes, version: str) -> str:
    _check(path, lambda: _other_read(fs, path), version)
    fs.pipe_file(path, data)
    back, new = _other_read(fs, path)
    if back != data:
        raise ConditionFailedError(path, "another writer replaced it at the same time")
    return new


def _other_delete(fs: Any, path: str, version: str) -> None:
    _check(path, lambda: _other_read(fs, path), version)
    fs.rm_file(path)


# ---------------------------------------------------------------------- the API


def create_exclusive_sync(url: str, data: bytes, storage_options: Optional[dict] = None) -> str:
    """Create ``url`` with ``data`` only if it does not exist; return its version.

    Raises:
        FileExistsError: the file exists (someone else created it first).
    """
    fs, path = open_fs(url, storage_options)
    if is_local(fs):
        return _local_create(path, data)
    if is_s3(fs):
        return _s3_create(fs, path, data)
    return _other_create(fs, path, data)


def read_versioned_sync(url: str, storage_options: Optional[dict] = None) -> tuple[bytes, str]:
    """The bytes of ``url`` and their version, from the store (never a cache).

    Raises:
        FileNotFoundError: no such file.
    """
    fs, path = open_fs(url, storage_options)
    if is_local(fs):
        return _local_read(path)
    if is_s3(fs):
        return _s3_read(fs, path)
    return _other_read(fs, path)


def replace_if_sync(
    url: str, data: bytes, version: str, storage_options: Optional[dict] = None
) -> str:
    """Replace ``url`` with ``data`` only if it is still at ``version``; return the new version.

    Raises:
        ConditionFailedError: the file changed or disappeared since ``version`` was read.
    """
    fs, path = open_fs(url, storage_options)
    if is_local(fs):
        return _local_replace(path, data, version)
    if is_s3(fs):
        return _s3_replace(fs, path, data, version)
    return _other_replace(fs, path, data, version)


def delete_if_sync(url: str, version: str, storage_options: Optional[dict] = None) -> None:
    """Delete ``url`` only if it is still at ``version``.

    Raises:
        ConditionFailedError: the file changed or disappeared since ``version`` was read.
    """
    fs, path = open_fs(url, storage_options)
    if is_local(fs):
        return _local_delete(path, version)
    if is_s3(fs):
        return _s3_delete(fs, path, version)
    return _other_delete(fs, path, version)


async def create_exclusive(url: str, data: bytes, *, storage_options: Optional[dict] = None) -> str:
    """:func:`create_exclusive_sync` in a worker thread."""
    return await run_sync(create_exclusive_sync, url, data, storage_options)


async def read_versioned(url: str, *, storage_options: Optional[dict] = None) -> tuple[bytes, str]:
    """:func:`read_versioned_sync` in a worker thread."""
    return await run_sync(read_versioned_sync, url, storage_options)


async def replace_if(
    url: str, data: bytes, version: str, *, storage_options: Optional[dict] = None
) -> str:
    """:func:`replace_if_sync` in a worker thread."""
    return await run_sync(replace_if_sync, url, data, version, storage_options)


async def delete_if(url: str, version: str, *, storage_options: Optional[dict] = None) -> None:
    """:func:`delete_if_sync` in a worker thread."""
    await run_sync(delete_if_sync, url, version, storage_options)
