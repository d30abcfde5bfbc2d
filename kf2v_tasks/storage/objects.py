"""One object, one request: read, stat or probe a single file with the fewest store requests.

s3fs answers ``info()``/``exists()`` with a HeadObject and, for a missing key, a ListObjects
of ``<key>/`` too (it might be a "folder"); its ``cat_file`` sends a HeadObject before the
GetObject. For a key we know names a file, one request says everything: :func:`read_object`
(one GetObject), :func:`stat_object` (one HeadObject), :func:`object_exists`,
:func:`open_object` (no HeadObject when the size is given), :func:`list_files` (one
ListObjectsV2 per 1,000 keys, bounded). None reads fsspec's listing cache: the answer is
the store's, now. Elsewhere they are the plain fsspec calls.
"""

from __future__ import annotations

from typing import Any, Optional

import fsspec
from fsspec.asyn import sync as fsspec_sync

from kf2v_tasks.storage.paths import forget_cached, is_local

__all__ = [
    "get_object",
    "is_s3",
    "list_files",
    "object_exists",
    "open_object",
    "read_object",
    "stat_object",
]

#: Keys in one S3 listing page (the most S3 returns).
LIST_PAGE = 1000


def is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is s3fs (S3 or an S3-compatible store)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in ("s3", "s3a") for p in protocols) and hasattr(fs, "_call_s3")


def _bucket_key(fs: Any, path: str) -> tuple[str, str]:
    bucket, key, _ = fs.split_path(path)
    if not key:  # a bucket is no object
        raise IsADirectoryError(path)
    return bucket, key


def _s3_call(fs: Any, method: str, path: str) -> Any:
    bucket, key = _bucket_key(fs, path)
    return fsspec_sync(fs.loop, fs._call_s3, method, Bucket=bucket, Key=key)


def _s3_get(fs: Any, path: str) -> tuple[bytes, str]:
    bucket, key = _bucket_key(fs, path)

    async def get() -> tuple[bytes, str]:
        # One GET gives the bytes and the ETag of those very bytes (HEAD + GET would race).
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        try:
            return await resp["Body"].read(), str(resp["ETag"])
        finally:
            resp["Body"].close()

    return fsspec_sync(fs.loop, get)


def get_object(fs: fsspec.AbstractFileSystem, path: str) -> tuple[bytes, Optional[str]]:
    """The whole content of the file at ``path`` and, on S3, its ETag; in one request.

    Raises:
        FileNotFoundError: no such file.
    """
    if is_s3(fs):
        return _s3_get(fs, path)
    if is_local(fs):
        with open(path, "rb") as f:
            return f.read(), None
    forget_cached(fs, path)
    return fs.cat_file(path), None


def read_object(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """The whole content of the file at ``path``: one GetObject on S3 (no HeadObject).

    Raises:
        FileNotFoundError: no such file.
    """
    return get_object(fs, path)[0]


def stat_object(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any]:
    """What the store says of the file at ``path``: one HeadObject on S3 (no ListObjects).

    Returns ``fs.info``-style details: ``name``, ``size``, ``type`` (``"file"``) and, on
    S3, ``ETag``, ``LastModified`` and ``ContentType``.

    Raises:
        FileNotFoundError: no such file (on S3 a "folder" of other keys is no file either).
    """
    if is_s3(fs):
        out = _s3_call(fs, "head_object", path)
        return {
            "name": path,
            "size": out["ContentLength"],
            "type": "file",
            "ETag": out.get("ETag", ""),
            "LastModified": out.get("LastModified", ""),
            "ContentType": out.get("ContentType"),
        }
    forget_cached(fs, path)
    info = fs.info(path)
    if info.get("type") == "directory":
        raise FileNotFoundError(path)
    return info


def object_exists(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether a file is at ``path``: one HeadObject on S3 (a 404 is ``False``)."""
    try:
        stat_object(fs, path)
    except (FileNotFoundError, IsADirectoryError):
        return False
    return True


def open_object(fs: fsspec.AbstractFileSystem, path: str, *, size: Optional[int] = None) -> Any:
    """A seekable binary reader of the file at ``path`` (ranges fetched on demand).

    ``size``: the file's size when the caller knows it (it has just written the file);
    s3fs then sends no HeadObject before the first range. Without it, the reader asks
    the store once and checks every range against that version (``If-Match``).
    """
    if is_local(fs):
        return open(path, "rb")
    forget_cached(fs, path)
    if not size or not is_s3(fs):
        return fs.open(path, "rb")
    f = fs.open(path, "rb", size=size)
    # s3fs asks for the details (a HeadObject) at its first range unless it has them.
    f.details = {"name": path, "size": size, "type": "file"}
    return f


def list_files(
    fs: fsspec.AbstractFileSystem, folder: str, *, max_pages: Optional[int] = None
) -> tuple[list[str], Optional[str]]:
    """The files directly in ``folder`` (sorted paths), from the store (never a cache).

    On S3 one ListObjectsV2 per :data:`LIST_PAGE` keys, at most ``max_pages`` of them.
    Returns the paths and, when it stopped before the end, the last path it covered (every
    path sorting after it is unknown; ``""`` if none); ``None`` when the listing is
    complete. A missing folder is empty.
    """
    if not is_s3(fs):
        forget_cached(fs, folder)
        try:
            found = fs.ls(folder, detail=True)
        except FileNotFoundError:
            return [], None
        return sorted(f["name"] for f in found if f.get("type") == "file"), None
    bucket, key, _ = fs.split_path(folder)
    prefix = key.rstrip("/") + "/" if key else ""

    async def pages() -> tuple[list[str], Optional[str]]:
        out: list[str] = []
        token: Optional[str] = None
        done = 0
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            page = await fs._call_s3("list_objects_v2", MaxKeys=LIST_PAGE, **kwargs)
            out += [f"{bucket}/{o['Key']}" for o in page.get("Contents", [])]
            done += 1
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if token is None:
                return out, None
            if max_pages is not None and done >= max_pages:
                return out, out[-1] if out else ""  # "": nothing covered yet

    return fsspec_sync(fs.loop, pages)
