"""Per-row outcomes of a batch and the ``results.csv`` that lists them."""

from __future__ import annotations

import csv
import io
from collections import Counter
from enum import Enum
from typing import Optional

from pydantic import BaseModel, Field


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
    """One line of ``results.csv``."""

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
        """The row as ``results.csv`` cells."""
        data = self.model_dump(mode="json")
        return {k: "" if data.get(k) is None else str(data[k]) for k in RESULT_COLUMNS}


def to_csv(results: list[RowResult]) -> str:
    """Render results (sorted by row) as CSV text."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in sorted(results, key=lambda r: r.row):
        writer.writerow(r.csv_row())
    return buf.getvalue()


def from_csv(text: str) -> list[RowResult]:
    """Parse a ``results.csv`` written by :func:`to_csv` (used to merge shards)."""
    out = []
    for cells in csv.DictReader(io.StringIO(text)):
        clean = {k: (v if v != "" else None) for k, v in cells.items() if k in RESULT_COLUMNS}
        for flag in ("reattached", "possible_duplicate"):
            clean[flag] = clean.get(flag) == "True"
        clean["cost"] = float(clean.get("cost") or 0)
        out.append(RowResult.model_validate(clean))
    return out


class BatchSummary(BaseModel):
    """What a batch run did, returned by the batch flow."""

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

    @property
    def failed(self) -> int:
        """Rows that failed or were invalid (plus shards that never reported)."""
        return sum(self.counts.get(s.value, 0) for s in FAILED_STATUSES) + self.counts.get(
            "shard_failed", 0
        )

    @classmethod
    def count(cls, results: list[RowResult]) -> dict[str, int]:
        """Rows per status."""
        return dict(Counter(r.status.value for r in results))

    def headline(self) -> str:
        """One line for logs and flow-run state messages."""
        parts = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items()))
        return f"{self.total} rows: {parts}"
