"""Create the Prefect global concurrency limit that stands for the account's task quota.

Several flow runs and workers that share one DashScope account share its "tasks in
flight" quota through this limit. Idempotent: applying twice changes nothing.
"""

from __future__ import annotations

from typing import Optional

from kf2v_tasks.batch.config import DEFAULT_GLOBAL_LIMIT


async def apply_limits(max_in_flight: int = 2, *, name: Optional[str] = None) -> dict:
    """Create or update the limit ``name`` (default ``kf2v-dashscope-tasks``) to ``max_in_flight``.

    Example:
        ```python
        import asyncio
        from kf2v_tasks.batch.gcl import apply_limits
        asyncio.run(apply_limits(2))
        ```
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    name = name or DEFAULT_GLOBAL_LIMIT
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be ≥ 1")
    async with get_client() as client:
        try:
            current = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            current = None
        if current is None:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=max_in_flight, active=True)
            )
            action = "created"
        elif current.limit != max_in_flight or not current.active:
            await client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=max_in_flight, active=True)
            )
            action = "updated"
        else:
            action = "unchanged"
        limit = await client.read_global_concurrency_limit_by_name(name)
    return {"name": name, "limit": limit.limit, "active": limit.active, "action": action}


async def show_limits() -> list[dict]:
    """Every kf2v global concurrency limit on the server.

    Example:
        ```python
        import asyncio
        from kf2v_tasks.batch.gcl import show_limits
        for limit in asyncio.run(show_limits()):
            print(limit["name"], limit["limit"], limit["active_slots"])
        ```
    """
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        limits = await client.read_global_concurrency_limits(limit=200, offset=0)
    return [
        {"name": x.name, "limit": x.limit, "active": x.active, "active_slots": x.active_slots}
        for x in limits
        if x.name.startswith("kf2v")
    ]
