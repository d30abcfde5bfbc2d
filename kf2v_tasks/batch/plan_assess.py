"""Assess a plan: what is already made, what each row costs in the run's region, what fits.

:func:`assess_plan` reads the output folder's ledger (nothing is called at DashScope) and
decides, before anything is spent, what each valid row will do:

* **skipped**: an earlier run kept its video at its output and the file still hashes right
  (it keeps the cost it was made for);
* **re-attached**: an earlier run's task can still deliver: it is picked up, not paid again;
* **same work**: an earlier row of this manifest has the same request: its video is copied;
* otherwise it is **paid for**, and with ``max_cost`` the budget rule applies, in manifest
  order: a row fits if its price on top of the rows before it that fit stays within
  ``max_cost``; one that does not is ``over_budget`` (a cheaper later row may still fit).
  A row of the same work as an over-budget row is over budget too, and so is a row whose
  price is unknown in the run's region (``max_cost`` cannot be kept by guessing).

Prices are those of the region of the credentials in use (:func:`run_prices`). The runner
applies exactly this plan (it never submits an over-budget row), so the plan printed
before the first create, a dry run's table and the run itself agree.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from kf2v_tasks.batch.plan import BatchPlan, output_path, row_base
from kf2v_tasks.batch.results import RowResult, RowStatus, kept_result, over_budget_result
from kf2v_tasks.generation.budget import Budget
from kf2v_tasks.generation.ledger import Ledger
from kf2v_tasks.generation.persisted import find_persisted
from kf2v_tasks.generation.pricing import (
    PriceTable,
    configured_region,
    estimate_row,
    unknown_price,
)

if TYPE_CHECKING:  # the accounts load credentials blocks: Prefect, only when named
    from kf2v_tasks.lanes.account import CredentialsLike

__all__ = ["assess_plan", "dry_run_results", "run_prices"]


async def run_prices(
    credentials: Union[CredentialsLike, Sequence[CredentialsLike]],
    price_table: Union[PriceTable, Mapping[str, Any], str, None] = None,
) -> PriceTable:
    """A run's prices: ``price_table`` if it is a whole table, else the models table's in
    the region of ``credentials`` (a bare ``{model: {resolution: price}}`` patches it).

    A block with a ``base_url`` of its own keeps its ``region`` for prices; with no block,
    the configured region (``KF2V_REGION``) is used, and no key is needed (a dry run).
    An account pool across regions pays each price at its dearest.

    Raises:
        ValueError: a named block cannot be loaded (the message names it).
    """
    if isinstance(price_table, PriceTable):
        return price_table
    items = list(credentials) if isinstance(credentials, (list, tuple)) else [credentials]
    named = [c for c in items if c]
    regions = []
    if named:
        from kf2v_tasks.batch.accounts import resolve_accounts

        regions = [a.credentials.region for a in await resolve_accounts(named, quiet=True)]
    return PriceTable.from_value(price_table, list(dict.fromkeys(regions)) or configured_region())


async def assess_plan(
    plan: BatchPlan,
    ledger: Optional[Ledger],
    *,
    prices: Optional[PriceTable] = None,
    max_cost: Optional[float] = None,
    storage_options: Optional[dict] = None,
    make_missing_previews: bool = False,
) -> BatchPlan:
    """Decide what each runnable row will do, reading only the ledger (see the module docstring).

    Read-only by default, so a dry run and ``kf2v validate --output`` write nothing: a video
    kept before previews existed is reported as made, without previews. A real run passes
    ``make_missing_previews=True`` to make them now from the stored video (nothing paid).
    ``plan`` is filled in place and returned; ``ledger=None`` (nothing written there yet):
    no row is made yet; ``max_cost=None``: every row fits.

    Raises:
        ValueError: ``max_cost`` is negative or not a number.
    """
    budget = Budget(max_cost)  # the same arithmetic (and float slack) as at run time
    plan.max_cost = budget.max_cost
    rows = plan.runnable
    prices = prices or PriceTable.default()
    plan.costs = {r.id: estimate_row(r.options, prices) for r in rows}
    if ledger is not None:
        # One listing of the ledger on S3 instead of a read per row (most rows are new).
        known = await ledger.get_many(plan.fingerprints[r.id] for r in rows)
        records = [known[plan.fingerprints[r.id]] for r in rows]
        plan.records = {r.id: rec for r, rec in zip(rows, records, strict=True)}
        kept = await asyncio.gather(
            *(
                find_persisted(
                    ledger,
                    plan.fingerprints[r.id],
                    output_path(plan.output, r),
                    storage_options=storage_options,
                    record=rec,
                    price_table=prices,
                    make_missing_previews=make_missing_previews,
                )
                for r, rec in zip(rows, records, strict=True)
            )
        )
        plan.persisted = {r.id: k for r, k in zip(rows, kept, strict=True) if k is not None}
    leaders: dict[str, str] = {}  # fingerprint -> first row id doing that work
    for row in rows:
        # The first row of a piece of work leads it, as at run time; the others copy.
        leader = leaders.setdefault(plan.fingerprints[row.id], row.id)
        if row.id in plan.persisted:
            continue
        if leader != row.id:
            plan.same_work[row.id] = leader
            if leader in plan.over_budget:
                plan.over_budget[row.id] = (
                    f"same work as row {_row_of(plan, leader)}, " + (plan.over_budget[leader])
                )
            continue
        rec = plan.records.get(row.id)
        if rec is not None and rec.task_id and rec.is_reusable():
            plan.live.append(row.id)  # picked up, not created again: outside max_cost
            continue
        price = plan.costs[row.id]
        if price is None and budget.max_cost is not None:  # max_cost cannot be kept: no guess
            res = row.options.resolution.value
            plan.over_budget[row.id] = (
                f"not submitted with max_cost: {unknown_price(row.options.model, res, prices.region)}"
            )
        elif price is not None and not budget.try_reserve(price):
            plan.over_budget[row.id] = (
                f"not submitted: its {price:.2f} on top of {budget.reserved:.2f} for the "
                f"rows before it would exceed max_cost {budget.max_cost:.2f}"
            )
    return plan


def _row_of(plan: BatchPlan, row_id: str) -> int:
    return next(r.row_number for r in plan.manifest.rows if r.id == row_id)


def dry_run_results(plan: BatchPlan, *, invalid: bool = True) -> list[RowResult]:
    """A dry run's table: what a real run of this assessed plan would do, row by row.

    Rows already made are ``skipped`` with their task id and sha256 (as a real run reports
    them); rows over the budget are ``over_budget``; the rest ``planned``; invalid rows as
    validated (left out with ``invalid=False``).
    """
    out = list(plan.invalid) if invalid else []
    for row in plan.runnable:
        base = row_base(plan.output, row)
        kept = plan.persisted.get(row.id)
        if kept is not None:
            out.append(kept_result(base, kept))
        elif row.id in plan.over_budget:
            out.append(
                over_budget_result(base, plan.over_budget[row.id], plan.costs.get(row.id, 0.0))
            )
        else:
            out.append(
                RowResult(**base, status=RowStatus.PLANNED, cost=plan.costs.get(row.id, 0.0))
            )
    return sorted(out, key=lambda r: r.row)
