"""The storyboard flow: N keyframes become one film of N-1 transitions.

Each transition is an ordinary batch row (its own ledger record, under the account
quota, claims and ``max_cost``), run by the batch engine; the clips are then stitched
into one MP4 without the duplicated boundary frames
(:func:`~kf2v_tasks.generation.stitch.stitch_clips`). A re-run pays for nothing already
made: kept clips are skipped, live tasks picked up, and an intact film is not stitched
again. A failed transition fails the storyboard with its row named
(:class:`StoryboardFailedError`); the transitions that succeeded are kept.

From keyframes, the transitions' manifest (``storyboard.csv``), their clips,
``results.csv`` and the ledger live in ``<film>.storyboard/`` beside the film. From a
manifest, a ``sequence`` column groups the rows: the rows of one sequence, in file order,
are its transitions (each row's ``last_frame`` is the next row's ``first_frame``), and
each sequence becomes ``<output>/<sequence>.mp4``.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from typing import Optional, Union

from prefect.logging import get_run_logger
from prefect.states import Completed
from pydantic import BaseModel, Field

from kf2v_tasks._twins import twin_flow
from kf2v_tasks.batch.config import ConcurrencySettings, PollingSettings, normalize_output
from kf2v_tasks.batch.manifest import ParsedManifest, RowDefaults, load_manifest
from kf2v_tasks.batch.plan import output_path
from kf2v_tasks.batch.reporting import PrefectReporter
from kf2v_tasks.batch.results import BatchSummary, RowResult, RowStatus
from kf2v_tasks.batch.runner import BatchRunner
from kf2v_tasks.batch.steps import TaskRuns
from kf2v_tasks.credentials import DashScopeCredentials, resolve_storage_options
from kf2v_tasks.errors import BatchFailedError, ManifestFileError
from kf2v_tasks.generation.pricing import PriceTable
from kf2v_tasks.generation.stitch import StitchResult, stitch_clips
from kf2v_tasks.generation.submit import AmbiguousPolicy
from kf2v_tasks.storage.files import (
    read_json,
    sidecar_path,
    verify_file,
    write_json_atomic,
    write_text_atomic,
)
from kf2v_tasks.storage.paths import basename, is_url, join, parent, safe_child

__all__ = [
    "SEQUENCE_COLUMN",
    "StoryboardFailedError",
    "StoryboardFilm",
    "StoryboardSummary",
    "generate_storyboard",
]

#: The manifest column that groups rows into storyboards.
SEQUENCE_COLUMN = "sequence"
_MADE = (RowStatus.SUCCEEDED, RowStatus.SKIPPED)


class StoryboardFilm(BaseModel):
    """One storyboard's film: its transitions (manifest rows) and how stitching went.

    Example:
        ```python
        from kf2v_flows.storyboard import StoryboardFilm
        film = StoryboardFilm(sequence="day", path="out/day.mp4", rows=[2, 3], status="planned")
        assert film.stitch is None   # set once the clips are stitched
        ```
    """

    sequence: str = Field(description="The sequence name (from keyframes: the film's name).")
    path: str = Field(description="Where the film is (or would be).")
    rows: list[int] = Field(description="Its transitions' manifest rows, in order.")
    status: str = Field(description="made, reused (intact from an earlier run), failed, planned.")
    error: Optional[str] = Field(default=None, description="Why it was not made.")
    stitch: Optional[StitchResult] = None


class StoryboardSummary(BaseModel):
    """What ``generate_storyboard`` did: one film per sequence, and the batch of transitions.

    Example:
        ```python
        summary = generate_storyboard(["a.png", "b.png", "c.png"], "out/film.mp4")
        print(summary.headline(), summary.films[0].stitch.frames)
        ```
    """

    films: list[StoryboardFilm] = Field(default_factory=list)
    batch: BatchSummary

    def headline(self) -> str:
        """One line: films made, and the transitions' own headline.

        Example:
            ```python
            summary.headline()  # '1 of 1 films made; transitions: 3 rows: 3 succeeded'
            ```
        """
        made = sum(1 for f in self.films if f.status in ("made", "reused"))
        return f"{made} of {len(self.films)} films made; transitions: {self.batch.headline()}"


class StoryboardFailedError(BatchFailedError):
    """A transition failed (or was left out by max_cost); the message names each such row.

    ``summary`` is the transitions' BatchSummary (as for the batch flow) and ``storyboard``
    the films. The clips that were made are kept: a re-run pays only for the others.

    Example:
        ```python
        try:
            generate_storyboard(["a.png", "b.png", "c.png"], "out/film.mp4")
        except StoryboardFailedError as exc:
            print(exc)  # storyboard 'film': row 3 (transition-02) failed: ...
        ```
    """

    def __init__(
        self,
        summary: BatchSummary,
        storyboard: Optional[StoryboardSummary] = None,
        message: Optional[str] = None,
    ) -> None:
        super().__init__(summary)
        self.storyboard = storyboard
        if message:
            self.args = (message,)

    def __reduce__(self):  # keep both summaries and the message when Prefect pickles it
        return (type(self), (self.summary, self.storyboard, str(self)))


@twin_flow(
    name="kf2v-generate-storyboard",
    description="Generate the transitions between N keyframes and stitch them into one film.",
    log_prints=False,
)
async def generate_storyboard(
    frames: Optional[list[str]] = None,
    output: Optional[str] = None,
    prompt: Optional[str] = None,
    prompts: Optional[list[Optional[str]]] = None,
    manifest: Optional[str] = None,
    defaults: RowDefaults = RowDefaults(),
    concurrency: ConcurrencySettings = ConcurrencySettings(),
    polling: PollingSettings = PollingSettings(),
    dry_run: bool = False,
    max_cost: Optional[float] = None,
    fail_fast: bool = False,
    extra_columns: bool = False,
    credentials_block: Union[DashScopeCredentials, str, None] = None,
    storage_block: Optional[str] = None,
    storage_options: Optional[dict] = None,
    price_table: Optional[PriceTable] = None,
    ambiguous_policy: AmbiguousPolicy = AmbiguousPolicy.RETRY_ONCE,
    task_runs: TaskRuns = TaskRuns.PER_STEP,
) -> StoryboardSummary:
    """Generate the transitions of a storyboard and stitch each storyboard into one MP4.

    Give either ``frames`` (one storyboard; ``output`` is the film) or ``manifest`` (a CSV
    with a ``sequence`` column; ``output`` is the folder, one ``<sequence>.mp4`` each).
    The transitions run as batch rows, so everything ``generate_batch`` promises holds:
    every row and frame is checked before anything is spent, the account quota and
    ``max_cost`` apply, and a re-run never pays twice.

    Args:
        frames: The keyframes, in order (2 or more): paths or fsspec URLs.
        output: With frames: the film (.mp4). With a manifest: the output folder.
        prompt: With frames: the prompt of every transition without its own.
        prompts: With frames: one prompt per transition (len(frames) - 1); empty entries
            take ``prompt``.
        manifest: A CSV manifest with a ``sequence`` column (instead of frames).
        defaults: Model, resolution, seed, flags (and prompts) for empty cells.
        concurrency: The account quota: tasks in flight, creates and queries per second.
        polling: How long to wait for each clip, and how often to ask.
        dry_run: Check and estimate only; nothing is submitted or stitched.
        max_cost: Budget for this run; transitions over it are not submitted.
        fail_fast: If any row is invalid, submit nothing.
        extra_columns: Accept manifest columns of your own besides ``sequence``.
        credentials_block: DashScope credentials: a saved block or its name; empty for
            DASHSCOPE_API_KEY.
        storage_block: A saved block with storage credentials, as type/name.
        storage_options: Non-secret fsspec options.
        price_table: Prices per model and resolution; empty for the built-in prices.
        ambiguous_policy: What to do when a create got no clear answer.
        task_runs: per_step or per_row Prefect task runs per transition.

    Returns:
        A StoryboardSummary: every film (path, frames, whether it was re-encoded and why)
        and the transitions' BatchSummary.

    Raises:
        StoryboardFailedError: a transition failed, was invalid or over max_cost; the
            message names the row(s) and the clips that were made are kept.
        ManifestFileError: the storyboard cannot be made as given (no sequence column, a
            broken chain of keyframes, a film name that is not usable): nothing is spent.
        ValueError: bad arguments (fewer than 2 frames, wrong number of prompts).

    Example:
        ```python
        import asyncio
        from kf2v_flows.storyboard import generate_storyboard

        summary = asyncio.run(generate_storyboard(
            ["k1.png", "k2.png", "k3.png", "k4.png"], "out/film.mp4", prompt="slow dolly"))
        print(summary.films[0].stitch.frames)
        ```
    """
    opts = await resolve_storage_options(storage_block, storage_options)
    if (frames is None) == (manifest is None):
        raise ValueError("give either frames (one storyboard) or manifest (a sequence column)")
    if not output:
        raise ValueError("output is required: the film (.mp4) or, with a manifest, a folder")
    if frames is not None:
        manifest, root, films = await _write_transitions(frames, output, prompt, prompts, opts)
    else:
        root, films = normalize_output(output), None
    parsed = await load_manifest(
        manifest, defaults=defaults, storage_options=opts, extra_columns=True
    )
    sequences = _sequences(parsed, root, films, extra_columns)
    runner = BatchRunner(
        manifest,
        root,
        defaults=defaults,
        concurrency=concurrency,
        polling=polling,
        credentials=credentials_block,
        storage_options=opts,
        price_table=price_table,
        max_cost=max_cost,
        dry_run=dry_run,
        fail_fast=fail_fast,
        ambiguous_policy=ambiguous_policy,
        observer=PrefectReporter(key_prefix="kf2v-storyboard"),
        task_runs=task_runs,
        extra_columns=True,
    )
    batch = await runner.run()
    by_row = {r.row: r for r in batch.results}
    made = [
        await _film(name, path, rows, by_row, dry_run, opts)
        for name, (path, rows) in sequences.items()
    ]
    summary = StoryboardSummary(films=made, batch=batch)
    failed = [f for f in made if f.status == "failed"]
    if failed or batch.failed or batch.over_budget:
        message = "; ".join(f"storyboard {f.sequence!r}: {f.error}" for f in failed)
        raise StoryboardFailedError(batch, summary, message or None)
    return Completed(message=summary.headline(), data=summary)


async def _write_transitions(frames, output, prompt, prompts, opts):
    """The transitions of one storyboard as a manifest in ``<film>.storyboard/``."""
    if len(frames) < 2:
        raise ValueError(f"frames: a storyboard needs at least 2 keyframes, got {len(frames)}")
    if prompts is not None and len(prompts) != len(frames) - 1:
        raise ValueError(
            f"prompts: expected {len(frames) - 1} (one per transition between "
            f"{len(frames)} keyframes), got {len(prompts)}"
        )
    name = basename(output)
    if not name.lower().endswith(".mp4") or len(name) <= 4:
        raise ValueError(f"output: the film must be an .mp4 file, got {output!r}")
    stem = name[:-4]
    root = join(parent(output), f"{stem}.storyboard")
    # The manifest lives in another folder: relative local paths must not move with it.
    absolute = _absolute(frames)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "first_frame", "last_frame", "prompt", "output", SEQUENCE_COLUMN])
    for i in range(len(frames) - 1):
        text = (prompts[i] if prompts else None) or prompt or ""
        tid = f"transition-{i + 1:02d}"
        writer.writerow([tid, absolute[i], absolute[i + 1], text, f"{tid}.mp4", stem])
    manifest = join(root, "storyboard.csv")
    await write_text_atomic(manifest, buf.getvalue(), storage_options=opts)
    return manifest, root, {stem: output}


def _absolute(frames: list[str]) -> list[str]:
    return [f if is_url(f) else os.path.abspath(os.path.expanduser(f)) for f in frames]


def _sequences(
    parsed: ParsedManifest, root: str, films: Optional[dict[str, str]], extra_columns: bool
) -> dict[str, tuple[str, list[int]]]:
    """Sequence -> (film path, its rows in file order); refuses what cannot make a film."""
    source = parsed.source
    column = next((c for c in parsed.extra_columns if c.lower() == SEQUENCE_COLUMN), None)
    if column is None:
        raise ManifestFileError(
            source, f"has no {SEQUENCE_COLUMN!r} column: it says which rows make one film"
        )
    others = [c for c in parsed.extra_columns if c != column]
    if others and not extra_columns:
        raise ManifestFileError(
            source,
            f"unknown column(s) {', '.join(repr(c) for c in others)}; to carry columns of "
            "your own into results.csv, pass extra_columns=True (kf2v: --extra-columns)",
        )
    numbers = sorted(parsed.extras)
    valid = {r.row_number: r for r in parsed.rows}
    outputs = {output_path(root, r): r.row_number for r in parsed.rows}
    found: dict[str, tuple[str, list[int]]] = {}
    for n in numbers:
        name = parsed.extras[n].get(column, "").strip()
        if not name:
            raise ManifestFileError(
                source,
                f"row {n}, column {SEQUENCE_COLUMN!r}: empty; every row belongs to a "
                "sequence (its film)",
                line=n,
            )
        if name not in found:
            found[name] = (_film_path(root, name, films, source, n, outputs), [])
        found[name][1].append(n)
    for name, (_path, rows) in found.items():
        for before, after in itertools.pairwise(rows):
            a, b = valid.get(before), valid.get(after)
            if a is not None and b is not None and a.last_frame != b.first_frame:
                raise ManifestFileError(
                    source,
                    f"row {after}, column 'first_frame': {b.first_frame!r} is not the "
                    f"last_frame of row {before} ({a.last_frame!r}), the transition before it "
                    f"in sequence {name!r}; a film's transitions share their keyframes",
                    line=after,
                )
    return found


def _film_path(root, name, films, source, row, outputs) -> str:
    if films is not None:
        return films[name]
    try:
        path = join(root, safe_child(root, f"{name}.mp4"))
    except ValueError as exc:
        raise ManifestFileError(
            source,
            f"row {row}, column {SEQUENCE_COLUMN!r}: not a usable film name: {exc}",
            line=row,
        ) from None
    clash = outputs.get(path)
    if clash is not None:
        raise ManifestFileError(
            source,
            f"row {row}, column {SEQUENCE_COLUMN!r}: the film {name}.mp4 would "
            f"overwrite the clip of row {clash}; rename the sequence or that row's output",
            line=row,
        )
    return path


async def _film(name, path, rows, by_row: dict[int, RowResult], dry_run, opts) -> StoryboardFilm:
    """Stitch one sequence whose transitions are all made (or say why it cannot be)."""
    film = StoryboardFilm(sequence=name, path=path, rows=rows, status="planned")
    results = [by_row[n] for n in rows]
    bad = [r for r in results if r.status not in _MADE]
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
