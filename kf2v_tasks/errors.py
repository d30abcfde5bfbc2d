"""The error hierarchy: what to retry, what never to retry, and what may have cost money.

Three families, as mixins, so one ``isinstance`` answers the only question a caller has:

* :class:`TransientError` — retry with backoff (throttling, 5xx, connection trouble).
* :class:`PermanentError` — fail now with the server's words (bad input, auth, billing).
* :class:`AmbiguousCreateError` — a create whose outcome is unknown: the task may exist
  and be billed. Never resubmitted silently; the caller's policy decides.

Messages never contain the API key: they are built from the server's ``code``/``message``
and our own words only.
"""

from __future__ import annotations

from typing import Any, Optional

from kf2v_tasks.redaction import redact_text


class Kf2vError(Exception):
    """Base of every error this package raises."""


class TransientError(Kf2vError):
    """A failure that may go away: retry with exponential backoff and jitter."""

    #: Seconds the server asked us to wait (``Retry-After``), if it said.
    retry_after: Optional[float] = None


class PermanentError(Kf2vError):
    """A failure that retrying cannot fix."""


class ApiError(Kf2vError):
    """An HTTP-layer error from DashScope: a non-2xx status with a flat error body."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status_code: int,
        request_id: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        self.code = code
        self.message = message
        self.status_code = status_code
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(f"HTTP {status_code} {code}: {message} (request_id={request_id})")


class ThrottledError(ApiError, TransientError):
    """HTTP 429 rate or burst throttling (``Throttling``, ``Throttling.RateQuota`` …)."""


class ServerError(ApiError, TransientError):
    """HTTP 500/502/503/504 from the service."""


class InvalidRequestError(ApiError, PermanentError):
    """HTTP 400 ``InvalidParameter`` and friends: the request itself is wrong."""


class AuthenticationError(ApiError, PermanentError):
    """HTTP 401 ``InvalidApiKey`` (missing, wrong, or another region's key)."""


class AccessDeniedError(ApiError, PermanentError):
    """HTTP 403 ``AccessDenied`` (e.g. synchronous call, unpurchased model)."""


class ContentRejectedError(ApiError, PermanentError):
    """``DataInspectionFailed`` / ``IPInfringementSuspect``: moderation said no."""


class QuotaExhaustedError(ApiError, PermanentError):
    """Billing or quota is gone (``Arrearage``, "Free allocated quota exceeded." …)."""


class UnsupportedOperationError(ApiError, PermanentError):
    """``UnsupportedOperation``, e.g. cancelling a task that is no longer PENDING."""


class ConnectionFailedError(TransientError):
    """The request never got an answer: connect error, reset, timeout, broken body."""

    def __init__(self, message: str, *, request_sent: bool = False) -> None:
        self.request_sent = request_sent
        super().__init__(message)


class AmbiguousCreateError(Kf2vError):
    """A create POST may have reached the server, but we got no usable answer.

    A task may exist and be billed. The client never resubmits on its own; callers
    record this (the ledger does) and decide: by default one guarded retry that is
    reported as a possible duplicate.
    """

    def __init__(self, message: str, *, cause: Optional[BaseException] = None) -> None:
        self.cause_text = str(cause) if cause else None
        super().__init__(message)


class TaskError(Kf2vError):
    """A remote task ended without a video."""

    def __init__(self, task_id: str, message: str, *, history: Optional[list[Any]] = None):
        self.task_id = task_id
        self.history = list(history or [])
        super().__init__(message)


class TaskFailedError(TaskError, PermanentError):
    """The task ended FAILED (HTTP 200 with ``output.code``/``output.message``). Not billed."""

    def __init__(
        self, task_id: str, code: str, message: str, *, history: Optional[list[Any]] = None
    ):
        self.code = code
        self.message = message
        super().__init__(task_id, f"task {task_id} FAILED: {code}: {message}", history=history)


class TaskCanceledError(TaskError, PermanentError):
    """The task was cancelled (only PENDING tasks can be)."""


class TaskExpiredError(TaskError, PermanentError):
    """The service answered UNKNOWN: the task id is unknown or older than 24 h."""


class TaskTimeoutError(TaskError, TransientError):
    """Our own deadline passed while the task was still running; it may still finish.

    Resuming later re-attaches to the same task (no second create) while it is valid.
    """


class QueueTimeoutError(TaskError, PermanentError):
    """The task sat PENDING past the queue deadline and was cancelled (never billed)."""


class DownloadError(TransientError):
    """Fetching ``video_url`` failed or the bytes did not arrive complete."""


class UrlExpiredError(DownloadError):
    """The signed ``video_url`` answered 403/expired: query the task for a fresh one."""


class FrameValidationError(PermanentError, ValueError):
    """A frame is unusable; the message names the frame and the reason."""

    def __init__(self, frame: str, reason: str, *, role: Optional[str] = None) -> None:
        self.frame = frame
        self.reason = reason
        self.role = role
        who = f"{role} frame" if role else "frame"
        super().__init__(f"{who} {frame!r}: {reason}")


class ManifestError(PermanentError, ValueError):
    """A manifest row is invalid; names the row number, the column and the reason."""

    def __init__(self, row: int, column: Optional[str], reason: str) -> None:
        self.row = row
        self.column = column
        self.reason = reason
        where = f"row {row}" + (f", column {column!r}" if column else "")
        super().__init__(f"{where}: {reason}")


class ManifestFileError(PermanentError, ValueError):
    """The manifest as a whole is unusable: it cannot be read, is not text, or its header is wrong.

    Nothing in it can run, so it is one error for the file (row problems are
    :class:`RowError`). The message is ``manifest <path>: <reason>``; signed-URL queries
    and URL credentials are left out of it (:func:`~kf2v_tasks.redaction.redact_text`).

    Attributes:
        path: the manifest as the caller named it (query string removed).
        reason: what is wrong, in words a user can act on.
        line: the line of the file the problem is on, when it has one.
    """

    def __init__(self, path: str, reason: str, *, line: Optional[int] = None) -> None:
        self.path = redact_text(path)
        self.reason = reason
        self.line = line
        super().__init__(f"manifest {self.path}: {reason}")

    def __reduce__(self):  # Prefect may pickle a failed state's exception: keep the fields
        return (type(self), (self.path, self.reason), {"line": self.line})


class BudgetExceededError(PermanentError):
    """Submitting this row would exceed ``max_cost``; it was not submitted."""


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying (see :class:`TransientError`)."""
    return isinstance(exc, TransientError)


class BatchFailedError(PermanentError):
    """A batch ended with failed or invalid rows; ``summary`` says which and why.

    Raised by the batch flow so a parent flow gets a typed error instead of a result it
    must dig out of a Failed state. The message is the batch's one-line headline.

    Example:
        ```python
        import asyncio
        from kf2v_flows.batch import generate_batch
        from kf2v_tasks import BatchFailedError

        try:
            summary = asyncio.run(generate_batch("manifest.csv", "out/"))
        except BatchFailedError as exc:  # the rows that succeeded are kept
            for row in exc.summary.results:
                print(row.row, row.status.value, row.error_message)
        ```
    """

    def __init__(self, summary: Any) -> None:
        self.summary = summary
        failed = getattr(summary, "failed", 0)
        over = getattr(summary, "over_budget", 0)
        total = getattr(summary, "total", "?")
        headline = summary.headline() if hasattr(summary, "headline") else str(summary)
        parts = []
        if failed or not over:
            parts.append(f"{failed or 'some'} of {total} rows failed")
        if over:
            parts.append(f"{over} of {total} rows not submitted: over max_cost")
        super().__init__(f"{'; '.join(parts)} ({headline})")

    def __reduce__(self):  # results may be pickled by Prefect: keep the summary
        return (type(self), (self.summary,))


class StoryboardFailedError(BatchFailedError):
    """A storyboard's transition failed (or was left out by max_cost); the message names it.

    ``summary`` is the transitions' BatchSummary (as for the batch flow) and ``storyboard``
    the films (a ``StoryboardSummary``). The clips that were made are kept: a re-run pays
    only for the others. Being a :class:`BatchFailedError`, a caller that handles failed
    batches handles failed storyboards too.

    Example:
        ```python
        import asyncio
        from kf2v_flows.storyboard import generate_storyboard
        from kf2v_tasks import StoryboardFailedError

        try:
            asyncio.run(generate_storyboard(["k1.png", "k2.png", "k3.png"], "out/film.mp4"))
        except StoryboardFailedError as exc:
            print(exc)  # storyboard 'film': row 3 (transition-02) failed: ...
            print([f.status for f in exc.storyboard.films])
        ```
    """

    def __init__(self, summary: Any, storyboard: Any = None, message: Optional[str] = None) -> None:
        super().__init__(summary)
        self.storyboard = storyboard
        if message:
            self.args = (message,)

    def __reduce__(self):  # keep both summaries and the message when Prefect pickles it
        return (type(self), (self.summary, self.storyboard, str(self)))
