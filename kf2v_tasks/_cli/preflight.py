"""``kf2v run`` before Prefect starts: a run with nothing left to make ends here.

The manifest and frames are planned and the output's ledger read as the batch flow does
(:func:`~kf2v_tasks.batch.plan.plan_batch`, :func:`~kf2v_tasks.batch.plan_assess.
assess_plan`). When every valid row's video is already kept and intact, results.csv and
index.html are written as the flow writes them (rows of other manifests kept, marked as
from an earlier run) and the run is over: no Prefect server, no simulator, so no flow run,
artifacts or events either.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any, Optional

from kf2v_tasks.batch.manifest import RowDefaults


def finish_if_all_kept(
    args: argparse.Namespace, defaults: RowDefaults, started: float, bar: Any
) -> Optional[Any]:
    """The run's :class:`~kf2v_tasks.batch.results.BatchSummary` if nothing is left to make,
    else ``None`` (having written nothing). ``bar`` says the plan as a run does.
    """
    from kf2v_tasks.storage.paths import RESERVED_DIR, is_url, join

    if args.dry_run or args.storage_block:  # a dry run has its own table; a block needs Prefect
        return None
    if not is_url(args.output) and not os.path.isdir(join(args.output, RESERVED_DIR)):
        return None  # nothing was ever made there
    from kf2v_tasks.batch.config import normalize_output

    return asyncio.run(_plan(args, defaults, normalize_output(args.output), started, bar))


async def _plan(args, defaults: RowDefaults, output: str, started: float, bar: Any):
    from kf2v_tasks.batch.plan import plan_batch
    from kf2v_tasks.generation.ledger import Ledger
    from kf2v_tasks.generation.ledger_state import LedgerState

    so = args.storage_options
    plan = await plan_batch(
        args.manifest,
        output,
        defaults=defaults,
        storage_options=so,
        extra_columns=args.extra_columns,
    )
    if args.fail_fast and plan.invalid:  # the kept rows are then reported not run
        return None
    ledger = Ledger(plan.output, storage_options=so)
    for row in plan.runnable:  # a cheap look first: the assessment hashes every kept video
        record = await ledger.get(plan.fingerprints[row.id])
        if record is None or record.state is not LedgerState.PERSISTED:
            return None
    return await _finish(args, plan, ledger, started, bar)


async def _finish(args, plan, ledger, started: float, bar: Any) -> Optional[Any]:
    from kf2v_tasks.batch.gallery import GalleryWriter
    from kf2v_tasks.batch.plan import with_extras
    from kf2v_tasks.batch.plan_assess import assess_plan, dry_run_results, run_prices
    from kf2v_tasks.batch.results import (
        RESULTS_NAME,
        BatchSummary,
        RowStatus,
        to_csv,
        with_earlier_rows,
    )
    from kf2v_tasks.storage.files import remove_stale_temps, write_text_atomic
    from kf2v_tasks.storage.paths import join

    so = args.storage_options
    prices = await run_prices(None)  # the configured region: only rows to make are priced
    await assess_plan(
        plan,
        ledger,
        prices=prices,
        max_cost=args.max_cost,
        storage_options=so,
        make_missing_previews=True,  # as a run does (no payment)
    )
    if any(r.id not in plan.persisted for r in plan.runnable):
        return None  # a kept file is gone or changed: the run makes it again
    await remove_stale_temps(plan.output)
    cost = plan.estimate(prices)
    await bar.on_plan(plan, cost, False)
    results = []
    for r in dry_run_results(plan):  # what the run reports: kept rows skipped, invalid rows
        record = plan.records.get(r.id) if r.status is RowStatus.SKIPPED else None
        duplicate = bool(record and record.possible_duplicate)
        results.append(r.model_copy(update={"possible_duplicate": duplicate}) if duplicate else r)
    results = with_extras(plan, results)
    counts = BatchSummary.count(results)
    summary = BatchSummary(
        manifest=args.manifest,
        output=plan.output,
        total=plan.manifest.total,
        counts=counts,
        skipped=counts.get(RowStatus.SKIPPED.value, 0),
        possible_duplicates=sum(1 for r in results if r.possible_duplicate),
        estimated_cost=cost.total,
        currency=cost.currency,
        max_cost=plan.max_cost,
        results=results,
    )
    kept = await with_earlier_rows(plan.output, RESULTS_NAME, results, storage_options=so)
    summary.results_path = join(plan.output, RESULTS_NAME)
    text = to_csv(kept, plan.manifest.extra_columns)
    await write_text_atomic(summary.results_path, text, storage_options=so)
    gallery = GalleryWriter(so)
    await gallery.on_plan(plan, cost, False)
    summary.wall_seconds = round(time.monotonic() - started, 3)
    await gallery.on_finish(summary)
    return summary
