"""Per-row outcomes of a batch and the ``results.csv`` that lists them.

A real run writes ``results.csv`` with every row's latest outcome. A dry run (and
``kf2v validate --output``) writes :data:`DRY_RUN_RESULTS_NAME` instead and never touches
``results.csv``: the task ids and sha256 of a finished run must never be lost to a rehearsal.
A manifest's own columns (``extra_columns``) follow the file's own columns, in manifest order.

No run writes a results.csv that holds less than the one it replaces: the rows of the
existing file that this run's manifest has no row for (another manifest into the same
output, or rows since removed from this one) are kept after this run's rows, marked
``earlier_run`` (:func:`with_earlier_rows`); the gallery keeps them the same way.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from enum import Enum
from typing import Any, Optional

from pydantic import BaseModel, Field

from kf2v_tasks.batch.manifest_columns import RESULT_FILE_COLUMNS
from kf2v_tasks.errors import AmbiguousCreateError

logger = logging.getLogger("kf2v_tasks.batch.results")

#: What a real run writes under the output folder.
RESULTS_NAME = "results.csv"
#: What a dry run writes instead, so that a real run's results.csv is never overwritten.
DRY_RUN_RESULTS_NAME = "results.dry-run.csv"


class RowStatus(str, Enum):
    """How a manifest row ended."""

    SUCCEEDED = "succeeded"  # video and sidecar persisted in this run
    SKIPPED = "skipped"  # already persisted by an earlier or another run (same fingerprint)
    FAILED = "failed"  # validated, then failed at submit, poll or persist
    INVALID = "invalid"  # rejected by validation; never submitted
    OVER_BUDGET = "over_budget"  # not submitted: max_cost would be exceeded
    PLANNED = "planned"  # dry run: would be submitted (within max_cost)
    NOT_RUN = "not_run"  # the batch stopped (fail_fast, or interrupted) before this row
    CANCELLED = "cancelled"  # queued ahead, then cancelled before it started (not billed)


#: Statuses that count as a failure of the batch.
FAILED_STATUSES = frozenset({RowStatus.FAILED, RowStatus.INVALID})
#: Statuses whose row has its video at its output (made in this run, or kept from before).
MADE_STATUSES = frozenset({RowStatus.SUCCEEDED, RowStatus.SKIPPED})


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
    cost: Optional[float] = Field(
        default=0.0, description="What its video cost when made (empty: price unknown)."
    )
    sha256: Optional[str] = None
    bytes: Optional[int] = None
    reattached: bool = False
    possible_duplicate: bool = False
    account: Optional[str] = Field(
        default=None, description="The credentials block the task ran on (never the key)."
    )
    earlier_run: bool = Field(
        default=False,
        description="Kept from an earlier run's results.csv: this run's manifest has no such row.",
    )
    extra: dict[str, str] = Field(
        default_factory=dict, description="The manifest's own columns (extra_columns) as read."
    )

    def csv_row(self) -> dict[str, str]:
        """The row as ``results.csv`` cells (empty string for a missing value), extras last.

        Example:
            ```python
            from kf2v_tasks.batch.results import RowResult, RowStatus
            row = RowResult(row=2, status=RowStatus.PLANNED, extra={"job": "42"})
            assert row.csv_row()["task_id"] == "" and row.csv_row()["job"] == "42"
            ```
        """
        data = self.model_dump(mode="json", exclude={"extra"})
        cells = {k: "" if data.get(k) is None else str(data[k]) for k in RESULT_FILE_COLUMNS}
        return {**cells, **{k: v for k, v in self.extra.items() if k not in cells}}


def failed_result(
    base: dict[str, Any], exc: BaseException, submission: Any = None, cost: Optional[float] = 0.0
) -> RowResult:
    """The ``failed`` result of a row (``base``: its row, id and output) that raised ``exc``.

    The message carries the task's status history when the error has one; a create whose
    outcome is unknown is flagged as a possible duplicate (a billed task may exist).
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


