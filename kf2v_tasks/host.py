"""This host's processes: whether one still runs (a claim's or a lease's holder)."""

from __future__ import annotations

import os
from typing import Any


def pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` of this host runs; unknown (another user's, a bad id) counts
    as running, the safe side: its claim or lease is then waited out, never taken."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError, TypeError):
        return True
    return True
