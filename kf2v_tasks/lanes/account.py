"""One quota per DashScope account in this process, shared by every kf2v task that uses it.

The four tasks may run inline in a flow, or on their own threads and event loops when
fanned out with ``.submit()``/``.map()``. They all reach the account through
:func:`open_account`: the limits (creates/s, queries/s, tasks in flight) are one object
per account, whatever the thread, so a ``.map`` over 100 pairs keeps within the account's
2 tasks in flight instead of 100 clients each assuming the whole quota. An httpx pool
belongs to one event loop, so the HTTP client is shared by the tasks running on the same
loop at the same time.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Optional, Union

from kf2v_tasks.credentials import DashScopeCredentials, aresolve_credentials
from kf2v_tasks.dashscope.client import Kf2vClient
from kf2v_tasks.dashscope.limits import AccountLimits

CredentialsLike = Union[DashScopeCredentials, str, None]

#: Service seconds a submitter waits for a slot before asking which held tasks ended.
PROBE_AFTER = 30.0

_limits: dict[str, AccountLimits] = {}
_lock = threading.Lock()


def account_id(credentials: DashScopeCredentials) -> str:
    """A stable, non-secret name for the account behind ``credentials``.

    A hash of the key, endpoint and workspace: the same account shares one quota, and the
    key itself is never kept as a dictionary key or shown.
    """
    raw = "\n".join(
        [
            credentials.api_key.get_secret_value(),
            credentials.resolved_base_url,
            credentials.workspace or "",
        ]
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def limits_for(credentials: DashScopeCredentials) -> AccountLimits:
    """The process-wide :class:`AccountLimits` of this account (created on first use).

    Its sizes come from the settings (``PREFECT_INTEGRATIONS_KF2V_MAX_IN_FLIGHT`` …,
    defaults 2 tasks in flight, 2 creates/s, 20 queries/s).

    Example:
        ```python
        from kf2v_tasks.account import limits_for
        limits = limits_for(DashScopeCredentials.load("prod"))
        print(limits.in_flight.held)
        ```
    """
    key = account_id(credentials)
    with _lock:
        limits = _limits.get(key)
        if limits is None:
            from kf2v_tasks.settings import get_settings

            s = get_settings()
            limits = _limits[key] = AccountLimits(
                max_in_flight=s.max_in_flight,
                submits_per_second=s.submits_per_second,
                queries_per_second=s.queries_per_second,
            )
        return limits


@dataclass
class Account:
    """What a task needs to talk to DashScope: a client for this loop and the shared quota."""

    client: Kf2vClient
    limits: AccountLimits

    async def ended(self, task_ids: list[str]) -> Iterable[str]:
        """Which of ``task_ids`` the service reports ended (for freeing in-flight slots)."""
        states = await asyncio.gather(
            *(self.client.get_task(t) for t in task_ids), return_exceptions=True
        )
        return [
            t
            for t, s in zip(task_ids, states, strict=True)
            if not isinstance(s, BaseException) and s.status.is_terminal
        ]

    async def take_slot(self) -> str:
        """Wait for an in-flight slot; returns its provisional key (bind it after the create)."""
        return await self.limits.in_flight.acquire(probe=self.ended, probe_after=PROBE_AFTER)


@dataclass
class _Shared:
    client: Kf2vClient
    users: int = 0


#: One open client per (event loop, account) while any task on that loop uses it.
_clients: dict[tuple[int, str], _Shared] = {}


@asynccontextmanager
async def open_account(
    credentials: CredentialsLike = None, *, optional: bool = False
) -> AsyncIterator[Optional[Account]]:
    """Resolve ``credentials`` (a block, a saved block's name, or the environment) and open a client.

    Tasks that run at the same time on one event loop share one client (one connection
    pool, one poller that answers for all their tasks with shared list sweeps); it is
    closed when the last of them is done. The sync twins all run on Prefect's one
    "run sync" loop, so a ``.map`` of them shares a client too.

    Args:
        credentials: a ``DashScopeCredentials`` block, its saved name, or ``None`` for
            ``DASHSCOPE_API_KEY`` (and ``DASHSCOPE_HTTP_BASE_URL``).
        optional: yield ``None`` instead of raising when no credentials are configured
            anywhere (a fresh video URL downloads without them).

    Example:
        ```python
        async with open_account("prod") as account:
            state = await account.client.get_task(task_id)
        ```
    """
    try:
        creds = await aresolve_credentials(credentials)
    except ValueError:
        if not optional or credentials is not None:
            raise
        yield None
        return
    limits = limits_for(creds)
    key = (id(asyncio.get_running_loop()), account_id(creds))
    with _lock:
        shared = _clients.get(key)
        if shared is None or shared.client.is_closed:
            shared = _clients[key] = _Shared(creds.get_client(limits=limits))
        shared.users += 1
    try:
        yield Account(client=shared.client, limits=limits)
    finally:
        with _lock:
            shared.users -= 1
            last = shared.users == 0
            if last and _clients.get(key) is shared:
                del _clients[key]
        if last:
            await shared.client.aclose()
