"""Per-row outcomes of a batch and the ``results.csv`` that lists them."""

from __future__ import annotations

import csv
import io
from collections import Counter
from enum import Enum
from typing import Any, Optional

from pydantic import BaseModel, Field

from kf2v_tasks.errors import AmbiguousCreateError


class RowStatus(str, Enum):
    """How a manifest row ended."""

    SUCCEEDED = "succeeded"  # video and sidecar persisted in this run
    SKIPPED = "skipped"  # already persisted by an earlier run (same fingerprint)
    FAILED = "failed"  # validated, then failed at submit, poll or persist
    INVALID = "invalid"  # rejected by validation; never submitted
    OVER_BUDGET = "over_budget"  # not submitted: max_cost would be exceeded
    PLANNED = "planned"  # dry run: would be submitted
    NOT_RUN = "not_run"  # the batch stopped (fail_fast) before this row


#: Statuses that count as a failure of the batch.
FAILED_STATUSES = frozenset({RowStatus.FAILED, RowStatus.INVALID})

RESULT_COLUMNS = [
    "row",
    "id",
    "status",
    "output",
    "task_id",
    "error_code",
    "error_message",
    "cost",
    "sha256",
    "bytes",
    "reattached",
    "possible_duplicate",
]


class RowResult(BaseModel):
    """How one manifest row ended: one line of ``results.csv``.

    Example:
        ```python
        from kf2v_tasks.batch.results import RowResult, RowStatus
        bad = RowResult(row=7, id="shot7", status=RowStatus.INVALID,
                        error_message="row 7, column 'seed': '-3' is not an integer")
        assert bad.csv_row()["status"] == "invalid"
        ```
    """

    row: int = Field(description="Row number in the manifest (header is row 1).")
    id: Optional[str] = None
    status: RowStatus
    output: Optional[str] = None
    task_id: Optional[str] = None
    error_code: Optional[str] = None
    error_message: Optional[str] = None
    cost: float = 0.0
    sha256: Optional[str] = None
    bytes: Optional[int] = None
    reattached: bool = False
    possible_duplicate: bool = False

    def csv_row(self) -> dict[str, str]:
        """The row as ``results.csv`` cells (empty string for a missing value).

        Example:
            ```python
            from kf2v_tasks.batch.results import RowResult, RowStatus
            assert RowResult(row=2, status=RowStatus.PLANNED).csv_row()["task_id"] == ""
            ```
        """
        data = self.model_dump(mode="json")
        return {k: "" if data.get(k) is None else str(data[k]) for k in RESULT_COLUMNS}


def failed_result(
    base: dict[str, Any], exc: BaseException, submission: Any = None, cost: float = 0.0
) -> RowResult:
    """The ``failed`` result of a row (``base``: its row, id and output) that raised ``exc``.

    The message carries the task's status history when the error has one; a create whose
    outcome is unknown is flagged as a possible duplicate (a billed task may exist).

    Example:
        ```python
        from kf2v_tasks.batch.results import failed_result
        from kf2v_tasks.errors import AmbiguousCreateError
        r = failed_result({"row": 2, "id": "a"}, AmbiguousCreateError("no answer"))
        assert r.status.value == "failed" and r.possible_duplicate
        ```
    """
    message = str(exc)
    history = getattr(exc, "history", None)
    if history:
        message += "; status history: " + ", ".join(
            f"{h.status.value}@{h.seen_at:%H:%M:%S}" for h in history
        )
    return RowResult(
        **base,
        status=RowStatus.FAILED,
        task_id=getattr(submission, "task_id", None) or getattr(exc, "task_id", None),
        error_code=getattr(exc, "code", None) or type(exc).__name__,
        error_message=message[:1000],
        cost=cost,
        possible_duplicate=bool(getattr(submission, "possible_duplicate", False))
        or isinstance(exc, AmbiguousCreateError),
    )


def to_csv(results: list[RowResult]) -> str:
    """Render results (sorted by row) as CSV text.

    Example:
        ```python
        from kf2v_tasks.batch.results import RowResult, RowStatus, from_csv, to_csv
        rows = [RowResult(row=2, id="a", status=RowStatus.SUCCEEDED, cost=0.5)]
        assert from_csv(to_csv(rows)) == rows
        ```
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in sorted(results, key=lambda r: r.row):
        writer.writerow(r.csv_row())
    return buf.getvalue()


def from_csv(text: str) -> list[RowResult]:
    """Parse a ``results.csv`` written by :func:`to_csv` (used to merge shards).

    Example:
        ```python
        from kf2v_tasks.batch.results import from_csv
        rows = from_csv("row,id,status\n2,a,skipped\n")
        assert rows[0].status.value == "skipped"
        ```
    """
    out = []
    for cells in csv.DictReader(io.StringIO(text)):
        clean = {k: (v if v != "" else None) for k, v in cells.items() if k in RESULT_COLUMNS}
        for flag in ("reattached", "possible_duplicate"):
            clean[flag] = clean.get(flag) == "True"
        clean["cost"] = float(clean.get("cost") or 0)
        out.append(RowResult.model_validate(clean))
    return out


class BatchSummary(BaseModel):
    """What a batch run did, returned by the batch flow (and carried by ``BatchFailedError``).

    Example:
        ```python
        from kf2v_tasks.batch.results import BatchSummary, RowResult, RowStatus

        rows = [RowResult(row=2, id="a", status=RowStatus.SUCCEEDED)]
        summary = BatchSummary(manifest="m.csv", output="out", total=1,
                               counts=BatchSummary.count(rows), results=rows)
        assert summary.failed == 0 and summary.headline() == "1 rows: 1 succeeded"
        ```
    """

    manifest: str
    output: str
    results_path: Optional[str] = None
    total: int = 0
    counts: dict[str, int] = Field(default_factory=dict)
    submitted: int = 0
    reattached: int = 0
    skipped: int = 0
    possible_duplicates: int = 0
    estimated_cost: float = 0.0
    spent: float = 0.0
    currency: str = "CNY"
    wall_seconds: float = 0.0
    dry_run: bool = False
    results: list[RowResult] = Field(
        default_factory=list, description="One result per manifest row, in row order."
    )

    @property
    def failed(self) -> int:
        """Rows that failed or were invalid (plus shards that never reported)."""
        return sum(self.counts.get(s.value, 0) for s in FAILED_STATUSES) + self.counts.get(
            "shard_failed", 0
        )

    @classmethod
    def count(cls, results: list[RowResult]) -> dict[str, int]:
        """Rows per status.

        Example:
            ```python
            from kf2v_tasks.batch.results import BatchSummary, RowResult, RowStatus
            rows = [RowResult(row=2, status=RowStatus.FAILED)]
            assert BatchSummary.count(rows) == {"failed": 1}
            ```
        """
        return dict(Counter(r.status.value for r in results))

    def headline(self) -> str:
        """One line for logs and flow-run state messages, e.g. ``"5 rows: 1 failed, 4 succeeded"``.

        Example:
            ```python
            from kf2v_tasks.batch.results import BatchSummary
            summary = BatchSummary(manifest="m.csv", output="out", total=2, counts={"planned": 2})
            assert summary.headline() == "2 rows: 2 planned"
            ```
        """
        parts = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items()))
        return f"{self.total} rows: {parts}"
