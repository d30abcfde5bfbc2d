"""A video already kept: what it is (:class:`PersistedVideo`), and finding it again.

:func:`find_persisted` recognises work an earlier run kept, from the ledger and the file's
hash alone (no DashScope call), so a re-run reports it instead of paying or downloading
again; a record kept before previews existed gets them here, from the stored video.
Keeping a video is :mod:`kf2v_tasks.generation.persist`, which re-exports these names.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from pydantic import BaseModel, Field

from kf2v_tasks.dashscope.models import Resolution
from kf2v_tasks.generation.ledger import UNREAD, Ledger, LedgerRecord, LedgerState
from kf2v_tasks.generation.previews import Previews, make_previews
from kf2v_tasks.generation.pricing import PriceTable
from kf2v_tasks.generation.sidecar import VideoFacts, as_resolution

__all__ = [
    "PersistedVideo",
    "find_persisted",
    "previews_or_none",
    "read_sidecar",
    "recorded_previews",
]

# The persist step's logger: a preview failure reads the same wherever it happens.
logger = logging.getLogger("kf2v_tasks.generation.persist")


class PersistedVideo(BaseModel):
    """A kept video: where it is, how to check it, what it is and what it cost.

    Example:
        ```python
        from kf2v_tasks.generation.persisted import PersistedVideo
        video = PersistedVideo(
            path="out/a.mp4", sidecar_path="out/a.json", sha256="ff" * 32, bytes=1234,
            task_id="t-1", model="wan2.2-kf2v-flash", resolution="480P", duration_seconds=5,
            cost=0.5, currency="CNY",
        )
        assert video.resolution == "480P" and not video.reused_existing
        assert video.audio is None  # kf2v videos are silent; wan2.7-i2v: "generated"
        ```
    """

    path: str
    sidecar_path: str
    sha256: str
    bytes: int
    task_id: str
    fingerprint: Optional[str] = None
    model: Optional[str] = Field(default=None, description="Model that generated it.")
    resolution: Optional[Resolution] = Field(default=None, description="Resolution tier.")
    duration_seconds: Optional[int] = Field(default=None, description="Length, as billed (s).")
    prompt: Optional[str] = Field(default=None, description="Prompt as asked.")
    negative_prompt: Optional[str] = None
    actual_prompt: Optional[str] = Field(
        default=None, description="Prompt the service actually used (after prompt_extend)."
    )
    audio: Optional[str] = Field(
        default=None,
        description='Sound of the video: "driving" (the given audio), "generated" (by the '
        "model) or empty (silent, or not known).",
    )
    audio_source: Optional[str] = Field(
        default=None, description="The driving audio as given (a URL without its query)."
    )
    cost: Optional[float] = Field(
        default=None, description="Cost from the price table; empty when it has no price."
    )
    currency: Optional[str] = None
    download_attempts: int = 1
    reused_existing: bool = False
    previews: Optional[Previews] = Field(
        default=None, description="Poster and strip beside the video (None: none could be made)."
    )


async def read_sidecar(read_json, path: str, storage_options) -> dict[str, Any]:
    """The sidecar at ``path`` as a dict; ``{}`` when it is missing or unreadable."""
    try:
        doc = await read_json(path, storage_options=storage_options)
    except (FileNotFoundError, OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def recorded_previews(doc: dict[str, Any]) -> Optional[Previews]:
    """The previews a sidecar records, or ``None`` (none recorded, or not readable)."""
    try:
        return Previews.model_validate(doc["previews"]) if doc.get("previews") else None
    except ValueError:
        return None


async def previews_or_none(
    video_path: str, storage_options: Optional[dict], size: Optional[int] = None
) -> Optional[Previews]:
    """The video's poster and strip, or ``None`` (logged) when they cannot be made.

    A paid-for video is kept even if it cannot be previewed: previews never fail a row.
    ``size``: the video's size when it was just written (spares asking the store).
    """
    try:
        return await make_previews(video_path, storage_options=storage_options, size=size)
    except Exception as exc:
        logger.warning("no previews for %s: %s", video_path, exc)
        return None


async def find_persisted(
    ledger: Optional[Ledger],
    fingerprint: str,
    destination: str,
    *,
    storage_options: Optional[dict] = None,
    record: Any = UNREAD,
    price_table: Optional[PriceTable] = None,
    make_missing_previews: bool = True,
) -> Optional[PersistedVideo]:
    """The video of this work if an earlier run already kept it at ``destination``, intact.

    No DashScope call: the ledger says "persisted" at this path and the file still hashes to
    the recorded sha256. Facts come from the record, the prompts, sound and whatever an older
    record lacks from the sidecar. An unknown price stays unknown; only a video kept before
    costs were recorded is priced with ``price_table``. ``record`` (possibly ``None``) skips a
    second ledger read. Missing previews are made now from the stored video (nothing paid)
    unless ``make_missing_previews=False``, which writes nothing (``previews=None``).
    """
    from kf2v_tasks.storage.files import read_json, sidecar_path, verify_file

    if ledger is None:
        return None
    if record is UNREAD:
        record = await ledger.get(fingerprint)
    if (
        not isinstance(record, LedgerRecord)
        or record.state is not LedgerState.PERSISTED
        or record.output_path != destination
    ):
        return None
    if not record.sha256 or not await verify_file(
        destination, record.sha256, storage_options=storage_options
    ):
        return None
    side = sidecar_path(destination)
    sidecar = await read_sidecar(read_json, side, storage_options)
    if sidecar.get("sha256") != record.sha256:  # another video's sidecar: trust none of it
        sidecar = {}
    facts = VideoFacts(
        model=record.model or sidecar.get("model"),
        resolution=record.resolution
        or as_resolution(sidecar.get("resolution"))
        or as_resolution((sidecar.get("parameters") or {}).get("resolution")),
        duration_seconds=record.duration_seconds
        or sidecar.get("duration_seconds")
        or (sidecar.get("usage") or {}).get("video_duration"),
        prompt=sidecar.get("prompt"),
        negative_prompt=sidecar.get("negative_prompt"),
        actual_prompt=sidecar.get("actual_prompt"),
        audio=sidecar.get("audio"),
        audio_source=sidecar.get("audio_source"),
        cost=record.cost if record.cost is not None else sidecar.get("cost"),
        currency=record.currency or sidecar.get("currency"),
    )
    previews = record.previews
    if previews is None and make_missing_previews:
        previews = await _backfill_previews(ledger, record, storage_options)
    return PersistedVideo(
        path=destination,
        sidecar_path=side,
        sha256=record.sha256,
        bytes=record.bytes or 0,
        task_id=record.task_id or "",
        fingerprint=fingerprint,
        download_attempts=0,
        reused_existing=True,
        previews=previews,
        # Priced when made (even at an unknown price, "cost": null): kept as it was. Only a
        # sidecar from before costs were written is priced now.
        **(facts if "cost" in sidecar else facts.priced(price_table, quiet=True)).model_dump(),
    )


async def _backfill_previews(
    ledger: Ledger, kept: LedgerRecord, storage_options: Optional[dict]
) -> Optional[Previews]:
    """Make the previews of a kept video whose record has none, and record them."""
    path = kept.output_path or ""
    previews = await previews_or_none(path, storage_options)
    if previews is None:
        return None

    def note(record: LedgerRecord) -> bool:
        # Another run may have moved the record since (a re-download elsewhere).
        if (
            record.state is not LedgerState.PERSISTED
            or record.output_path != path
            or record.sha256 != kept.sha256
            or record.previews is not None
        ):
            return False
        record.previews_made(previews)
        return True

    # Conditional on S3 (and no read when this ledger read the record at planning).
    await ledger.modify(kept.fingerprint, note)
    return previews
