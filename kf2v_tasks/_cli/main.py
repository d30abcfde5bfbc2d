"""The ``kf2v`` command: run a manifest, generate one video, validate, serve the simulator.

It only parses arguments and calls the flows. With no ``DASHSCOPE_API_KEY`` set it starts
the built-in simulator and says so in one line, so the first run works out of the box.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, Optional

from kf2v_tasks import clock

EMBEDDED_SPEED = 60.0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", choices=["wan2.2-kf2v-flash", "wanx2.1-kf2v-plus", "wan2.1-kf2v-plus"]
    )
    p.add_argument("--resolution", choices=["480P", "720P", "1080P"])
    p.add_argument("--seed", type=int)
    p.add_argument("--negative-prompt")
    p.add_argument(
        "--no-prompt-extend", action="store_true", help="Do not let the service rewrite prompts."
    )
    p.add_argument("--watermark", action="store_true", help='Add the "AI生成" watermark.')
    p.add_argument(
        "--time-scale",
        type=float,
        help="Divide every wait by this factor (KF2V_TIME_SCALE); for rehearsals on the simulator.",
    )
    p.add_argument("--credentials-block", help="Saved DashScopeCredentials block name.")
    p.add_argument(
        "--storage-options",
        type=json.loads,
        help='Non-secret fsspec options as JSON, e.g. \'{"client_kwargs": {"endpoint_url": ...}}\'.',
    )
    p.add_argument("--storage-block", help="Saved block with storage credentials (slug/name).")
    p.add_argument(
        "--simulator-speed",
        type=float,
        default=EMBEDDED_SPEED,
        help="Speed of the built-in simulator used when no DASHSCOPE_API_KEY is set.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="Show Prefect's run logs.")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kf2v``."""
    parser = argparse.ArgumentParser(
        prog="kf2v", description="Wan kf2v (first-and-last-frame video) on Prefect."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="Generate every row of a CSV manifest.")
    run.add_argument("manifest", help="CSV manifest (path or fsspec URL).")
    run.add_argument("--output", required=True, help="Output folder (path or fsspec URL).")
    run.add_argument("--concurrency", type=int, default=2, help="Remote tasks in flight.")
    run.add_argument("--submits-per-second", type=float, default=2.0)
    run.add_argument("--queries-per-second", type=float, default=20.0)
    run.add_argument("--prompt", help="Default prompt for rows without one.")
    run.add_argument("--max-cost", type=float, help="Stop submitting once this would be exceeded.")
    run.add_argument("--dry-run", action="store_true", help="Validate and estimate only.")
    run.add_argument("--fail-fast", action="store_true", help="Submit nothing if a row is invalid.")
    run.add_argument(
        "--task-runs",
        choices=["per_step", "per_row"],
        default="per_step",
        help="Prefect task runs per row: one per step (default) or one per row (lighter).",
    )
    _add_common(run)

    gen = sub.add_parser("generate", help="Generate one video.")
    gen.add_argument("--first", required=True, help="First frame.")
    gen.add_argument("--last", required=True, help="Last frame.")
    gen.add_argument("--prompt", help="Text prompt.")
    gen.add_argument("--output", required=True, help="Output .mp4 (path or fsspec URL).")
    _add_common(gen)

    val = sub.add_parser("validate", help="Validate a manifest and estimate its cost.")
    val.add_argument("manifest")
    val.add_argument(
        "--output", help="Where results.csv of the dry run goes (default: a temp dir)."
    )
    val.add_argument("--prompt")
    _add_common(val)

    from kf2v_tasks.simulator import cli as simulator_cli

    sim = sub.add_parser("simulator", help="Serve the local DashScope simulator.")
    simulator_cli.add_arguments(sim)

    limits = sub.add_parser("limits", help="Prefect global concurrency limits for the account.")
    limits_sub = limits.add_subparsers(dest="limits_command", required=True)
    apply = limits_sub.add_parser("apply", help="Create or update the limits (idempotent).")
    apply.add_argument("--max-in-flight", type=int, default=2)
    apply.add_argument("--name", default=None, help="Limit name (default kf2v-dashscope-tasks).")
    limits_sub.add_parser("show", help="Show the limits.")

    stack = sub.add_parser(
        "stack", help="Start a local Prefect server, a worker and the simulator."
    )
    stack.add_argument("--prefect-port", type=int, default=4200)
    stack.add_argument("--simulator-port", type=int, default=8910)
    stack.add_argument("--speed", type=float, default=EMBEDDED_SPEED)
    stack.add_argument("--pool", default="kf2v-process")
    stack.add_argument("--workers", type=int, default=1)
    return parser


