"""A run's first creates, sent while its temporary Prefect server is still starting.

A new PREFECT_HOME's server takes 10 s and more (its SQLite database is migrated first).
Meanwhile each model's lane sends the creates it would send first anyway (its free
running slots, longest rows first), through the same ledger, claims and account limits
as the flow (:func:`~kf2v_tasks.generation.submit.submit_generation`): each task id is
recorded and its claim held by this process, so the flow's rows re-attach to these tasks
and nothing is paid twice. Only where nothing else shares the account's lanes (no Prefect
server configured) and nothing bounds the spending (no ``--max-cost``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Optional

from kf2v_tasks.batch.manifest import RowDefaults

logger = logging.getLogger("kf2v_tasks.cli.head_start")


def head_start(
    args: argparse.Namespace,
    defaults: RowDefaults,
    concurrency: Any,
    credentials: Any,
    announce: Optional[Callable[[Any, Any, bool], Awaitable[None]]] = None,
) -> dict[str, float]:
    """Create the first rows' tasks now; the price of each task created, by task id.

    Never raises for a failed create: the flow's own row then tries (and reports) it.
    """
    if args.dry_run or args.storage_block or args.max_cost is not None:
        return {}
    if isinstance(credentials, (str, list)):  # saved blocks: the server reads them
        return {}
    try:
        return asyncio.run(_create_first(args, defaults, concurrency, credentials, announce))
    except Exception as exc:  # the flow plans again and says what is wrong
        logger.debug("no head start: %s", exc)
        return {}


async def _create_first(args, defaults, concurrency, credentials, announce) -> dict[str, float]:
    from kf2v_tasks.batch.config import normalize_output
    from kf2v_tasks.batch.plan import plan_batch
    from kf2v_tasks.batch.plan_assess import assess_plan, run_prices
    from kf2v_tasks.batch.runtimes import RunTimeHistory, order_rows
    from kf2v_tasks.credentials import aresolve_credentials
    from kf2v_tasks.generation.ledger import UNREAD, Ledger
    from kf2v_tasks.generation.submit import submit_generation
    from kf2v_tasks.lanes.account import account_label, limits_for

    so = args.storage_options
    plan = await plan_batch(
        args.manifest,
        normalize_output(args.output),
        defaults=defaults,
        storage_options=so,
        extra_columns=args.extra_columns,
    )
    if args.fail_fast and plan.invalid:
        return {}
    ledger = Ledger(plan.output, storage_options=so)
    prices = await run_prices(None)
    await assess_plan(plan, ledger, prices=prices, storage_options=so)
    done = set(plan.persisted) | set(plan.live) | set(plan.same_work) | set(plan.over_budget)
    rows = [r for r in plan.runnable if r.id not in done]
    models = list(dict.fromkeys(r.options.model for r in plan.runnable))
    quotas = concurrency.quotas(models)
    history = await RunTimeHistory.load(plan.output, so)
    key = lambda r: (r.options.model, r.options.resolution, r.options.duration)  # noqa: E731
    first = []
    for model in models:
        busy = sum(1 for r in plan.runnable if r.id in plan.live and r.options.model == model)
        lane = [r for r in order_rows(rows, key, history, args.order) if r.options.model == model]
        first += lane[: max(0, quotas[model].running - busy)]
    if not first:
        return {}
    if announce is not None:  # the estimate and any region warning, before paying
        await announce(plan, plan.estimate(prices), False)
    creds = await aresolve_credentials(credentials)
    async with creds.get_client(limits=limits_for(creds, quotas)) as client:
        subs = await asyncio.gather(
            *(
                submit_generation(
                    client,
                    plan.frames[r.id],
                    r.prompt,
                    r.negative_prompt,
                    r.options,
                    ledger=ledger,
                    row_id=r.id,
                    storage_options=so,
                    record=plan.records.get(r.id, UNREAD),
                    account=account_label(creds),
                )
                for r in first
            ),
            return_exceptions=True,
        )
    costs = {r.id: plan.costs.get(r.id) or 0.0 for r in first}
    return {
        s.task_id: costs[r.id]
        for r, s in zip(first, subs, strict=True)
        if not isinstance(s, BaseException) and not s.reused
    }
