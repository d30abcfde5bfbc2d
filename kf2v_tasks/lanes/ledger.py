"""The ledger a pipeline uses when it names none: pay-once by default.

Without ``ledger_root`` the public tasks keep their ledger (and claims) in one place per
machine, ``PREFECT_INTEGRATIONS_KF2V_LEDGER`` or ``<PREFECT_HOME>/kf2v/ledger``, so two
processes running the same pipeline over the same pairs re-attach to one task instead of
each paying for one; an ``s3://`` URL there shares it between machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from kf2v_tasks.generation.ledger import Ledger


def default_ledger_root() -> str:
    """``PREFECT_INTEGRATIONS_KF2V_LEDGER``, else ``<PREFECT_HOME>/kf2v/ledger``."""
    from prefect.settings import get_current_settings

    from kf2v_tasks.settings import get_settings

    configured = get_settings().ledger
    if configured:
        return configured
    return str(Path(get_current_settings().home).expanduser() / "kf2v" / "ledger")


def ledger_for(ledger_root: Optional[str], storage_options: Optional[dict]) -> Ledger:
    """The ledger under ``ledger_root``, or the default one."""
    return Ledger(ledger_root or default_ledger_root(), storage_options=storage_options)
