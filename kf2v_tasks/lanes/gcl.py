"""The Prefect global concurrency limit of each lane (one account's quota for one model).

Several flow runs, workers and pipelines that share one DashScope account share each
model's quota through that model's limit. Idempotent: applying twice changes nothing.
:func:`apply_limits` sets a limit (``kf2v limits apply``); :func:`ensure_limit` only
creates it when missing, which every lane does when it opens, so overlapping runs share
the quota without anyone having run ``kf2v limits apply``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import weakref
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from kf2v_tasks.host import pid_alive
from kf2v_tasks.lanes.names import DEFAULT_QUEUE_AHEAD

logger = logging.getLogger("kf2v_tasks.lanes.gcl")


async def apply_limits(
    name: str, running: int = 2, *, queue_ahead: int = DEFAULT_QUEUE_AHEAD
) -> dict:
    """Set the lane limit ``name`` to the tasks at the service: running plus queued ahead.

    The same total every batch run and task keeps to (see :mod:`kf2v_tasks.lanes.lane`).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    if running < 1:
        raise ValueError("a lane runs at least 1 task")
    if queue_ahead < 0:
        raise ValueError("queue_ahead must be ≥ 0")
    total = running + queue_ahead
    async with get_client() as client:
        try:
            current = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            current = None
        if current is None:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=total, active=True)
            )
            action = "created"
        elif current.limit != total or not current.active:
            await client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=total, active=True)
            )
            action = "updated"
        else:
            action = "unchanged"
        limit = await client.read_global_concurrency_limit_by_name(name)
    return {"name": name, "limit": limit.limit, "active": limit.active, "action": action}


async def show_limits() -> list[dict]:
    """Every kf2v global concurrency limit on the server."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        limits = await client.read_global_concurrency_limits(limit=200, offset=0)
    return [
        {"name": x.name, "limit": x.limit, "active": x.active, "active_slots": x.active_slots}
        for x in limits
        if x.name.startswith("kf2v")
    ]


async def ensure_limit(name: str, limit: int) -> dict:
    """Make sure the limit ``name`` exists: create it with ``limit`` slots when missing.

    An existing limit is left as it is (its size may have been set on purpose with
    ``kf2v limits apply``). Race-safe: when two runs create it at the same moment, the
    server refuses the second (409) and that run reads the one that won.

    Returns:
        ``{"name", "limit", "active", "action"}`` with ``action`` ``"created"`` or
        ``"exists"``.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    if limit < 1:
        raise ValueError("limit must be ≥ 1")
    async with get_client() as client:
        action = "exists"
        try:
            current = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True)
                )
                action = "created"
            except ObjectAlreadyExists:  # another run created it between our read and create
                pass
            current = await client.read_global_concurrency_limit_by_name(name)
    return {"name": name, "limit": current.limit, "active": current.active, "action": action}


# ---------------------------------------------------------------------- slots with leases

#: Seconds a held slot's lease lasts without renewal: the server's shortest (60 s).
LEASE_SECONDS = 60.0


def _lease_folder() -> Path:
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home) / "kf2v" / "gcl-leases"


#: API URLs of servers this process started for one command (kf2v run's temporary server):
#: their leases live in the server's memory and end with it, while the slots they counted
#: stay taken in the database the next one opens. As in ephemeral mode, lanes then share
#: through lock files, not global limits.
TEMPORARY_API_URLS: set[str] = set()


