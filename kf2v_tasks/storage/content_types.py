"""What a stored file is served as: the Content-Type of each kind of file this package writes.

S3 serves an object with the Content-Type it was stored with (static hosting, presigned
URLs). Without one (``binary/octet-stream``) a browser downloads the gallery instead of
showing it and will not play a video inline, and an image artifact shows nothing. The
writers of :mod:`kf2v_tasks.storage.files` and the streamed download set it from the
file's name (:func:`content_type_for`) unless told otherwise. Local disk has no such
thing; other object stores keep their own default.
"""

from __future__ import annotations

from typing import Optional

import fsspec

__all__ = ["content_type_for", "type_kwargs"]

#: The Content-Type of the files this package writes, by name ending.
_CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
}
#: Stores whose objects carry a Content-Type that s3fs sets with ``ContentType=``.
_S3_PROTOCOLS = frozenset({"s3", "s3a"})


def content_type_for(path: str) -> Optional[str]:
    """The Content-Type of a file this package writes, from its name (``None``: unknown)."""
    name = path.rstrip("/").rpartition("/")[2].lower()
    dot = name.rfind(".")
    return _CONTENT_TYPES.get(name[dot:]) if dot > 0 else None


def type_kwargs(fs: fsspec.AbstractFileSystem, content_type: Optional[str]) -> dict[str, str]:
    """``ContentType=`` for a write to ``fs`` if it is S3 (else nothing), for s3fs calls.

    s3fs passes it to the PUT or the multipart create; other calls of an upload drop it.
    """
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if content_type and _S3_PROTOCOLS & set(protocols):
        return {"ContentType": content_type}
    return {}  # local disk has no such thing; other stores keep their own default
