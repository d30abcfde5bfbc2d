"""``kf2v validate``: check every row and frame of a manifest and estimate its cost.

It plans the batch exactly as a run would (:func:`kf2v_tasks.batch.plan.plan_batch`),
without a flow: no Prefect server, no simulator, no request to DashScope. It writes
nothing unless ``--output`` is given, and never over an existing ``results.csv``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid
from typing import Any, Optional, TextIO

from kf2v_tasks._cli.errors import UsageError
from kf2v_tasks._cli.inputs import defaults_from_args, storage_options_from_args

RESULTS_NAME = "results.csv"


def cmd_validate(args: argparse.Namespace, *, out: Optional[TextIO] = None) -> int:
    """Print the counts, every invalid row and the estimate; 1 if a row is invalid, else 0.

    Raises:
        ManifestFileError: the manifest cannot be read or its header is wrong.
        UsageError: ``--output`` already holds a results.csv.

    Example:
        ```python
        from kf2v_tasks._cli.parser import build_parser
        code = cmd_validate(build_parser().parse_args(["validate", "examples/manifest.csv"]))
        ```
    """
    from kf2v_tasks.batch.plan import plan_batch
    from kf2v_tasks.generation.pricing import PriceTable, estimate

    out = out or sys.stdout
    defaults = defaults_from_args(args)
    if args.storage_block:  # loading the block needs the Prefect API, quietly
        from kf2v_tasks._cli.service import quiet_prefect

        with quiet_prefect(verbose=False):
            storage_options = asyncio.run(storage_options_from_args(args))
    else:
        storage_options = args.storage_options
    results_path = None
    if args.output:
        results_path = _results_path(args.output)
        _refuse_existing(results_path, storage_options)
    plan = asyncio.run(
        plan_batch(
            args.manifest,
            args.output or _nowhere(),
            defaults=defaults,
            storage_options=storage_options,
        )
    )
    table = PriceTable.default()
    cost = estimate([r.options for r in plan.runnable], table)
    _print_report(out, args.manifest, plan, cost)
    if results_path:
        _refuse_existing(results_path, storage_options)  # it may have appeared meanwhile
        asyncio.run(_write_results(results_path, args.output, plan, table, storage_options))
        print(f"results: {results_path}", file=out)
    return 1 if plan.invalid else 0


def _nowhere() -> str:
    """An output root that does not exist: with no --output there is nothing to check there."""
    return os.path.join(tempfile.gettempdir(), f"kf2v-validate-{uuid.uuid4().hex}")


def _results_path(output: str) -> str:
    from kf2v_tasks.batch.config import normalize_output
    from kf2v_tasks.storage.paths import join

    return join(normalize_output(output), RESULTS_NAME)


def _refuse_existing(path: str, storage_options: Optional[dict]) -> None:
    from kf2v_tasks.storage.paths import open_fs

    fs, p = open_fs(path, storage_options)
    if fs.exists(p):
        raise UsageError(
            f"{path} already exists; validate never overwrites a run's results "
            "(choose another --output)"
        )


def _print_report(out: TextIO, manifest: str, plan: Any, cost: Any) -> None:
    total = plan.manifest.total
    print(
        f"{manifest}: {total} rows, {len(plan.runnable)} valid, {len(plan.invalid)} invalid",
        file=out,
    )
    for warning in plan.manifest.warnings:
        print(f"warning: {warning}", file=out)
    for bad in plan.invalid:
        print(bad.error_message, file=out)
    models = ", ".join(
        f"{model} {resolution} x{n}"
        for model, entry in sorted(cost.by_model.items())
        for resolution, n in sorted(entry["resolutions"].items())
    )
    print(
        f"estimated cost {cost.total:.2f} {cost.currency} for {cost.rows} valid rows"
        + (f" ({models})" if models else ""),
        file=out,
        flush=True,
    )


async def _write_results(
    path: str, output: str, plan: Any, table: Any, storage_options: Optional[dict]
) -> None:
    from kf2v_tasks.batch.config import normalize_output
    from kf2v_tasks.batch.plan import output_path
    from kf2v_tasks.batch.results import RowResult, RowStatus, to_csv
    from kf2v_tasks.generation.pricing import estimate_row
    from kf2v_tasks.storage.files import write_text_atomic

    root = normalize_output(output)
    planned = [
        RowResult(
            row=row.row_number,
            id=row.id,
            status=RowStatus.PLANNED,
            output=output_path(root, row),
            cost=estimate_row(row.options, table),
        )
        for row in plan.runnable
    ]
    text = to_csv(planned + list(plan.invalid))
    await write_text_atomic(path, text, storage_options=storage_options)