def shared_server() -> bool:
    """Whether a Prefect server that outlives this process is configured (its global
    limits can be shared)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return bool(url) and str(url) not in TEMPORARY_API_URLS


def _api_url() -> str:
    from prefect.settings import get_current_settings

    return str(get_current_settings().api.url or "")


class LeaseBook:
    """The lease ids this process holds, in a small file under ``PREFECT_HOME``.

    Prefect frees the slots of a holder that died only when its lease expires, and an
    ephemeral or test server (no repossessor service) never does. A run killed while
    holding slots would then block every later run on that server. So each pool writes
    the ids of the leases it holds (with host, pid and API URL); the next run on this
    machine gives back the leases of processes that are gone (:func:`free_dead_leases`).
    """

    def __init__(self) -> None:
        self.path = _lease_folder() / f"{socket.gethostname()}-{os.getpid()}-{uuid4().hex[:8]}.json"
        self.ids: set[str] = set()
        self.api_url = _api_url()

    def add(self, lease_id: Any) -> None:
        """Note a lease this process now holds."""
        self.ids.add(str(lease_id))
        self._write()

    def remove(self, lease_id: Any) -> None:
        """Forget a lease given back."""
        self.ids.discard(str(lease_id))
        self._write()

    def _write(self) -> None:
        try:
            if not self.ids:
                self.path.unlink(missing_ok=True)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            doc = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "api_url": self.api_url,
                "leases": sorted(self.ids),
            }
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.path)
        except OSError as exc:  # bookkeeping only: the lease still expires on a real server
            logger.debug("could not write lease book %s: %s", self.path, exc)


async def free_dead_leases() -> int:
    """Give back the global-limit slots held by processes on this machine that are gone.

    Returns:
        How many leases were given back.
    """
    from prefect.client.orchestration import get_client

    folder = _lease_folder()
    if not folder.is_dir():
        return 0
    host, freed = socket.gethostname(), 0
    for path in folder.glob("*.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        # Any API URL: `kf2v run`'s temporary server has a new port each time, over the
        # same database; a lease this server does not know is refused, harmlessly.
        if doc.get("host") != host or pid_alive(doc.get("pid")):
            continue
        async with get_client() as client:
            for lease_id in doc.get("leases", []):
                try:
                    await client.release_concurrency_slots_with_lease(UUID(lease_id))
                    freed += 1
                except Exception:  # expired or revoked already: nothing to give back
                    pass
        path.unlink(missing_ok=True)
        logger.info(
            "gave back the global-limit slots of run pid %s (no longer running)", doc["pid"]
        )
    return freed


#: One ask at a time from this process, whatever the lane: concurrent writes to a SQLite
#: server's database answer 503, which Prefect's client retries after 2 s, then 4 s (B6
#: measured a lane opening up to 6 real seconds late that way). One lock per loop: the
#: lanes all ask from their own loop; a run's rate share from the flow's.
_asking: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _ask_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _asking.get(loop)
    if lock is None:
        lock = _asking[loop] = asyncio.Lock()
    return lock


async def acquire_slot(client: Any, name: str, slots: int = 1) -> tuple[UUID, int]:
    """Take up to ``slots`` slots of the limit ``name`` under one lease; wait while it is full.

    Asks for ``slots`` at once; when fewer are free (the server answers 423), asks for half
    as many, down to one, and then waits for one. Returns the lease and how many it holds.

    Raises:
        RuntimeError: the limit does not exist.
    """
    import httpx

    want = max(1, slots)
    while True:
        try:
            async with _ask_lock():
                response = await client.increment_concurrency_slots_with_lease(
                    names=[name], slots=want, mode="concurrency", lease_duration=LEASE_SECONDS
                )
        except httpx.HTTPStatusError as exc:
            # 423 Locked: not that many free; 422: more than the whole limit.
            if exc.response.status_code not in (422, 423):
                raise
            if want > 1:
                want //= 2
                continue
            if exc.response.status_code == 422:
                raise
            # Real seconds: the server's pacing, capped (its hint grows with every denial).
            hint = float(exc.response.headers.get("Retry-After", 1.0))
            await asyncio.sleep(min(hint, MAX_FULL_WAIT))
            continue
        body = response.json()
        if not body.get("limits"):
            raise LimitMissingError(f"global concurrency limit {name!r} does not exist")
        return UUID(body["lease_id"]), want


async def keep_lease(client: Any, lease_id: UUID, until: asyncio.Event) -> None:
    """Renew the lease every third of its life until ``until`` is set.

    Real seconds: the lease runs on the server's clock, not service time. A failed renewal
    is logged and tried again: the lease has two more thirds of slack.
    """
    while True:
        try:
            await asyncio.wait_for(until.wait(), timeout=LEASE_SECONDS / 3)
            return
        except TimeoutError:
            try:
                await client.renew_concurrency_lease(lease_id, LEASE_SECONDS)
            except Exception as exc:
                logger.warning("renewing a global-limit lease failed: %s", exc)


class LimitMissingError(RuntimeError):
    """The global concurrency limit is gone (deleted since the lane opened)."""


#: Real seconds at most between two asks for a slot of a full limit.
MAX_FULL_WAIT = 1.0


async def usable_limit(name: str, size: int) -> bool:
    """Whether the pool can hold slots of ``name`` (creating it first if missing); logs which."""
    if not await _limit_status(name, size):
        return False
    try:
        await free_dead_leases()
    except Exception as exc:  # they expire on a real server; say why a wait may be long
        logger.warning("could not give back the slots of killed runs: %s", exc)
    return True


async def _limit_status(name: str, size: int) -> bool:
    if not shared_server():
        # Ephemeral mode: each process runs its own server over a shared SQLite file, and
        # the slots of a killed process would stay taken there for good.
        logger.info(
            "no Prefect server configured (PREFECT_API_URL); limiting in-process to %d tasks",
            size,
        )
        return False
    try:
        status = await ensure_limit(name, size)
    except Exception as exc:  # no server reachable: local limiting still protects the account
        logger.warning(
            "could not read or create global concurrency limit %r (%s); limiting in-process "
            "to %d tasks: overlapping runs are not limited together",
            name,
            exc,
            size,
        )
        return False
    if not status["active"]:
        logger.info(
            "global concurrency limit %r is inactive; limiting in-process to %d tasks", name, size
        )
        return False
    logger.info(
        "sharing the lane's tasks with other runs through global concurrency limit %r "
        "(%d slots, %s)",
        name,
        status["limit"],
        "created now" if status["action"] == "created" else "already there",
    )
    if status["limit"] < size:
        # The server's limit is the account's: this run keeps to it, whatever it asked for.
        logger.warning(
            "global concurrency limit %r allows %d tasks at the service, fewer than this "
            "run's %d (running + queue_ahead); change it with `kf2v limits apply "
            "--lane MODEL=N --queue-ahead M`",
            name,
            status["limit"],
            size,
        )
    return True
