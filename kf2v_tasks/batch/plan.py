"""Plan a batch: parse the manifest and validate every row and its frames, submitting nothing.

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
from kf2v_tasks.batch.manifest import ManifestRow, ParsedManifest, RowDefaults, load_manifest
from kf2v_tasks.batch.results import RowResult, RowStatus
from kf2v_tasks.errors import Kf2vError
from kf2v_tasks.generation.frames import FrameLimits, check_pair
from kf2v_tasks.generation.models import FramePair
from kf2v_tasks.generation.submit import request_fingerprint
from kf2v_tasks.storage.paths import join, resolves_outside, safe_child

#: Wraps the validation of ``rows`` rows: ``await gate(rows, work)`` must await ``work()``.
Gate = Callable[[int, Callable[[], Awaitable[Any]]], Awaitable[Any]]


class BatchPlan(BaseModel):
    """A validated manifest: runnable rows with their frames, and the rest with reasons.

    Example:
        ```python
        import asyncio
        from kf2v_tasks.batch.plan import plan_batch

        plan = asyncio.run(plan_batch("examples/manifest.csv", "out/"))
        print(len(plan.runnable), "runnable;", [r.error_message for r in plan.invalid])
        ```
    """

    manifest: ParsedManifest
    frames: dict[str, FramePair] = Field(default_factory=dict)  # by row id
    fingerprints: dict[str, str] = Field(default_factory=dict)  # by row id
    invalid: list[RowResult] = Field(default_factory=list)

    @property
    def runnable(self) -> list[ManifestRow]:
        """Rows that passed every check, in manifest order."""
        return [r for r in self.manifest.rows if r.id in self.frames]


def output_path(output_root: str, row: ManifestRow) -> str:
    """Where a row's video goes (its ``output`` name is already checked to stay inside).

    Example:
        ```python
        from kf2v_tasks.batch.plan import output_path
        path = output_path("s3://bucket/out", row)   # s3://bucket/out/<row.output>
        ```
    """
    return join(output_root, safe_child(output_root, row.output))


def shard_manifest(parsed: ParsedManifest, index: int, count: int) -> ParsedManifest:
    """Keep the rows (and row errors) of shard ``index`` of ``count``.

    Rows are dealt by position, so shards never overlap and together cover every row.

    Raises:
        ValueError: ``index`` is not in ``0..count-1``.

    Example:
        ```python
        from kf2v_tasks.batch.manifest import parse_manifest
        from kf2v_tasks.batch.plan import shard_manifest
        parsed = parse_manifest("first_frame,last_frame\\na,b\\nc,d\\n", source="m", base_dir="")
        assert [r.row_number for r in shard_manifest(parsed, 1, 2).rows] == [3]
        ```
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
) -> BatchPlan:
    """Parse ``manifest`` and validate every row and its frames; submit nothing.

    Row problems never raise: each bad row becomes one ``invalid`` result naming the row,
    the column and the reason. Only a manifest that cannot be read or parsed at all raises.

    Args:
        manifest: CSV manifest, local path or any fsspec URL.
        output: the output root (row outputs must stay inside it).
        defaults: values for the manifest's empty optional cells.
        storage_options: fsspec options for the manifest and the frames.
        frame_limits: size and dimension limits of the frames.
        validate_concurrency: frame pairs read and checked at the same time.
        shard_index: which shard of the manifest to plan (0-based).
        shard_count: how many shards the manifest is split into.
        gate: ``await gate(rows, work)`` runs the validation (``work``); the batch flow
            passes one that makes it a single Prefect task run. Default: run it directly.

    Returns:
        The plan: runnable rows with their frames and request fingerprints, and the
        invalid rows as results, sorted by row.

    Raises:
        ManifestFileError: the manifest cannot be read or has a file-level problem
            (wrong encoding, no header, a required column missing).
        ValueError: the shard is out of range.

    Example:
        ```python
        import asyncio
        from kf2v_tasks.batch.plan import plan_batch

        plan = asyncio.run(plan_batch("examples/manifest.csv", "out/", validate_concurrency=4))
        for bad in plan.invalid:
            print(bad.error_message)   # row 5, column 'seed': '-3' is not an integer ...
        ```
    """
    if validate_concurrency < 1:
        raise ValueError("validate_concurrency must be ≥ 1")
    root = normalize_output(output)
    limits = frame_limits or FrameLimits()
    parsed = await load_manifest(manifest, defaults=defaults, storage_options=storage_options)
    if shard_count > 1 or shard_index:
        parsed = shard_manifest(parsed, shard_index, shard_count)
    plan = BatchPlan(manifest=parsed)

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
                    row.first_frame, row.last_frame, limits=limits, storage_options=storage_options
                )
            except Kf2vError as exc:
                column = "last_frame" if getattr(exc, "role", None) == "last" else "first_frame"
                invalid(row.row_number, row.id, "InvalidFrame", f"{where} {column!r}: {exc}")
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
