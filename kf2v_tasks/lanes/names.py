"""What lanes are called: the Prefect global concurrency limit of each (account, model).

A lane's limit is named ``<prefix>-<account>-<model>``: the account's label (a
credentials block's ``account``, else a one-way hash of the key: never key material) and
the model as sent, so every run, worker and pipeline on one Prefect server that uses the
same account and model counts against the same limit.
"""

from __future__ import annotations

import re

#: Tasks kept PENDING at the service beyond a lane's running ones (look-ahead).
DEFAULT_QUEUE_AHEAD = 1
#: The first word of every lane's global concurrency limit.
DEFAULT_LIMIT_PREFIX = "kf2v"


def lane_limit_name(prefix: str, account: str, model: str) -> str:
    """The global concurrency limit of one lane."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{prefix}-{account}-{model}")
    return safe.strip("-") or "kf2v"


def account_limit_name(prefix: str, account: str) -> str:
    """The name the account-wide shares (queries per second) are counted under."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{prefix}-{account}").strip("-")
