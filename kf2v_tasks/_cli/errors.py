"""How the ``kf2v`` command reports a failure: one line on stderr and an exit code.

Exit codes: 0 done, 1 the work ran and something failed, 2 the command was asked for
something it cannot do (a bad flag, an unusable manifest or frame, a missing extra),
3 nothing failed but ``--max-cost`` left rows unsubmitted, 130 interrupted. ``--debug``
re-raises instead, so the traceback is shown.
"""

from __future__ import annotations

import re
from typing import Any

from kf2v_tasks.batch.manifest import ManifestFileError
from kf2v_tasks.errors import FrameValidationError

#: Longest error line printed; the rest is in the traceback (``--debug``).
MAX_CHARS = 600

EXIT_OK = 0
EXIT_FAILED = 1  # rows failed or were invalid
EXIT_USAGE = 2  # bad options or input
EXIT_OVER_BUDGET = 3  # nothing failed, but max_cost left rows unsubmitted

#: The exit codes of ``kf2v run`` and ``kf2v validate``, for their ``--help``.
EXIT_CODES_HELP = """\
exit codes:
  0  every row was made (or skipped: already made)
  1  some rows failed or were invalid (the report names each)
  2  bad options or an unusable manifest; nothing was submitted
  3  nothing failed, but --max-cost left rows unsubmitted (over_budget)
"""


def summary_exit_code(summary: Any) -> int:
    """1 if rows failed or were invalid, else 3 if max_cost left rows out, else 0."""
    if summary.failed:
        return EXIT_FAILED
    return EXIT_OVER_BUDGET if summary.over_budget else EXIT_OK


class UsageError(Exception):
    """What the user asked for cannot be done as asked; the message says why (exit code 2)."""


def exit_code(exc: BaseException) -> int:
    """2 for problems with the input (fix it and run again), 1 for anything else."""
    from pydantic import ValidationError

    bad_input = (UsageError, ManifestFileError, FrameValidationError, ValidationError)
    return 2 if isinstance(exc, bad_input) else 1


def describe(exc: BaseException) -> str:
    """One line for ``exc``: its message, or for pydantic errors ``field: reason`` per error.

    Input values are never shown (a pydantic error would echo a key it failed to validate).
    """
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = [_pydantic_line(e) for e in exc.errors(include_input=False, include_url=False)]
        text = f"invalid {exc.title}: " + "; ".join(parts)
    elif isinstance(exc, (UsageError, ManifestFileError, FrameValidationError)):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def _pydantic_line(error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg"))
