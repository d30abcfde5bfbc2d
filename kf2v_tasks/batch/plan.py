"""Plan a batch: validate every row and its frames; :mod:`~kf2v_tasks.batch.plan_assess` then
says what is already made and what fits the budget.

Plain async code with no Prefect in it, so ``kf2v validate`` can call it without a server.
The batch flow passes a ``gate`` that runs the whole validation as one Prefect task run:
a task run per row would cost milliseconds of CPU per row before the first submit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Optional

from pydantic import BaseModel, Field

from kf2v_tasks.batch.config import normalize_output
from kf2v_tasks.batch.manifest import ParsedManifest, load_manifest
from kf2v_tasks.batch.manifest_defaults import RowDefaults
from kf2v_tasks.batch.manifest_row import ManifestRow
from kf2v_tasks.batch.results import RowResult, RowStatus, n_rows
from kf2v_tasks.errors import Kf2vError
from kf2v_tasks.generation.fingerprint import request_fingerprint
from kf2v_tasks.generation.frames import FrameLimits, FrameMemo, check_pair
from kf2v_tasks.generation.models import FramePair
from kf2v_tasks.generation.persisted import PersistedVideo
from kf2v_tasks.generation.pricing import (
    CostEstimate,
    PriceTable,
    estimate,
    region_warning,
)
from kf2v_tasks.storage.paths import join, resolves_outside, safe_child

#: The manifest column a validation error's ``role`` points at.
_ROLE_COLUMNS = {
    "first": "first_frame",
    "last": "last_frame",
    "audio": "audio",
    "clip": "first_clip",
}

#: Wraps the validation of ``rows`` rows: ``await gate(rows, work)`` must await ``work()``.
Gate = Callable[[int, Callable[[], Awaitable[Any]]], Awaitable[Any]]


class BatchPlan(BaseModel):
    """A validated manifest: runnable rows with their frames, and the rest with reasons.

    After :func:`assess_plan` it also says what each runnable row will do (see the module
    docstring): which are already made, picked up again, copies, and over the budget.
    """

    manifest: ParsedManifest
    output: str = Field(default="", description="The output root (normalised).")
    frames: dict[str, FramePair] = Field(default_factory=dict)  # by row id
    fingerprints: dict[str, str] = Field(default_factory=dict)  # by row id
    invalid: list[RowResult] = Field(default_factory=list)
    costs: dict[str, Optional[float]] = Field(
        default_factory=dict, description="Price per row id (None: unknown in the region)."
    )
    persisted: dict[str, PersistedVideo] = Field(
        default_factory=dict, description="Rows an earlier run already made, intact (by id)."
    )
    live: list[str] = Field(default_factory=list, description="Rows whose task is picked up.")
    same_work: dict[str, str] = Field(
        default_factory=dict, description="Row id -> the earlier row id doing the same work."
    )
    max_cost: Optional[float] = None
    over_budget: dict[str, str] = Field(
        default_factory=dict, description="Row id -> why it is not submitted (manifest order)."
    )
    # The ledger record of each runnable row as read by assess_plan (None: no record).
    records: dict[str, Any] = Field(default_factory=dict, exclude=True, repr=False)

    @property
    def runnable(self) -> list[ManifestRow]:
        """Rows that passed every check, in manifest order."""
        return [r for r in self.manifest.rows if r.id in self.frames]

    def estimate(self, prices: PriceTable) -> CostEstimate:
        """What this run will make, at ``prices``; the videos already kept shown apart.

        Rows picked up again or copied from another row are not made (nor paid) again.
        """
        done = set(self.persisted) | set(self.live) | set(self.same_work)
        new = [r for r in self.runnable if r.id not in done]
        est = estimate(new, prices, kept=[v.cost for v in self.persisted.values()])
        # Tasks picked up run in this region too: the region warning covers them.
        models = [r.options.model for r in self.runnable if r.id not in self.persisted]
        return est.model_copy(update={"warning": region_warning(models, prices.region)})

    def budget_line(self, currency: str = "CNY") -> Optional[str]:
        """With ``max_cost``: one line naming the rows that fit and those that do not.

        ``'max_cost 1.20 CNY: 1 row fits (1.00 CNY): 2 (a); 1 row over budget, not
        submitted: 3 (b)'``; rows with no price in the region are named with the reason.
        """
        if self.max_cost is None:
            return None
        done = set(self.persisted) | set(self.live) | set(self.same_work)
        paid = [r for r in self.runnable if r.id not in done and r.id not in self.over_budget]
        over = [r for r in self.runnable if r.id in self.over_budget]
        unpriced = [r for r in over if self.costs.get(r.id) is None]
        over = [r for r in over if self.costs.get(r.id) is not None]
        total = sum(self.costs.get(r.id) or 0.0 for r in paid)

        def names(rows: list[ManifestRow]) -> str:
            shown = ", ".join(f"{r.row_number} ({r.id})" for r in rows[:10])
            more = len(rows) - 10
            return shown + (f" and {more} more" if more > 0 else "")

        line = (
            f"max_cost {self.max_cost:.2f} {currency}: {n_rows(len(paid))} "
            f"{'fits' if len(paid) == 1 else 'fit'} ({total:.2f} {currency})"
            + (f": {names(paid)}" if paid else "")
        )
        if over:
            line += f"; {n_rows(len(over))} over budget, not submitted: {names(over)}"
        if unpriced:  # the first reason names the model, the region and how to give a price
            whys = list(dict.fromkeys(self.over_budget[r.id] for r in unpriced))
            more = f" (and {len(whys) - 1} more model/resolution)" if len(whys) > 1 else ""
            line += f"; {n_rows(len(unpriced))} {whys[0]}{more}: {names(unpriced)}"
        if done:
            line += f"; {n_rows(len(done))} already made, picked up or copied (not paid again)"
        return line


def output_path(output_root: str, row: ManifestRow) -> str:
    """Where a row's video goes (its ``output`` name is already checked to stay inside)."""
    return join(output_root, safe_child(output_root, row.output))


