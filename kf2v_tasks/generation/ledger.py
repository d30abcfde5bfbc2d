"""The durable ledger: one JSON record per fingerprint, so the same work is never paid twice.

Layout: ``<root>/.kf2v/ledger/<fingerprint>.json`` on the output storage. Every write
replaces the whole record atomically (temp file + ``os.replace`` locally, one PUT on object
stores), so a reader never sees half a record. The record's state machine is
:mod:`kf2v_tasks.generation.ledger_record`; how a task ended is written
by :mod:`kf2v_tasks.generation.outcome`.

Concurrency: a run deduplicates rows by fingerprint, so its workers never write one record
at once; separate runs on one output are kept apart by claims
(:mod:`kf2v_tasks.generation.claims`): only the claim holder creates the task and writes the
record until the task id is known. Every string is scrubbed
(:func:`kf2v_tasks.redaction.scrub`) before every write: no signed URL or key lands here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Optional

from pydantic import ValidationError

from kf2v_tasks.generation.ledger_record import LedgerRecord
from kf2v_tasks.generation.ledger_state import LedgerError, LedgerState
from kf2v_tasks.redaction import scrub
from kf2v_tasks.storage.conditional import ConditionFailedError, replace_if
from kf2v_tasks.storage.objects import get_object, is_s3, list_files, read_object
from kf2v_tasks.storage.paths import RESERVED_DIR, forget_cached, is_local, join, open_fs, run_sync

# LedgerRecord and LedgerState are re-exported for batch/ and _cli/.
__all__ = ["Ledger", "LedgerRecord", "LedgerState", "UNREAD"]

logger = logging.getLogger("kf2v_tasks.generation.ledger")

_FP_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: Records whose last seen bytes a ledger keeps (S3), oldest dropped first: rows in flight.
_SEEN_MAX = 1024
#: Conditional writes that may lose to another writer before modify() stops trying.
_MODIFY_TURNS = 5
#: A ``record`` argument left out: the callee reads the ledger itself (``None`` means the
#: caller read it and there is no record).
UNREAD: Any = object()


class Ledger:
    """One JSON record per fingerprint under ``<root>/.kf2v/ledger/``.

    Args:
        root: output folder or URL (``out/``, ``s3://bucket/run``).
        storage_options: fsspec options of ``root``; never written anywhere.
    """

    def __init__(self, root: str, storage_options: Optional[dict] = None) -> None:
        self.root = root
        self.storage_options = storage_options
        self.dir_url = join(root, RESERVED_DIR, "ledger")
        self._fs, self._dir = open_fs(self.dir_url, storage_options)
        # S3 only: the last bytes of each record this ledger read or wrote, with their ETag,
        # so modify() can write If-Match that ETag instead of reading the record first.
        self._seen: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._seen_lock = threading.Lock()
        self._conditional = is_s3(self._fs)
        # Changes put off until the record's next write (defer()), by fingerprint.
        self._deferred: dict[str, Callable[[LedgerRecord], bool]] = {}

    def __repr__(self) -> str:  # no storage_options: they may hold credentials
        return f"Ledger({self.root!r})"

    def __getstate__(self) -> dict[str, Any]:
        # A lock does not pickle, and what this process last saw (or put off) means nothing
        # elsewhere.
        return {**self.__dict__, "_seen": OrderedDict(), "_seen_lock": None, "_deferred": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._seen_lock = threading.Lock()

    def path_of(self, fingerprint: str) -> str:
        """The record's path inside the filesystem.

        Raises:
            ValueError: ``fingerprint`` is not a safe file name.
        """
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
        try:
            # One GetObject on S3, a missing record included; its ETag comes with it.
            raw, etag = get_object(self._fs, path)
        except FileNotFoundError:
            self._remember(path, None, None)
            return None
        record = self._parse(raw, path)
        self._remember(path, raw, etag)
        return record

    def _remember(self, path: str, raw: Optional[bytes], etag: Optional[str]) -> None:
        """Note what the store holds at ``path`` as of now (S3: the bytes and their ETag)."""
        if not self._conditional:
            return
        with self._seen_lock:
            self._seen.pop(path, None)
            if raw is not None and etag:
                self._seen[path] = (raw, etag)
                while len(self._seen) > _SEEN_MAX:
                    self._seen.popitem(last=False)

    def _last_seen(self, path: str) -> Optional[tuple[bytes, str]]:
        with self._seen_lock:
            return self._seen.get(path)

    def _parse(self, raw: bytes, path: str) -> LedgerRecord:
        try:
            return LedgerRecord.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            where = self.dir_url + "/" + path.rsplit("/", 1)[-1]
            raise LedgerError(f"ledger record {where} is unreadable: {exc}") from None

    async def get_many(self, fingerprints: Iterable[str]) -> dict[str, Optional[LedgerRecord]]:
        """The records of many fingerprints, ``{fingerprint: record or None}``, as :meth:`get`.

        A batch's records are mostly absent (new work) or few. On S3 a listing of the
        folder (one request per 1,000 records in it) says which exist and only those are
        read, instead of one GetObject per fingerprint; the listing stops once it would
        cost more than it saves, and what it did not reach is read one by one. Elsewhere,
        :meth:`get` for each.

        Raises:
            LedgerError: a record exists but is unreadable (as :meth:`get`).
        """
        wanted = sorted(set(fingerprints))
        paths = {fp: self.path_of(fp) for fp in wanted}
        to_read = wanted
        out: dict[str, Optional[LedgerRecord]] = {}
        if self._conditional and len(wanted) > 1:
            # Cheaper while the pages listed stay well under the reads they spare.
            names, stopped_at = await run_sync(
                list_files, self._fs, self._dir, max_pages=max(1, len(wanted) // 4)
            )
            present = set(names)
            to_read = []
            for fp in wanted:
                path = paths[fp]
                if path in present or (stopped_at is not None and path > stopped_at):
                    to_read.append(fp)  # exists, or beyond what the listing reached
                else:
                    self._remember(path, None, None)
                    out[fp] = None
        records = await asyncio.gather(*(self.get(fp) for fp in to_read))
        out.update(zip(to_read, records, strict=True))
        return {fp: out[fp] for fp in wanted}

    async def put(self, record: LedgerRecord) -> None:
        """Write ``record`` atomically (whole-record replace), scrubbed of secrets."""
        path = self.path_of(record.fingerprint)
        await run_sync(self._put_sync, path, self._encode(record))

    @staticmethod
    def _encode(record: LedgerRecord) -> bytes:
        # Every string, not a list of fields: a new field must not be a new way to leak.
        doc = scrub(record.model_dump(mode="json"))
        return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False).encode()

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
            out = self._fs.pipe_file(path, data)
            self._remember(path, data, (out or {}).get("ETag") if self._conditional else None)

    async def modify(
        self, fingerprint: str, change: Callable[[LedgerRecord], bool]
    ) -> Optional[LedgerRecord]:
        """Read the record, let ``change`` edit it, and write it back if nobody wrote it since.

        ``change`` edits the record in place (through its transitions) and returns whether
        to write it; it may be called again with a fresh copy when another writer got in
        between. On S3 the write is conditional (``If-Match`` the ETag read), and the read
        is skipped when this ledger already holds the record's current bytes (it wrote or
        read them last): a write that finds the record changed reads it again and retries.
        Elsewhere it is a read and a whole-record write, as :meth:`get` and :meth:`put`.

        Returns:
            The record as written, or as read when ``change`` declined (``None``: no record).
        """
        path = self.path_of(fingerprint)
        with self._seen_lock:
            deferred = self._deferred.pop(fingerprint, None)
        if deferred is not None:
            change = _both(deferred, change)
        try:
            return await self._modify(fingerprint, path, change)
        except BaseException:
            if deferred is not None:  # not written: keep it for the next write
                self.defer(fingerprint, deferred)
            raise

    async def _modify(
        self, fingerprint: str, path: str, change: Callable[[LedgerRecord], bool]
    ) -> Optional[LedgerRecord]:
        if self._conditional:
            for _ in range(_MODIFY_TURNS):
                seen = self._last_seen(path)
                if seen is None:
                    if await self.get(fingerprint) is None:
                        return None
                    seen = self._last_seen(path)
                    if seen is None:  # the store gave no ETag: no conditional write
                        break
                raw, etag = seen
                record = self._parse(raw, path)
                if not change(record):
                    return record
                data = self._encode(record)
                try:
                    new = await replace_if(
                        self.url_of(fingerprint), data, etag, storage_options=self.storage_options
                    )
                except ConditionFailedError:
                    self._remember(path, None, None)  # changed or gone: read it again
                    continue
                self._remember(path, data, new)
                return record
            logger.warning(
                "ledger record %s kept changing under us; writing it unconditionally",
                fingerprint[:12],
            )
        record = await self.get(fingerprint)
        if record is None or not change(record):
            return record
        await self.put(record)
        return record

    def defer(self, fingerprint: str, change: Callable[[LedgerRecord], bool]) -> None:
        """Put ``change`` off until this ledger next writes the record, to write both at once.

        The next :meth:`modify` of ``fingerprint`` applies it first (then its own change) in
        the same write; :meth:`flush` writes it alone. Kept in this process only: a crash
        before then leaves the record as it was, so put off only what the record may
        safely lack (how a task that succeeded ended, while its video is being kept).
        """
        self.path_of(fingerprint)  # a bad fingerprint fails here, not at the later write
        with self._seen_lock:
            earlier = self._deferred.get(fingerprint)
            self._deferred[fingerprint] = change if earlier is None else _both(earlier, change)

    async def flush(self, fingerprint: str) -> None:
        """Write what :meth:`defer` put off for ``fingerprint``, if anything (one write)."""
        with self._seen_lock:
            if fingerprint not in self._deferred:
                return
        await self.modify(fingerprint, lambda record: False)

    async def update(self, fingerprint: str, /, **changes: Any) -> LedgerRecord:
        """Apply field ``changes`` (not the state) to an existing record and write it back.

        Built on :meth:`modify`: on S3 the write is conditional, so a record another
        writer changed meanwhile is read again and the changes applied to it.

        Raises:
            KeyError: no record for ``fingerprint``.
            ValueError: ``changes`` name ``state`` or ``fingerprint`` (states move only
                through the record's transitions), a field the record does not have, or
                are not valid field values.
        """
        fixed = sorted({"state", "fingerprint"} & changes.keys())
        if fixed:
            raise ValueError(
                f"update() cannot change {', '.join(fixed)}; use a LedgerRecord transition"
            )
        unknown = sorted(changes.keys() - LedgerRecord.model_fields.keys())
        if unknown:
            raise ValueError(f"a ledger record has no field {', '.join(unknown)}")

        def change(record: LedgerRecord) -> bool:
            for name, value in changes.items():
                setattr(record, name, value)  # validated on assignment
            return True

        record = await self.modify(fingerprint, change)
        if record is None:
            raise KeyError(f"no ledger record for fingerprint {fingerprint}")
        return record

    async def list(self) -> list[LedgerRecord]:
        """Every record under this root, in fingerprint order (temp files ignored)."""
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
                raw = read_object(self._fs, name)
            except FileNotFoundError:  # removed between ls and read
                continue
            out.append(self._parse(raw, name))
        return out


def _both(
    first: Callable[[LedgerRecord], bool], then: Callable[[LedgerRecord], bool]
) -> Callable[[LedgerRecord], bool]:
    """One change that applies ``first`` then ``then``; it writes if either wants to."""

    def change(record: LedgerRecord) -> bool:
        wrote = first(record)
        return then(record) or wrote

    return change