def kept_result(
    base: dict[str, Any],
    kept: Any,
    *,
    task_id: Optional[str] = None,
    possible_duplicate: bool = False,
) -> RowResult:
    """The ``skipped`` result of a row whose video is already kept (``kept``: a PersistedVideo).

    It keeps the cost the video was made for; ``task_id`` stands in when the ledger has none.
    """
    return RowResult(
        **base,
        status=RowStatus.SKIPPED,
        task_id=kept.task_id or task_id,
        sha256=kept.sha256,
        bytes=kept.bytes,
        cost=kept.cost,
        possible_duplicate=possible_duplicate,
    )


def over_budget_result(base: dict[str, Any], reason: str, cost: Optional[float] = 0.0) -> RowResult:
    """The ``over_budget`` result of a row never submitted because of ``max_cost``."""
    return RowResult(
        **base,
        status=RowStatus.OVER_BUDGET,
        error_code="BudgetExceeded",
        error_message=reason,
        cost=cost,
    )


def to_csv(results: list[RowResult], extra_columns: Optional[list[str]] = None) -> str:
    """Render results (sorted by row) as CSV text: the file's columns, then the extras.

    ``extra_columns`` defaults to the rows' extra columns in the order first seen, which
    is manifest order when every row carries all of them (as the runner's rows do). Rows
    kept from an earlier run come after this run's, with their own extra columns too.
    """
    if extra_columns is None:
        extra_columns = list(dict.fromkeys(k for r in results for k in r.extra))
    earlier = (k for r in results if r.earlier_run for k in r.extra)
    columns = list(dict.fromkeys([*RESULT_FILE_COLUMNS, *extra_columns, *earlier]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    for r in sorted(results, key=lambda r: (r.earlier_run, r.row)):
        cells = r.csv_row()
        writer.writerow({k: cells.get(k, "") for k in columns})
    return buf.getvalue()


def from_csv(text: str) -> list[RowResult]:
    """Parse a ``results.csv`` written by :func:`to_csv` (used to merge shards).

    Columns that are not the file's own are the manifest's extras, kept in ``extra``.
    """
    out = []
    for cells in csv.DictReader(io.StringIO(text)):
        clean: dict[str, Any] = {
            k: (v if v != "" else None) for k, v in cells.items() if k in RESULT_FILE_COLUMNS
        }
        for flag in ("reattached", "possible_duplicate", "earlier_run"):
            clean[flag] = clean.get(flag) == "True"
        clean["cost"] = None if clean.get("cost") is None else float(clean["cost"])
        clean["extra"] = {
            k: v or "" for k, v in cells.items() if k is not None and k not in RESULT_FILE_COLUMNS
        }
        out.append(RowResult.model_validate(clean))
    return out


def earlier_rows(current: list[RowResult], previous: list[RowResult]) -> list[RowResult]:
    """The rows of ``previous`` (an earlier results.csv) that ``current`` has no row for.

    A row is the same row when it has the same id or the same output (the same video); a
    row with neither is matched by its row number. What is left is returned marked
    ``earlier_run``, in its own row order.
    """
    ids = {r.id for r in current if r.id}
    outputs = {r.output for r in current if r.output}
    numbers = {r.row for r in current}
    kept = []
    for r in sorted(previous, key=lambda r: r.row):
        if r.id in ids or r.output in outputs:
            continue
        if not r.id and not r.output and r.row in numbers:
            continue
        kept.append(r if r.earlier_run else r.model_copy(update={"earlier_run": True}))
    return kept


async def read_results(path: str, *, storage_options: Optional[dict] = None) -> list[RowResult]:
    """The rows of the results.csv at ``path``; none when there is no such file.

    Raises:
        OSError: the file exists but cannot be read (it is not taken as empty).
        ValueError: the file is not a results table.
    """
    from kf2v_tasks.storage.files import read_bytes

    try:
        data = await read_bytes(path, storage_options=storage_options)
    except FileNotFoundError:
        return []
    return from_csv(data.decode("utf-8"))


async def with_earlier_rows(
    output: str,
    name: str,
    results: list[RowResult],
    *,
    storage_options: Optional[dict] = None,
) -> list[RowResult]:
    """``results``, then the rows of ``<output>/<name>`` this run has none for (``results.csv`` only).

    A shard's file and a dry run's table are this run's alone: returned as they are. An
    existing results.csv that cannot be parsed is kept beside it as
    ``results.unreadable.csv`` (never lost), and a warning says so; one that cannot be
    read at all raises (it is not taken as empty).
    """
    from kf2v_tasks.storage.files import read_bytes, write_bytes_atomic
    from kf2v_tasks.storage.paths import join

    if name != RESULTS_NAME:
        return results
    path = join(output, name)
    try:
        data = await read_bytes(path, storage_options=storage_options)
    except FileNotFoundError:
        return results
    try:
        previous = from_csv(data.decode("utf-8"))
    except (ValueError, csv.Error) as exc:  # not UTF-8, or not a results table
        aside = join(output, "results.unreadable.csv")
        await write_bytes_atomic(aside, data, storage_options=storage_options)
        logger.warning("%s is not a results table (%s); kept as %s", path, exc, aside)
        return results
    return [*results, *earlier_rows(results, previous)]


def n_rows(n: int, what: str = "") -> str:
    """``"1 row"``, ``"2 rows"``; ``what`` goes between: ``n_rows(1, "valid")`` is ``"1 valid row"``."""
    word = "row" if n == 1 else "rows"
    return f"{n} {what} {word}" if what else f"{n} {word}"


class BatchSummary(BaseModel):
    """What a batch run did, returned by the batch flow (and carried by ``BatchFailedError``).

    Example:
        ```python
        from kf2v_tasks.batch.results import BatchSummary, RowResult, RowStatus

        rows = [RowResult(row=2, id="a", status=RowStatus.SUCCEEDED)]
        summary = BatchSummary(manifest="m.csv", output="out", total=1,
                               counts=BatchSummary.count(rows), results=rows)
        assert summary.failed == 0 and summary.headline() == "1 row: 1 succeeded"
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
    max_cost: Optional[float] = Field(default=None, description="The run's budget, if any.")
    cancelled: int = Field(
        default=0, description="Tasks queued ahead and cancelled before they started (free)."
    )
    look_ahead_off: Optional[str] = Field(
        default=None, description="Why look-ahead was switched off during the run, if it was."
    )
    stopped: Optional[str] = Field(
        default=None,
        description="Why the run ended before its rows did (interrupted, unusable manifest).",
    )
    results: list[RowResult] = Field(
        default_factory=list, description="One result per manifest row, in row order."
    )

    @property
    def failed(self) -> int:
        """Rows that failed or were invalid (plus shards that never reported)."""
        return sum(self.counts.get(s.value, 0) for s in FAILED_STATUSES) + self.counts.get(
            "shard_failed", 0
        )

    @property
    def over_budget(self) -> int:
        """Rows not submitted (or, in a dry run, that would not be) because of max_cost.

        A run that leaves any is not complete: the batch flow fails it and ``kf2v run``
        exits 3, so a scheduled pipeline sees that part of the batch was never made.

        Example:
            ```python
            from kf2v_tasks.batch.results import BatchSummary
            s = BatchSummary(manifest="m.csv", output="out", total=4,
                             counts={"succeeded": 2, "over_budget": 2}, max_cost=1.2)
            assert s.over_budget == 2 and s.failed == 0
            assert s.headline() == (
                "4 rows: 2 over_budget, 2 succeeded; 2 not submitted: over max_cost 1.20"
            )
            ```
        """
        return self.counts.get(RowStatus.OVER_BUDGET.value, 0)

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
        line = f"{n_rows(self.total)}: {parts}"
        if self.over_budget:
            limit = f" {self.max_cost:.2f}" if self.max_cost is not None else ""
            verb = "would not be submitted" if self.dry_run else "not submitted"
            line += f"; {self.over_budget} {verb}: over max_cost{limit}"
        return line


def row_totals(results: list[RowResult]) -> dict[str, Any]:
    """The :class:`BatchSummary` fields that are sums over its rows."""
    counts = BatchSummary.count(results)
    return dict(
        counts=counts,
        skipped=counts.get(RowStatus.SKIPPED.value, 0),
        possible_duplicates=sum(1 for r in results if r.possible_duplicate),
        spent=round(sum(r.cost or 0.0 for r in results if r.status is RowStatus.SUCCEEDED), 4),
    )
