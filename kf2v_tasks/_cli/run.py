"""``kf2v run`` and ``kf2v generate``: check the input, pick the service, run the flow.

The flows (and with them Prefect's engine) are imported only here, inside the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from kf2v_tasks._cli.inputs import (
    check_manifest,
    check_output,
    concurrency_from_args,
    defaults_from_args,
)
from kf2v_tasks._cli.service import flow_service


def cmd_run(args: argparse.Namespace) -> int:
    """Generate every row of a manifest; 0 done, 1 rows failed, 3 rows left out by max_cost."""
    from rich.console import Console

    from kf2v_tasks._cli.errors import summary_exit_code
    from kf2v_tasks._cli.head_start import head_start
    from kf2v_tasks._cli.preflight import finish_if_all_kept
    from kf2v_tasks._cli.report import ProgressBar, print_summary, progress
    from kf2v_tasks.errors import BatchFailedError

    started = time.monotonic()
    defaults = defaults_from_args(args)
    check_manifest(args, defaults)  # before Prefect or the simulator start
    check_output(args)
    console = Console(stderr=True, soft_wrap=True)
    # Every row already kept: the results are written here, and nothing starts.
    kept = finish_if_all_kept(args, defaults, started, ProgressBar(console))
    if kept is not None:
        print_summary(console, kept)
        return summary_exit_code(kept)
    concurrency = concurrency_from_args(args)
    head: dict[str, float] = {}  # tasks created while the temporary server starts

    bar = ProgressBar(console)  # the plan is said once, before the first create

    def first_creates(credentials: Any) -> None:
        head.update(head_start(args, defaults, concurrency, credentials, announce=bar.on_plan))
        if head:
            console.print(
                f"{len(head)} task(s) created while the temporary Prefect server starts; "
                "the run picks them up",
                markup=False,
            )

    _tasks_gone_with_simulator(args, console)
    with flow_service(args, meanwhile=first_creates) as credentials:
        from kf2v_flows.batch import generate_batch

        with progress(console, bar):
            state = asyncio.run(
                generate_batch(
                    manifest=args.manifest,
                    output=args.output,
                    defaults=defaults,
                    concurrency=concurrency,
                    dry_run=args.dry_run,
                    max_cost=args.max_cost,
                    fail_fast=args.fail_fast,
                    task_runs=args.task_runs,
                    order=args.order,
                    extra_columns=args.extra_columns,
                    credentials_block=credentials,
                    storage_block=args.storage_block,
                    storage_options=args.storage_options,
                    return_state=True,
                )
            )
    try:
        summary = _result(state)
    except BatchFailedError as exc:  # rows failed or over budget: the summary says which
        summary = exc.summary
    _count_head_start(summary, head)
    print_summary(console, summary)
    return summary_exit_code(summary)


def _count_head_start(summary: Any, head: dict[str, float]) -> None:
    """Tasks this run created before its flow began count as created (and estimated), not
    as picked up from an earlier run."""
    picked = [r for r in summary.results if r.task_id in head and r.reattached]
    summary.submitted += len(picked)
    summary.reattached -= len(picked)
    summary.estimated_cost = round(summary.estimated_cost + sum(head[r.task_id] for r in picked), 4)


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate one video; 0 when it is kept, else the one-line reason (exit 1)."""
    from rich.console import Console

    from kf2v_tasks.dashscope.catalog import get_model
    from kf2v_tasks.dashscope.models import GenerationOptions

    one_account(args)
    d = defaults_from_args(args)
    options = GenerationOptions(
        model=d.model,
        resolution=d.resolution,
        seed=d.seed,
        prompt_extend=d.prompt_extend,
        watermark=d.watermark,
        # No --duration: the model's own default length, as a manifest row gets it.
        duration=d.duration if d.duration is not None else get_model(d.model).default_duration,
    )
    if not args.storage_block:  # unusable frames or audio are said before anything starts
        _check_inputs(args, d.model)
    check_output(args, folder=False)
    console = Console(stderr=True, soft_wrap=True)
    with flow_service(args) as credentials:
        from kf2v_flows.single import generate_video

        state = asyncio.run(
            generate_video(
                first_frame=args.first,
                last_frame=args.last,
                output=args.output,
                prompt=args.prompt,
                negative_prompt=d.negative_prompt,
                options=options,
                audio=args.audio,
                credentials_block=credentials,
                storage_block=args.storage_block,
                storage_options=args.storage_options,
                return_state=True,
            )
        )
    video = _result(state)
    console.print(f"{video.path} {video.bytes} bytes sha256 {video.sha256}", markup=False)
    return 0


def _check_inputs(args: argparse.Namespace, model: str) -> None:
    """Check the frames (at the model's limits) and the driving audio; a bad audio is named
    as the ``--audio`` option it came from."""
    from kf2v_tasks._cli.errors import UsageError
    from kf2v_tasks.generation.audio import AudioValidationError
    from kf2v_tasks.generation.frames import FrameLimits, check_pair

    try:
        asyncio.run(
            check_pair(
                args.first,
                args.last,
                limits=FrameLimits.for_model(model),
                storage_options=args.storage_options,
                audio=args.audio,
                model=model,
            )
        )
    except AudioValidationError as exc:
        raise UsageError(f"argument --audio: {exc.reason}") from exc


def _tasks_gone_with_simulator(args: argparse.Namespace, console: Any) -> None:
    """On the built-in simulator, a stopped run's tasks ended with its simulator: say so
    once (the new one answers them unknown, and those rows are created again)."""
    from kf2v_tasks.batch.config import normalize_output
    from kf2v_tasks.generation.ledger import Ledger
    from kf2v_tasks.generation.ledger_state import LedgerState
    from kf2v_tasks.settings import get_settings

    if args.credentials_block or get_settings().api_key is not None:
        return  # a service that outlives this command keeps its tasks: they are re-attached
    ledger = Ledger(normalize_output(args.output), storage_options=args.storage_options)
    try:
        records = asyncio.run(ledger.list())
    except Exception:  # only a message: the run itself reads the ledger again
        return
    gone = [r for r in records if r.is_reusable() and r.state is not LedgerState.PERSISTED]
    if gone:
        console.print(
            f"{len(gone)} task(s) an earlier run left at its built-in simulator ended with "
            "it; their rows are created again (nothing is billed)",
            markup=False,
        )


def _result(state: Any) -> Any:
    """The flow's return value; the exception it failed with is raised (main prints it)."""
    value = state.result(raise_on_failure=False)
    if isinstance(value, BaseException):
        raise value
    if value is None and not state.is_completed():
        raise RuntimeError(state.message or f"the flow run ended {state.name}")
    return value


def one_account(args: argparse.Namespace) -> None:
    """One video runs on one account: a second ``--credentials-block`` is an error (exit 2)."""
    from kf2v_tasks._cli.errors import UsageError

    if len(args.credentials_block or []) > 1:
        raise UsageError(
            "argument --credentials-block: one video runs on one account; give it once "
            "(`kf2v run` takes several, an account pool)"
        )
