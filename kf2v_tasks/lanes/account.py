"""One DashScope account in this process: its limits, its lanes, a client per event loop.

Every kf2v task and every batch row reaches the service through :func:`open_account`:
the limits (each model's creates/s, the account's queries/s) are one object per account
whatever the thread, and each model's running slots are one :class:`~kf2v_tasks.lanes.
lane.Lane`, so a ``.map`` over 100 pairs, a batch and another process's pipeline together
keep within the account's quota. An httpx pool belongs to one event loop, so the HTTP
client is shared by the tasks running on the same loop at the same time.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Optional, Union

from kf2v_tasks.credentials import DashScopeCredentials, aresolve_credentials
from kf2v_tasks.dashscope.client import Kf2vClient
from kf2v_tasks.dashscope.limits import AccountLimits, LaneQuota
from kf2v_tasks.lanes.lane import Lane, LaneSlot, open_lane
from kf2v_tasks.lanes.names import DEFAULT_LIMIT_PREFIX, DEFAULT_QUEUE_AHEAD

CredentialsLike = Union[DashScopeCredentials, str, None]

_limits: dict[str, AccountLimits] = {}
_lock = threading.Lock()


def account_id(credentials: DashScopeCredentials) -> str:
    """A stable, non-secret id of the account behind ``credentials`` (key and endpoint).

    Two blocks with the same key are one account. A one-way hash: the key itself is
    never kept as a dictionary key or shown.
    """
    raw = "\n".join([credentials.api_key.get_secret_value(), credentials.resolved_base_url])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def account_label(credentials: DashScopeCredentials) -> str:
    """The account's name in lane and limit names: the block's ``account``, else ``key-<hash>``."""
    return credentials.account or f"key-{account_id(credentials)[:10]}"


def limits_for(
    credentials: DashScopeCredentials, quotas: Optional[Mapping[str, LaneQuota]] = None
) -> AccountLimits:
    """The process-wide :class:`AccountLimits` of this account (created on first use).

    Lane sizes come from the models table, overridden by the settings
    (``PREFECT_INTEGRATIONS_KF2V_MAX_IN_FLIGHT`` for every model, ``_LANES`` per model) and
    by ``quotas`` (a run's own, e.g. ``--lane``), latest first.
    """
    from kf2v_tasks.settings import get_settings

    key = account_id(credentials)
    with _lock:
        limits = _limits.get(key)
        if limits is None:
            s = get_settings()
            limits = _limits[key] = AccountLimits(
                max_in_flight=s.max_in_flight,
                submits_per_second=s.submits_per_second,
                queries_per_second=s.queries_per_second,
                quotas=lane_quotas(s.lanes),
            )
    if quotas:
        limits.set_quotas(quotas)
    return limits


def lane_quotas(specs: Mapping[str, str]) -> dict[str, LaneQuota]:
    """Per-model quotas from ``{"model": "RUNNING[:CREATES]"}`` (settings, CLI, flow)."""
    from kf2v_tasks.dashscope.limits import table_quota
    from kf2v_tasks.settings_env import parse_lane_spec

    quotas = {}
    for model, spec in specs.items():
        running, creates = parse_lane_spec(spec, model)
        table, _ = table_quota(model)
        quotas[model] = LaneQuota(running, creates or table.creates_per_second)
    return quotas


@dataclass
class Account:
    """What a task needs to talk to DashScope: a client for this loop, the limits, the lanes."""

    client: Kf2vClient
    limits: AccountLimits
    label: str

    async def ended(self, task_ids: list[str]) -> Iterable[str]:
        """Which of ``task_ids`` the service reports ended (for freeing slots)."""
        states = await asyncio.gather(
            *(self.client.get_task(t) for t in task_ids), return_exceptions=True
        )
        return [
            t
            for t, s in zip(task_ids, states, strict=True)
            if not isinstance(s, BaseException) and s.status.is_terminal
        ]

    async def lane(
        self,
        model: str,
        *,
        queue_ahead: int = DEFAULT_QUEUE_AHEAD,
        limit_prefix: Optional[str] = DEFAULT_LIMIT_PREFIX,
    ) -> Lane:
        """The lane of ``model`` on this account."""
        return await open_lane(
            self.label,
            model,
            self.limits.quota(model),
            queue_ahead=queue_ahead,
            limit_prefix=limit_prefix,
        )

    async def take_slot(self, model: str) -> LaneSlot:
        """Wait for a slot of ``model``'s lane; bind it to the task once created."""
        lane = await self.lane(model)
        return await lane.take(probe=self.ended)


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
    """Resolve ``credentials`` (a block, a saved block's name, or ``None`` for the environment)
    and open a client.

    Tasks running at once on one event loop share one client (one pool, one poller whose list
    sweeps answer for all); it closes when the last is done. ``optional``: yield ``None``
    when no credentials are configured (a fresh video URL downloads without them).
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
        yield Account(
            client=shared.client,
            limits=limits,
            label=account_label(creds),
        )
    finally:
        with _lock:
            shared.users -= 1
            last = shared.users == 0
            if last and _clients.get(key) is shared:
                del _clients[key]
        if last:
            await shared.client.aclose()
