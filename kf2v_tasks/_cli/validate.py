"""``kf2v validate``: check every row and frame of a manifest and estimate its cost.

It plans the batch exactly as a run would (:func:`kf2v_tasks.batch.plan.plan_batch` and
:func:`~kf2v_tasks.batch.plan.assess_plan`), without a flow: no Prefect server, no
simulator, no request to DashScope. With ``--output`` (the run's output folder) rows an
earlier run already made there show as ``skipped`` with their task id and sha256, and the
table is written to ``results.dry-run.csv``: a run's ``results.csv`` is never touched.
Without ``--output`` it writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid
from typing import Any, Optional, TextIO

from kf2v_tasks._cli.errors import EXIT_FAILED, EXIT_OK, EXIT_OVER_BUDGET
from kf2v_tasks._cli.inputs import (
    check_output,
    defaults_from_args,
    storage_options_from_args,
)


def cmd_validate(args: argparse.Namespace, *, out: Optional[TextIO] = None) -> int:
    """Print the counts, every invalid row, the estimate and the budget; exit code as for run.

    Returns:
        1 if a row is invalid, else 3 if ``--max-cost`` leaves rows out, else 0.

    Raises:
        ManifestFileError: the manifest cannot be read or its header is wrong.
    """
    from kf2v_tasks.generation.pricing import PriceTable

    out = out or sys.stdout
    if args.output:  # the dry run's table goes there: say now if it cannot
        check_output(args)
    if args.storage_block:  # loading the block needs the Prefect API, quietly
        from kf2v_tasks._cli.service import quiet_prefect

        with quiet_prefect(verbose=False):
            storage_options = asyncio.run(storage_options_from_args(args))
    else:
        storage_options = args.storage_options
    table = PriceTable.default()
    plan, cost, results_path = asyncio.run(_validate(args, table, storage_options))
    _print_report(out, args.manifest, plan, cost)
    if results_path:
        print(
            f"results: {results_path} (a dry run's table; results.csv is left as it is)",
            file=out,
        )
    if plan.invalid:
        return EXIT_FAILED
    return EXIT_OVER_BUDGET if plan.over_budget else EXIT_OK


async def _validate(
    args: argparse.Namespace, table: Any, storage_options: Optional[dict]
) -> tuple[Any, Any, Optional[str]]:
    from kf2v_tasks.batch.config import normalize_output
    from kf2v_tasks.batch.plan import plan_batch, with_extras
    from kf2v_tasks.batch.plan_assess import assess_plan, dry_run_results
    from kf2v_tasks.batch.results import DRY_RUN_RESULTS_NAME, to_csv
    from kf2v_tasks.generation.ledger import Ledger
    from kf2v_tasks.storage.files import write_text_atomic
    from kf2v_tasks.storage.paths import join

    plan = await plan_batch(
        args.manifest,
        args.output or _nowhere(),
        defaults=defaults_from_args(args),
        storage_options=storage_options,
        extra_columns=args.extra_columns,
    )
    # Only an output folder can hold rows already made (read-only: the ledger is not written).
    ledger = Ledger(plan.output, storage_options=storage_options) if args.output else None
    await assess_plan(
        plan, ledger, prices=table, max_cost=args.max_cost, storage_options=storage_options
    )
    cost = plan.estimate(table)
    if not args.output:
        return plan, cost, None
    path = join(normalize_output(args.output), DRY_RUN_RESULTS_NAME)
    text = to_csv(with_extras(plan, dry_run_results(plan)), plan.manifest.extra_columns)
    await write_text_atomic(path, text, storage_options=storage_options)
    return plan, cost, path


def _nowhere() -> str:
    """An output root that does not exist: with no --output there is nothing to check there."""
    return os.path.join(tempfile.gettempdir(), f"kf2v-validate-{uuid.uuid4().hex}")


def _print_report(out: TextIO, manifest: str, plan: Any, cost: Any) -> None:
    from kf2v_tasks.batch.results import n_rows

    total = plan.manifest.total
    print(
        f"{manifest}: {n_rows(total)}, {len(plan.runnable)} valid, {len(plan.invalid)} invalid",
        file=out,
    )
    for warning in plan.manifest.warnings:
        print(f"warning: {warning}", file=out)
    for bad in plan.invalid:
        print(bad.error_message, file=out)
    if plan.persisted:
        made = n_rows(len(plan.persisted))
        print(f"{made} already made in the output folder: skipped", file=out)
    models = ", ".join(
        f"{model} {resolution} x{n}"
        for model, entry in sorted(cost.by_model.items())
        for resolution, n in sorted(entry["resolutions"].items())
    )
    print(
        f"estimated cost {cost.total:.2f} {cost.currency} for {n_rows(cost.rows, 'valid')}"
        + (f" ({models})" if models else "")
        + cost.notes(),
        file=out,
    )
    if cost.warning:
        print(f"warning: {cost.warning}", file=out)
    budget = plan.budget_line(cost.currency)
    if budget:
        print(f"budget: {budget}", file=out)
    out.flush()
