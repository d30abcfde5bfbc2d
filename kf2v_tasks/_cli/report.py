"""What ``kf2v run`` shows: a live progress bar, the estimate before spending, the summary."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Optional

from kf2v_tasks.batch.reporting import BatchObserver, observing


class ProgressBar(BatchObserver):
    """A rich progress bar fed by the batch runs of this process."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]kf2v"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task_id = self.bar.add_task("starting", total=None)
        self.announced = False

    async def on_plan(self, plan: Any, cost: Any, dry_run: bool) -> None:
        """Say what will run, what it should cost and what fits max_cost, before spending.

        Once: when the head start said it before its first creates, the flow's own plan
        (which then counts those tasks as picked up) is not said again.
        """
        from rich.markup import escape  # ids and paths may hold "[...]"

        if self.announced:
            return
        self.announced = True
        from kf2v_tasks.batch.results import n_rows

        console = self.bar.console
        console.print(
            f"{n_rows(len(plan.runnable), 'valid')}, {len(plan.invalid)} invalid; estimated cost "
            f"{cost.total:.2f} {cost.currency}{cost.notes()}"
            + (" (dry run: nothing is submitted)" if dry_run else ""),
            markup=False,
        )
        if cost.warning:  # once, before anything is paid
            console.print(f"[yellow]warning[/yellow] {escape(cost.warning)}")
        for warning in plan.manifest.warnings:
            console.print(f"[yellow]warning[/yellow] {escape(warning)}")
        budget = plan.budget_line(cost.currency)
        if budget:
            colour = "yellow" if plan.over_budget else "green"
            console.print(f"[{colour}]budget[/{colour}] {escape(budget)}")

    def on_row(self, result: Any, counts: dict[str, int], total: int) -> None:
        """Advance the bar; its text is the count per status so far."""
        text = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        self.bar.update(self.task_id, completed=sum(counts.values()), total=total, description=text)

    def __enter__(self) -> ProgressBar:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


@contextlib.contextmanager
def progress(console: Any, bar: Optional[ProgressBar] = None) -> Iterator[ProgressBar]:
    """A :class:`ProgressBar` shown and registered for every batch run inside the block."""
    with bar or ProgressBar(console) as shown, observing(shown):
        yield shown


def print_summary(console: Any, summary: Any, max_rows: int = 20) -> None:
    """The failed rows (at most ``max_rows``), the headline, the counts and where results are."""
    from rich.markup import escape  # messages and paths may hold "[...]"

    from kf2v_tasks.batch.results import FAILED_STATUSES, RowStatus, n_rows

    bad = [r for r in summary.results if r.status in FAILED_STATUSES]
    for r in bad[:max_rows]:
        text = escape(r.error_message or r.error_code or "")
        console.print(f"[red]{r.status.value}[/red] {text}")
    over = [r for r in summary.results if r.status is RowStatus.OVER_BUDGET]
    if over:
        names = ", ".join(f"{r.row} ({r.id})" for r in over[:max_rows])
        more = f" and {len(over) - max_rows} more" if len(over) > max_rows else ""
        limit = f"{summary.max_cost:.2f}" if summary.max_cost is not None else "set"
        console.print(
            f"[yellow]over_budget[/yellow] {n_rows(len(over))} not submitted (max_cost "
            f"{limit} {escape(summary.currency)}): {escape(names)}{more}"
        )
    if len(bad) > max_rows:
        console.print(f"… and {len(bad) - max_rows} more in {escape(str(summary.results_path))}")
    console.print(f"[bold]{escape(summary.headline())}[/bold]")
    console.print(
        f"submitted {summary.submitted}, re-attached {summary.reattached}, "
        f"skipped {summary.skipped}; cost estimated {summary.estimated_cost:.2f} "
        f"{summary.currency}, spent {summary.spent:.2f} {summary.currency}; "
        f"{summary.wall_seconds:.1f} s"
    )
    cancelled = getattr(summary, "cancelled", 0)
    if cancelled:
        console.print(f"cancelled {cancelled} queued task(s) before they started (not billed)")
    off = getattr(summary, "look_ahead_off", None)
    if off:
        console.print(f"[yellow]look-ahead off[/yellow]: {escape(off)}")
    console.print(f"results: {escape(str(summary.results_path))}")