@contextlib.contextmanager
def service_or_simulator(speed: float, time_scale: Optional[float]) -> Iterator[None]:
    """Use the real service when ``DASHSCOPE_API_KEY`` is set, else the built-in simulator."""
    if time_scale:
        clock.set_time_scale(time_scale)
    if os.environ.get("DASHSCOPE_API_KEY", "").strip():
        yield
        return
    from kf2v_tasks.simulator import SimulatorConfig, run_simulator

    with run_simulator(SimulatorConfig(speed=speed)) as sim:
        print(
            f"No DASHSCOPE_API_KEY set: using the built-in DashScope simulator at "
            f"{sim.base_url} ({speed:g}x speed, nothing is billed). "
            "Set DASHSCOPE_API_KEY to use the real service.",
            flush=True,
        )
        os.environ["DASHSCOPE_API_KEY"] = "sk-simulator"
        os.environ["DASHSCOPE_HTTP_BASE_URL"] = sim.base_url
        if not time_scale:
            clock.set_time_scale(speed)
        try:
            yield
        finally:
            os.environ.pop("DASHSCOPE_API_KEY", None)
            os.environ.pop("DASHSCOPE_HTTP_BASE_URL", None)


def _defaults(args: argparse.Namespace):
    from kf2v_tasks.batch.manifest import RowDefaults

    values: dict[str, Any] = {}
    for name in ("model", "resolution", "seed", "negative_prompt", "prompt"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    if args.no_prompt_extend:
        values["prompt_extend"] = False
    if args.watermark:
        values["watermark"] = True
    return RowDefaults(**values)


@contextlib.contextmanager
def _quiet_prefect(verbose: bool) -> Iterator[None]:
    """Keep the terminal for the progress bar; Prefect's run logs still reach the API/UI."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if verbose:
        yield
        return
    from prefect.logging.configuration import setup_logging
    from prefect.settings import PREFECT_LOGGING_LEVEL, temporary_settings

    # Prefect configured logging when it was imported; the ephemeral server configures it
    # again on start, so the level must be a setting in force for the whole command.
    with temporary_settings(updates={PREFECT_LOGGING_LEVEL: "WARNING"}):
        setup_logging(incremental=False)
        yield


def cmd_run(args: argparse.Namespace, *, dry_run: bool = False) -> int:
    from rich.console import Console

    from kf2v_flows.batch import generate_batch
    from kf2v_tasks.batch.runner import ConcurrencySettings

    output = args.output or tempfile.mkdtemp(prefix="kf2v-validate-")
    concurrency = ConcurrencySettings(
        max_in_flight=getattr(args, "concurrency", 2),
        submits_per_second=getattr(args, "submits_per_second", 2.0),
        queries_per_second=getattr(args, "queries_per_second", 20.0),
    )
    console = Console(stderr=True)
    with service_or_simulator(args.simulator_speed, args.time_scale), _progress(console) as bar:
        state = asyncio.run(
            generate_batch(
                manifest=args.manifest,
                output=output,
                defaults=_defaults(args),
                concurrency=concurrency,
                dry_run=dry_run or getattr(args, "dry_run", False),
                max_cost=getattr(args, "max_cost", None),
                fail_fast=getattr(args, "fail_fast", False),
                task_runs=getattr(args, "task_runs", "per_step"),
                credentials_block=args.credentials_block,
                storage_block=args.storage_block,
                storage_options=args.storage_options,
                return_state=True,
            )
        )
        bar.stop()
    summary = _summary_from_state(state)
    if summary is None:
        console.print(f"[red]Batch failed:[/red] {state.message}")
        return 2
    _print_summary(console, summary, args.storage_options)
    return 1 if summary.failed else 0


def _summary_from_state(state):
    from kf2v_tasks.batch.results import BatchSummary

    try:
        value = state.result(raise_on_failure=False)
    except Exception:
        return None
    return value if isinstance(value, BatchSummary) else None


def _print_summary(console, summary, storage_options=None, max_rows: int = 20) -> None:
    from kf2v_tasks.batch.results import FAILED_STATUSES, from_csv
    from kf2v_tasks.batch.sharding import read_text

    try:
        rows = from_csv(
            asyncio.run(read_text(summary.results_path, storage_options=storage_options))
        )
    except Exception:  # the summary still says how many failed
        rows = []
    bad = [r for r in rows if r.status in FAILED_STATUSES]
    for r in bad[:max_rows]:
        console.print(f"[red]{r.status.value}[/red] {r.error_message or r.error_code}")
    if len(bad) > max_rows:
        console.print(f"… and {len(bad) - max_rows} more in {summary.results_path}")
    console.print(f"[bold]{summary.headline()}[/bold]")
    console.print(
        f"submitted {summary.submitted}, re-attached {summary.reattached}, "
        f"skipped {summary.skipped}; cost estimated {summary.estimated_cost:.2f} "
        f"{summary.currency}, spent {summary.spent:.2f} {summary.currency}; "
        f"{summary.wall_seconds:.1f} s"
    )
    console.print(f"results: {summary.results_path}")


@contextlib.contextmanager
def _progress(console):
    """A live progress bar fed by the runner's row listener."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kf2v_tasks.batch.runner import (
        add_plan_listener,
        add_progress_listener,
        remove_plan_listener,
        remove_progress_listener,
    )

    progress = Progress(
        TextColumn("[bold]kf2v"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    task_id = progress.add_task("starting", total=None)

    def listener(result, counts, total):
        text = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        progress.update(task_id, completed=sum(counts.values()), total=total, description=text)

    def on_plan(plan, cost, dry_run):
        # Said before anything is spent: what will run and what it should cost.
        progress.console.print(
            f"{len(plan.runnable)} valid rows, {len(plan.invalid)} invalid; estimated cost "
            f"{cost.total:.2f} {cost.currency}"
            + (" (dry run: nothing is submitted)" if dry_run else "")
        )

    add_progress_listener(listener)
    add_plan_listener(on_plan)
    progress.start()
    try:
        yield progress
    finally:
        progress.stop()
        remove_progress_listener(listener)
        remove_plan_listener(on_plan)


def cmd_generate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from kf2v_flows.single import generate_video
    from kf2v_tasks.dashscope.models import GenerationOptions

    d = _defaults(args)
    options = GenerationOptions(
        model=d.model,
        resolution=d.resolution,
        seed=d.seed,
        prompt_extend=d.prompt_extend,
        watermark=d.watermark,
    )
    console = Console(stderr=True)
    with service_or_simulator(args.simulator_speed, args.time_scale):
        state = asyncio.run(
            generate_video(
                first_frame=args.first,
                last_frame=args.last,
                output=args.output,
                prompt=args.prompt,
                negative_prompt=d.negative_prompt,
                options=options,
                credentials_block=args.credentials_block,
                storage_block=args.storage_block,
                storage_options=args.storage_options,
                return_state=True,
            )
        )
    if not state.is_completed():
        console.print(f"[red]Failed:[/red] {state.message}")
        return 1
    video = state.result()
    console.print(f"[bold]{video.path}[/bold] {video.bytes} bytes sha256 {video.sha256}")
    return 0


def cmd_limits(args: argparse.Namespace) -> int:
    from kf2v_tasks.batch.gcl import apply_limits, show_limits

    if args.limits_command == "apply":
        print(json.dumps(asyncio.run(apply_limits(args.max_in_flight, name=args.name)), indent=2))
    else:
        print(json.dumps(asyncio.run(show_limits()), indent=2))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``kf2v`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "simulator":
        from kf2v_tasks.simulator import cli as simulator_cli

        return simulator_cli.run(args)
    if args.command == "stack":
        from kf2v_tasks._cli.stack import run_stack

        return run_stack(args)
    with _quiet_prefect(getattr(args, "verbose", False)):
        if args.command == "run":
            return cmd_run(args)
        if args.command == "validate":
            return cmd_run(args, dry_run=True)
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "limits":
            return cmd_limits(args)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
