"""The storyboard flow: N keyframes become one film of N-1 transitions.

Each transition is an ordinary batch row (its own ledger record, under the account
quota, claims and ``max_cost``), run by the batch engine; the clips are then stitched
into one MP4 without the duplicated boundary frames
(:func:`~kf2v_tasks.generation.stitch.stitch_clips`). A re-run pays for nothing already
made: kept clips are skipped, live tasks picked up, and an intact film is not stitched
again. A failed transition fails the storyboard with its row named
(:class:`~kf2v_tasks.errors.StoryboardFailedError`); the transitions that succeeded are kept.

From keyframes, the transitions' manifest (``storyboard.csv``), their clips,
``results.csv`` and the ledger live in ``<film>.storyboard/`` beside the film. From a
manifest, a ``sequence`` column groups the rows: the rows of one sequence, in file order,
are its transitions (each row's ``last_frame`` is the next row's ``first_frame``), and
each sequence becomes ``<output>/<sequence>.mp4``.

The flow is here; which rows make which film in :mod:`kf2v_tasks.storyboard.plan`,
stitching in :mod:`kf2v_tasks.storyboard.films`, the results in
:mod:`kf2v_tasks.storyboard.results`.
"""

from __future__ import annotations

from typing import Optional, Union

from prefect.states import Completed, Failed

from kf2v_tasks._twins import twin_flow
from kf2v_tasks.batch.config import ConcurrencySettings, PollingSettings, normalize_output
from kf2v_tasks.batch.manifest import ExtraColumns, RowDefaults, load_manifest
from kf2v_tasks.batch.reporting import PrefectReporter
from kf2v_tasks.batch.results import RowStatus
from kf2v_tasks.batch.runner import BatchRunner
from kf2v_tasks.batch.steps import TaskRuns
from kf2v_tasks.credentials import DashScopeCredentials, resolve_storage_options
from kf2v_tasks.errors import StoryboardFailedError
from kf2v_tasks.generation.pricing import PriceTable
from kf2v_tasks.generation.submit import AmbiguousPolicy
from kf2v_tasks.storyboard.films import make_film
from kf2v_tasks.storyboard.plan import (
    SEQUENCE_COLUMN,
    continuation_step,
    manifest_extra_columns,
    sequences,
    write_transitions,
)
from kf2v_tasks.storyboard.results import StoryboardFilm, StoryboardSummary

__all__ = [
    "SEQUENCE_COLUMN",
    "StoryboardFailedError",  # its home is kf2v_tasks.errors; kept here for old imports
    "StoryboardFilm",
    "StoryboardSummary",
    "generate_storyboard",
]


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
    extra_columns: ExtraColumns = False,
    credentials_block: Union[
        DashScopeCredentials, str, list[Union[DashScopeCredentials, str]], None
    ] = None,
    storage_block: Optional[str] = None,
    storage_options: Optional[dict] = None,
    price_table: Optional[PriceTable] = None,
    ambiguous_policy: AmbiguousPolicy = AmbiguousPolicy.RETRY_ONCE,
    task_runs: TaskRuns = TaskRuns.PER_STEP,
    continue_clips: bool = False,
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
        extra_columns: Accept manifest columns of your own besides ``sequence``: True for
            any, or a list of their names (any other unknown column is refused).
        credentials_block: DashScope credentials: a saved block or its name; empty for
            DASHSCOPE_API_KEY.
        storage_block: A saved block with storage credentials, as type/name.
        storage_options: Non-secret fsspec options.
        price_table: Prices per model and resolution; empty for Model Studio's, in the
            region of the credentials.
        ambiguous_policy: What to do when a create got no clear answer.
        task_runs: per_step or per_row Prefect task runs per transition.
        continue_clips: With frames: continue each clip toward the next keyframe
            (``first_clip`` + ``last_frame``, a model that continues clips) instead of
            stitching separate transitions; transition i lasts i times the row duration and
            the film is the last clip. The transitions run one after the other
            (``max_cost`` holds for all of them; a dry run plans the first only, as the
            others' clips do not exist yet).

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
    step = continuation_step(frames, defaults) if continue_clips else None
    # The sequence column is the storyboard's own; other unknown columns only if asked.
    own_columns = manifest_extra_columns(extra_columns)
    # A continuation's clip exists once the transition before it is made: one at a time.
    ends = range(2, len(frames) + 1) if frames is not None and step else [None]
    spent = 0.0  # by the steps before: max_cost is the whole storyboard's budget
    for end in ends:
        if frames is not None:
            manifest, root, films = await write_transitions(
                frames[:end],
                output,
                prompt,
                prompts[: end - 1] if prompts and end else prompts,
                opts,
                step,
            )
        else:
            root, films = normalize_output(output), None
        parsed = await load_manifest(
            manifest, defaults=defaults, storage_options=opts, extra_columns=own_columns
        )
        found = sequences(parsed, root, films)
        runner = BatchRunner(
            manifest,
            root,
            defaults=defaults,
            concurrency=concurrency,
            polling=polling,
            credentials=credentials_block,
            storage_options=opts,
            price_table=price_table,
            max_cost=None if max_cost is None else max(0.0, max_cost - spent),
            dry_run=dry_run,
            fail_fast=fail_fast,
            ambiguous_policy=ambiguous_policy,
            observer=PrefectReporter(key_prefix="kf2v-storyboard"),
            task_runs=task_runs,
            extra_columns=own_columns,
        )
        batch = await runner.run()
        spent += sum(r.cost or 0.0 for r in batch.results if r.status is RowStatus.SUCCEEDED)
        if dry_run or batch.failed or batch.over_budget:
            break
    by_row = {r.row: r for r in batch.results}
    made = [
        # A continued film is its last clip: each clip holds the ones before it.
        await make_film(name, path, rows[-1:] if step else rows, by_row, dry_run=dry_run, opts=opts)
        for name, (path, rows) in found.items()
    ]
    summary = StoryboardSummary(films=made, batch=batch)
    failed = [f for f in made if f.status == "failed"]
    if failed or batch.failed or batch.over_budget:
        message = "; ".join(f"storyboard {f.sequence!r}: {f.error}" for f in failed)
        # A Failed state holding the error, not a raise: the caller still gets it, typed,
        # and the engine logs no traceback for an outcome stated in one line.
        error = StoryboardFailedError(batch, summary, message or None)
        return Failed(message=str(error), data=error)
    return Completed(message=summary.headline(), data=summary)