def row_base(output_root: str, row: ManifestRow) -> dict[str, Any]:
    """What every result of ``row`` says: its row number, id and output."""
    return dict(row=row.row_number, id=row.id, output=output_path(output_root, row))


def shard_manifest(parsed: ParsedManifest, index: int, count: int) -> ParsedManifest:
    """Keep the rows (and row errors) of shard ``index`` of ``count``.

    Rows are dealt by position, so shards never overlap and together cover every row.

    Raises:
        ValueError: ``index`` is not in ``0..count-1``.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index} is not in 0..{count - 1}")
    numbers = sorted({r.row_number for r in parsed.rows} | {e.row_number for e in parsed.errors})
    mine = {n for i, n in enumerate(numbers) if i % count == index}
    return parsed.model_copy(
        update={
            "rows": [r for r in parsed.rows if r.row_number in mine],
            "errors": [e for e in parsed.errors if e.row_number in mine],
        }
    )


async def _run_directly(rows: int, work: Callable[[], Awaitable[Any]]) -> Any:
    return await work()


async def plan_batch(
    manifest: str,
    output: str,
    *,
    defaults: Optional[RowDefaults] = None,
    storage_options: Optional[dict] = None,
    frame_limits: Optional[FrameLimits] = None,
    validate_concurrency: int = 8,
    shard_index: int = 0,
    shard_count: int = 1,
    gate: Optional[Gate] = None,
    extra_columns: bool = False,
) -> BatchPlan:
    """Parse ``manifest`` and validate every row and its frames; submit nothing.

    Row problems never raise: each bad row becomes one ``invalid`` result naming the row, the
    column and the reason. Only a manifest that cannot be read or parsed at all raises.

    Args:
        frame_limits: limits for every row; ``None`` (or :class:`FrameLimits()`): each row's
            model's own limits from the models table (:meth:`FrameLimits.for_model`).
        gate: ``await gate(rows, work)`` runs the validation; the batch flow passes one that
            makes it a single Prefect task run. Default: run it directly.
        extra_columns: accept the manifest's own columns (else an unknown column is a
            file-level error).

    Raises:
        ManifestFileError: the manifest cannot be read or has a file-level problem.
        ValueError: the shard is out of range.
    """
    if validate_concurrency < 1:
        raise ValueError("validate_concurrency must be ≥ 1")
    root = normalize_output(output)
    # The defaults are the kf2v models' table limits: other models get their own.
    forced = frame_limits if frame_limits is not None and frame_limits != FrameLimits() else None
    parsed = await load_manifest(
        manifest, defaults=defaults, storage_options=storage_options, extra_columns=extra_columns
    )
    if shard_count > 1 or shard_index:
        parsed = shard_manifest(parsed, shard_index, shard_count)
    plan = BatchPlan(manifest=parsed, output=root)

    def invalid(number: int, row_id: Optional[str], code: str, message: str) -> None:
        plan.invalid.append(
            RowResult(
                row=number,
                id=row_id,
                status=RowStatus.INVALID,
                error_code=code,
                error_message=message,
            )
        )

    for err in parsed.errors:
        invalid(err.row_number, err.id, "InvalidRow", err.message())
    slots = asyncio.Semaphore(validate_concurrency)
    frames = FrameMemo()  # a frame named by several rows is read once

    async def check(row: ManifestRow) -> None:
        where = f"row {row.row_number}, column"
        if resolves_outside(root, output_path(root, row)):
            invalid(
                row.row_number,
                row.id,
                "InvalidRow",
                f"{where} 'output': {row.output!r} leads outside the output folder "
                "through a symlink",
            )
            return
        async with slots:
            try:
                pair = await check_pair(
                    row.first_frame,
                    row.last_frame,
                    limits=forced or FrameLimits.for_model(row.options.model),
                    storage_options=storage_options,
                    audio=row.audio,
                    model=row.options.model,
                    inspect=frames,
                    clip=row.first_clip,
                )
            except Kf2vError as exc:
                role = getattr(exc, "role", None)
                column = _ROLE_COLUMNS.get(role, "first_frame")
                code = {"audio": "InvalidAudio", "clip": "InvalidClip"}.get(role, "InvalidFrame")
                # a clip: one line per limit it breaks
                lines = [f"{exc.frame!r}: {p}" for p in getattr(exc, "problems", ())] or [exc]
                text = "\n".join(f"{where} {column!r}: {line}" for line in lines)
                invalid(row.row_number, row.id, code, text)
                return
        plan.frames[row.id] = pair
        plan.fingerprints[row.id] = request_fingerprint(
            pair, row.prompt, row.negative_prompt, row.options
        )

    async def check_all() -> None:
        await asyncio.gather(*(check(r) for r in parsed.rows))

    await (gate or _run_directly)(len(parsed.rows), check_all)
    plan.invalid.sort(key=lambda r: r.row)
    return plan


def with_extras(plan: BatchPlan, results: list[RowResult]) -> list[RowResult]:
    """``results`` carrying the manifest's own columns of their rows (``extra_columns``)."""
    extras = plan.manifest.extras
    if not extras:
        return results
    empty = dict.fromkeys(plan.manifest.extra_columns, "")
    return [r.model_copy(update={"extra": {**empty, **extras.get(r.row, {})}}) for r in results]
