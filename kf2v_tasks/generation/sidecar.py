"""What a kept video is and the JSON sidecar written beside it.

The facts of a video (model, resolution, billed length, prompts, cost) come from three
places: the submission (what was asked), the task (what the service did and billed, in
``usage``) and the price table. :func:`video_facts` gathers them once, so the sidecar, the
:class:`~kf2v_tasks.generation.persisted.PersistedVideo` and the ledger record agree.

The last sidecars this process wrote are kept in memory (:func:`remember_sidecar`,
:func:`written_sidecar`): the gallery and a retried persist in the same process read them
there instead of fetching them back from storage (on S3, one GetObject each).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Optional

from pydantic import BaseModel, Field

from kf2v_tasks.dashscope.catalog import active_catalog
from kf2v_tasks.dashscope.models import Resolution
from kf2v_tasks.dashscope.task_state import TaskState
from kf2v_tasks.generation.pricing import PriceTable, video_cost
from kf2v_tasks.redaction import redact_url

if TYPE_CHECKING:
    from kf2v_tasks.generation.submit import Submission

__all__ = [
    "SIDECAR_VERSION",
    "VideoFacts",
    "as_resolution",
    "build_sidecar",
    "remember_sidecar",
    "video_facts",
    "written_sidecar",
]

logger = logging.getLogger("kf2v_tasks.generation.sidecar")

#: Version of the sidecar layout; fields are only ever added within a version.
SIDECAR_VERSION = 1
#: Sidecars kept in memory after this process wrote them (oldest dropped first): the rows
#: a batch finished since its gallery last looked, with room to spare.
_WRITTEN_MAX = 1024
_written: OrderedDict[str, dict[str, Any]] = OrderedDict()
_written_lock = threading.Lock()


class VideoFacts(BaseModel):
    """What a video is and what it cost (each field empty when it is not known)."""

    model: Optional[str] = None
    resolution: Optional[Resolution] = None
    duration_seconds: Optional[int] = Field(default=None, description="Billed length (s).")
    prompt: Optional[str] = None
    negative_prompt: Optional[str] = None
    actual_prompt: Optional[str] = None
    audio: Optional[str] = Field(
        default=None,
        description='Sound of the video: "driving" (the given audio), "generated" (by the '
        "model) or empty (silent, or not known).",
    )
    audio_source: Optional[str] = Field(
        default=None, description="The driving audio as given (URL without its query)."
    )
    cost: Optional[float] = None
    currency: Optional[str] = None

    def priced(self, price_table: Optional[PriceTable], *, quiet: bool = False) -> VideoFacts:
        """These facts with cost and currency from ``price_table`` if known (default: the
        models table's prices in the configured region, ``KF2V_REGION``).

        A cost already known is kept; a table without a price for the model and
        resolution leaves the cost empty (logged): the video is kept whatever the table says.
        """
        if self.cost is not None or not (self.model and self.resolution and self.duration_seconds):
            return self
        table = price_table or PriceTable.default()
        try:
            cost = video_cost(self.model, self.resolution, self.duration_seconds, table)
        except ValueError as exc:
            if not quiet:  # ``quiet``: a kept video, its unknown price said by the estimate
                logger.warning("no cost for the video: %s", exc)
            return self
        return self.model_copy(update={"cost": cost, "currency": table.currency})


def as_resolution(value: Any) -> Optional[Resolution]:
    """``value`` ("720P", "720p") as a :class:`Resolution`; ``None`` when it is not one."""
    try:
        return Resolution(str(value).upper()) if value else None
    except ValueError:
        return None


def video_facts(
    state: TaskState, submission: Optional[Submission], price_table: Optional[PriceTable]
) -> VideoFacts:
    """The facts of a SUCCEEDED task's video: asked (submission), billed (usage), priced.

    The resolution is the one asked, else the one ``usage.SR`` reports; the length is the
    billed ``usage.video_duration``, else the one asked.
    """
    params = submission.parameters if submission else {}
    usage = state.usage
    spec = active_catalog().find(submission.model) if submission else None
    driving = submission.audio_source if submission else None
    sound = "driving" if driving else ("generated" if spec is not None and spec.audio else None)
    facts = VideoFacts(
        model=submission.model if submission else None,
        # Asked for, else what the service reports (SR on 2.2 models).
        resolution=(submission.resolution if submission else None)
        or as_resolution(params.get("resolution"))
        or (usage.resolution if usage else None),
        # Billed seconds (usage) first: that is what the account is charged for.
        duration_seconds=(usage.video_duration if usage else None)
        or (submission.duration_seconds if submission else None)
        or params.get("duration"),
        prompt=submission.prompt if submission else state.orig_prompt,
        negative_prompt=submission.negative_prompt if submission else None,
        actual_prompt=state.actual_prompt,
        audio=sound,
        audio_source=_shown(driving),
    )
    return facts.priced(price_table)


def _shown(source: Optional[str]) -> Optional[str]:
    """A source as it may be written down: URLs lose query strings and credentials."""
    if not source:
        return None
    return redact_url(source) if "://" in source else source


def build_sidecar(
    state: TaskState,
    *,
    sha256: str,
    size: int,
    path: str,
    submission: Optional[Submission] = None,
    timings: Optional[dict[str, Any]] = None,
    extra: Optional[dict[str, Any]] = None,
    price_table: Optional[PriceTable] = None,
) -> dict[str, Any]:
    """The JSON document kept beside each video (signed URLs reduced to scheme, host, path)."""
    facts = video_facts(state, submission, price_table)

    def iso(d: Optional[datetime]) -> Optional[str]:
        return d.isoformat() if d else None

    doc: dict[str, Any] = {
        "kf2v_sidecar_version": SIDECAR_VERSION,
        "video": path,
        "sha256": sha256,
        "bytes": size,
        "task_id": state.task_id,
        "task_status": state.status.value,
        "query_request_id": state.request_id,
        "create_request_id": submission.request_id if submission else None,
        "fingerprint": submission.fingerprint if submission else None,
        "model": facts.model,
        "resolution": facts.resolution.value if facts.resolution else None,
        "duration_seconds": facts.duration_seconds,
        "audio": facts.audio,
        "audio_source": facts.audio_source,
        "audio_sha256": submission.audio_sha256 if submission else None,
        # Only for a video that continues a clip: earlier sidecars keep their shape.
        **(
            {"clip_source": _shown(submission.clip_source), "clip_sha256": submission.clip_sha256}
            if submission and submission.clip_source
            else {}
        ),
        "cost": facts.cost,
        "currency": facts.currency,
        "parameters": submission.parameters if submission else None,
        "prompt": facts.prompt,
        "negative_prompt": facts.negative_prompt,
        "orig_prompt": state.orig_prompt,
        "actual_prompt": state.actual_prompt,
        "usage": state.usage.model_dump(by_alias=True, exclude_none=True) if state.usage else None,
        "possible_duplicate": submission.possible_duplicate if submission else False,
        "video_source": redact_url(state.video_url),
        "timings": {
            "submitted_at": iso(submission.submitted_at) if submission else None,
            "service_submit_time": iso(state.submit_time),
            "service_scheduled_time": iso(state.scheduled_time),
            "service_end_time": iso(state.end_time),
            "persisted_at": datetime.now(UTC).isoformat(),
            **(timings or {}),
        },
        "status_history": [
            {"status": h.status.value, "seen_at": h.seen_at.isoformat()} for h in state.history
        ],
    }
    if extra:
        doc["extra"] = extra
    return doc


def remember_sidecar(path: str, doc: dict[str, Any]) -> None:
    """Note that this process has just written ``doc`` as the sidecar at ``path``."""
    with _written_lock:
        _written.pop(path, None)
        _written[path] = doc
        while len(_written) > _WRITTEN_MAX:
            _written.popitem(last=False)


def written_sidecar(path: str, *, forget: bool = False) -> Optional[dict[str, Any]]:
    """The sidecar this process last wrote at ``path`` (``None``: read the file).

    ``forget``: the caller keeps what it needs (the gallery reads each row once).

    Another process may have rewritten it since: use it where that is harmless (what a page
    shows, whether to download again), never to decide payment.
    """
    with _written_lock:
        return _written.pop(path, None) if forget else _written.get(path)
