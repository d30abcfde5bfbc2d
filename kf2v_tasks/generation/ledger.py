"""The durable ledger: one JSON record per fingerprint, so the same work is never paid twice.

Layout: ``<root>/.kf2v/ledger/<fingerprint>.json`` on the output storage (local disk or any
fsspec URL). Every write replaces the whole record atomically — a temp file plus
``os.replace`` on local disk, a single PUT on object stores — so a reader sees the old
record or the new one, never half of one.

Concurrency: the flow deduplicates rows by fingerprint before submitting, so two workers
of one run never write the same record at the same time; atomic replace is all the
locking needed. Two *separate* runs on the same output root at the same time are not
supported (last writer wins).

Secrets never land here: strings are scrubbed of URL query strings (the signatures of
``video_url``) and anything shaped like an API key before every write.

Example:
    ```python
    from kf2v_tasks.generation.ledger import Ledger, LedgerRecord

    ledger = Ledger("s3://bucket/out", storage_options={...})
    rec = await ledger.get(fp) or LedgerRecord(fingerprint=fp, state="submitting")
    await ledger.put(rec)
    ```
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kf2v_tasks import clock
from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.errors import PermanentError
from kf2v_tasks.storage.paths import RESERVED_DIR, forget_cached, is_local, join, open_fs, run_sync

logger = logging.getLogger("kf2v_tasks.generation.ledger")

LedgerState = Literal["submitting", "submitted", "ambiguous", "terminal", "persisted"]

#: Terminal statuses after which the task can never yield a video.
_DEAD = frozenset({TaskStatus.FAILED, TaskStatus.UNKNOWN, TaskStatus.CANCELED})

_FP_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_URL_QUERY_RE = re.compile(r"((?:https?|oss)://[^\s?#\"'<>]+)\?[^\s#\"'<>]*")
_KEY_RE = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}")
_BEARER_RE = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}")


class LedgerError(PermanentError, ValueError):
    """A ledger record exists but cannot be read as valid; fix or remove the named file."""


def scrub(value: Any) -> Any:
    """Remove URL query strings and API-key-shaped tokens from strings, recursively."""
    if isinstance(value, str):
        value = _URL_QUERY_RE.sub(r"\1", value)
        value = _KEY_RE.sub("sk-***", value)
        return _BEARER_RE.sub("Bearer ***", value)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def _utc(value: Optional[datetime]) -> Optional[datetime]:
    if value is None:
        return None
    if value.tzinfo is None:  # naive times in this package are UTC
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class LedgerRecord(BaseModel):
    """What is known about one piece of work (one fingerprint).

    ``state``: ``submitting`` (create about to be sent — outcome unknown if we crash),
    ``submitted`` (task id known), ``ambiguous`` (create may or may not exist),
    ``terminal`` (the task ended; see ``terminal_status``), ``persisted`` (video kept).
    """

    model_config = ConfigDict(validate_assignment=True, extra="ignore")

    fingerprint: str
    state: LedgerState
    task_id: Optional[str] = None
    request_id: Optional[str] = None
    submitted_at: Optional[datetime] = Field(default=None, description="Aware UTC.")
    create_attempts: int = 0
    possible_duplicate: bool = False
    terminal_status: Optional[TaskStatus] = None
    error_code: Optional[str] = None
    error_message: Optional[str] = None
    output_path: Optional[str] = None
    sha256: Optional[str] = None
    bytes: Optional[int] = None
    persisted_at: Optional[datetime] = None
    row_id: Optional[str] = None
    events: list[dict[str, Any]] = Field(
        default_factory=list, description='Append-only log: {"at": iso, "event": ..., ...}.'
    )
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("submitted_at", "persisted_at")
    @classmethod
    def _aware_utc(cls, v: Optional[datetime]) -> Optional[datetime]:
        return _utc(v)

    def add_event(self, event: str, **data: Any) -> None:
        """Append ``{"at": now, "event": event, **data}`` to the log."""
        self.events.append({"at": datetime.now(UTC).isoformat(), "event": event, **data})


class Ledger:
    """One JSON record per fingerprint under ``<root>/.kf2v/ledger/``.

    Args:
        root: output folder or URL (``out/``, ``s3://bucket/run``).
        storage_options: fsspec options of ``root``; never written anywhere.

    Example:
        ```python
        ledger = Ledger("out")
        await ledger.update(fp, state="submitted", task_id="t-1")
        ```
    """

    def __init__(self, root: str, storage_options: Optional[dict] = None) -> None:
        self.root = root
        self.storage_options = storage_options
        self.dir_url = join(root, RESERVED_DIR, "ledger")
        self._fs, self._dir = open_fs(self.dir_url, storage_options)

    def __repr__(self) -> str:  # no storage_options: they may hold credentials
        return f"Ledger({self.root!r})"

    def path_of(self, fingerprint: str) -> str:
        """The record's path inside the filesystem."""
        if not _FP_RE.match(fingerprint or ""):
            raise ValueError(f"fingerprint {fingerprint!r} is not a safe file name")
        return f"{self._dir.rstrip('/')}/{fingerprint}.json"

    def url_of(self, fingerprint: str) -> str:
        """The record's URL (or local path), for messages."""
        self.path_of(fingerprint)
        return join(self.dir_url, f"{fingerprint}.json")

    async def get(self, fingerprint: str) -> Optional[LedgerRecord]:
        """The record, or ``None`` when there is none.

        Raises:
            LedgerError: the file exists but is not a valid record (never treated as absent,
                because "absent" would allow paying again).
        """
        path = self.path_of(fingerprint)
        return await run_sync(self._get_sync, path)

    def _get_sync(self, path: str) -> Optional[LedgerRecord]:
        forget_cached(self._fs, path)
        try:
            raw = self._fs.cat_file(path)
        except FileNotFoundError:
            return None
        return self._parse(raw, path)

    def _parse(self, raw: bytes, path: str) -> LedgerRecord:
        try:
            return LedgerRecord.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            where = self.dir_url + "/" + path.rsplit("/", 1)[-1]
            raise LedgerError(f"ledger record {where} is unreadable: {exc}") from None

    async def put(self, record: LedgerRecord) -> None:
        """Write ``record`` atomically (whole-record replace), scrubbed of secrets."""
        path = self.path_of(record.fingerprint)
        doc = record.model_dump(mode="json")
        for key in ("events", "extra", "error_message", "output_path"):
            doc[key] = scrub(doc[key])
        data = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False).encode()
        await run_sync(self._put_sync, path, data)

    def _put_sync(self, path: str, data: bytes) -> None:
        if is_local(self._fs):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())  # the rename must not outlive the data on a crash
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            # One PUT replaces an object atomically on object stores; no temp needed.
            self._fs.pipe_file(path, data)

    async def update(self, fingerprint: str, **changes: Any) -> LedgerRecord:
        """Apply ``changes`` to an existing record and write it back.

        Raises:
            KeyError: no record for ``fingerprint``.
        """
        record = await self.get(fingerprint)
        if record is None:
            raise KeyError(f"no ledger record for fingerprint {fingerprint}")
        merged = LedgerRecord.model_validate({**record.model_dump(), **changes})
        await self.put(merged)
        return merged

    async def list(self) -> list[LedgerRecord]:
        """Every record under this root (temp files ignored)."""
        return await run_sync(self._list_sync)

    def _list_sync(self) -> list[LedgerRecord]:
        try:
            forget_cached(self._fs, self._dir)
            names = self._fs.ls(self._dir, detail=False)
        except FileNotFoundError:
            return []
        out = []
        for name in sorted(names):
            if not name.endswith(".json"):
                continue
            try:
                raw = self._fs.cat_file(name)
            except FileNotFoundError:  # removed between ls and read
                continue
            out.append(self._parse(raw, name))
        return out

    @staticmethod
    def is_task_reusable(
        record: LedgerRecord,
        now: Optional[datetime] = None,
        ttl: timedelta = timedelta(hours=24),
        margin: timedelta = timedelta(minutes=30),
    ) -> bool:
        """Whether the recorded task can still deliver its video (no new create needed).

        True when it has a task id, was submitted less than ``ttl - margin`` ago (tasks
        and their video URLs expire 24 h after submission) and did not end FAILED,
        CANCELED or UNKNOWN.

        Example:
            ```python
            if rec and Ledger.is_task_reusable(rec):
                ...  # re-attach to rec.task_id instead of paying again
            ```
        """
        if not record.task_id or record.submitted_at is None:
            return False
        if record.terminal_status in _DEAD:
            return False
        now = _utc(now) or datetime.now(UTC)
        # Task lifetimes are service time: under KF2V_TIME_SCALE a rehearsal's tasks expire
        # proportionally sooner, exactly as the simulator at the same speed expires them.
        return (now - record.submitted_at) * clock.time_scale() < ttl - margin
