"""Presigned HTTPS links to objects on S3, so a browser can open a kept video or poster.

Signed locally with the output's own storage options through s3fs (botocore's presigned
``get_object``); nothing is sent to S3. SigV4 signatures live at most seven days, so a
longer expiry is cut to that and the link says when it stops working. A presigned URL is a
capability for one object until it expires (the point of an artifact link); it is never
logged (:mod:`kf2v_tasks.redaction` strips query strings from logged URLs).
"""

from __future__ import annotations

import mimetypes
from datetime import UTC, datetime, timedelta
from typing import Optional

from pydantic import BaseModel, Field

from kf2v_tasks.storage.paths import open_fs, run_sync

__all__ = [
    "DEFAULT_EXPIRY_SECONDS",
    "MAX_EXPIRY_SECONDS",
    "PresignedUrl",
    "can_presign",
    "presign",
    "presign_many",
]

#: The longest a SigV4 presigned URL can live (seven days).
MAX_EXPIRY_SECONDS = 7 * 24 * 3600
#: How long links in artifacts live unless asked otherwise.
DEFAULT_EXPIRY_SECONDS = MAX_EXPIRY_SECONDS

_SCHEMES = frozenset({"s3", "s3a"})


class PresignedUrl(BaseModel):
    """An HTTPS link to one object, and when it stops working."""

    source: str = Field(description="The object's s3:// URL.")
    url: str = Field(description="The presigned https URL (holds a signature: never log it).")
    expires_at: datetime = Field(description="When the link stops working (aware UTC).")
    expires_in: int = Field(description="Seconds the link was signed for.")

    def __repr__(self) -> str:  # the signature stays out of reprs and tracebacks
        return f"PresignedUrl({self.source!r}, expires_at={self.expires_at.isoformat()!r})"

    __str__ = __repr__

    def expiry_text(self) -> str:
        """When the link expires, for people: ``2030-01-01 00:00 UTC``."""
        return self.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def can_presign(url: str) -> bool:
    """Whether ``url`` is on a store this module can presign (S3)."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() in _SCHEMES


def _expiry(expires_in: int) -> int:
    if expires_in < 1:
        raise ValueError(f"expires_in must be at least 1 second, not {expires_in}")
    return min(int(expires_in), MAX_EXPIRY_SECONDS)


def _sign_sync(
    urls: list[str], storage_options: Optional[dict], expires_in: int
) -> list[PresignedUrl]:
    out = []
    for url in urls:
        if not can_presign(url):
            raise ValueError(f"{url!r} is not an s3:// URL; only S3 objects can be presigned")
        fs, path = open_fs(url, storage_options)
        signed_at = datetime.now(UTC)
        # The object may have been stored as binary/octet-stream: the link asks S3 to
        # answer with the type its name says, so a browser shows it instead of saving it.
        kind, _ = mimetypes.guess_type(path)
        extra = {"ResponseContentType": kind} if kind else {}
        out.append(
            PresignedUrl(
                source=url,
                url=fs.sign(path, expiration=expires_in, **extra),
                expires_at=signed_at + timedelta(seconds=expires_in),
                expires_in=expires_in,
            )
        )
    return out


async def presign(
    url: str,
    *,
    storage_options: Optional[dict] = None,
    expires_in: int = DEFAULT_EXPIRY_SECONDS,
) -> PresignedUrl:
    """A presigned HTTPS link to the S3 object ``url``, valid ``expires_in`` seconds (cut to
    :data:`MAX_EXPIRY_SECONDS`), signed with that bucket's s3fs ``storage_options``.

    Raises:
        ValueError: ``url`` is not on S3, or ``expires_in`` is below one second.
    """
    return (await presign_many([url], storage_options=storage_options, expires_in=expires_in))[0]


async def presign_many(
    urls: list[str],
    *,
    storage_options: Optional[dict] = None,
    expires_in: int = DEFAULT_EXPIRY_SECONDS,
) -> list[PresignedUrl]:
    """Presigned links to many S3 objects, in order, signed in one worker thread.

    Signing is local (no request to S3), so thousands take well under a second.
    """
    return await run_sync(_sign_sync, list(urls), storage_options, _expiry(expires_in))
