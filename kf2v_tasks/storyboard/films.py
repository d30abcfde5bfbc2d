"""Stitching one sequence's clips into its film, or saying why it cannot be made.

A film whose record (``<film>.json``: the clips' hashes and the stitch) matches the
clips it would be made from, and whose file is intact, is not stitched again.
"""

from __future__ import annotations

from typing import Optional

from prefect.logging import get_run_logger

from kf2v_tasks.batch.results import MADE_STATUSES, RowResult
from kf2v_tasks.generation.stitch import StitchResult, stitch_clips
from kf2v_tasks.storage.files import read_json, sidecar_path, verify_file, write_json_atomic
from kf2v_tasks.storyboard.results import StoryboardFilm

__all__ = ["make_film"]


async def make_film(
    name: str,
    path: str,
    rows: list[int],
    by_row: dict[int, RowResult],
    *,
    dry_run: bool,
    opts: Optional[dict],
) -> StoryboardFilm:
    """Stitch one sequence whose transitions are all made (or say why it cannot be).

    Args:
        name: the sequence.
        path: the film.
        rows: its transitions' manifest rows, in order.
        by_row: the batch's result of every row.
        dry_run: plan only: the film stays ``planned``.
        opts: fsspec options of the output.
    """
    film = StoryboardFilm(sequence=name, path=path, rows=rows, status="planned")
    results = [by_row[n] for n in rows]
    bad = [r for r in results if r.status not in MADE_STATUSES]
    if dry_run:
        return film
    if bad:
        made = len(results) - len(bad)
        film.status = "failed"
        film.error = "; ".join(_why(r) for r in bad) + (
            f" (kept {made} of {len(results)} transitions; a re-run pays only for the rest)"
        )
        return film
    clips = [r.output for r in results]
    hashes = [r.sha256 for r in results]
    record_path = sidecar_path(path)
    record = await _read_record(record_path, opts)
    if (
        record
        and record.get("clips") == hashes
        and await verify_file(path, record.get("sha256", ""), storage_options=opts)
    ):
        film.status, film.stitch = "reused", StitchResult.model_validate(record["stitch"])
        get_run_logger().info("Storyboard %r: film %s is intact; not stitched again", name, path)
        return film
    film.stitch = await stitch_clips(clips, path, storage_options=opts)
    film.status = "made"
    how = (
        f"re-encoded ({film.stitch.reencode_reason})"
        if film.stitch.reencoded
        else "remuxed, nothing re-encoded"
    )
    get_run_logger().info(
        "Storyboard %r: %d clips -> %s, %d frames, %s",
        name,
        len(clips),
        path,
        film.stitch.frames,
        how,
    )
    await write_json_atomic(
        record_path,
        {"sha256": film.stitch.sha256, "clips": hashes, "stitch": film.stitch.model_dump()},
        storage_options=opts,
    )
    return film


def _why(r: RowResult) -> str:
    what = r.error_message or r.status.value
    return f"row {r.row} ({r.id}) {r.status.value}: {what}"


async def _read_record(path: str, opts: Optional[dict]) -> Optional[dict]:
    try:
        data = await read_json(path, storage_options=opts)
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None
