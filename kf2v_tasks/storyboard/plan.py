"""Which rows make which film: keyframes written as a manifest, a manifest's sequences read.

From keyframes, the transitions' manifest (``storyboard.csv``) is written into
``<film>.storyboard/`` beside the film (:func:`write_transitions`). From a manifest, its
``sequence`` column groups the rows: the rows of one sequence, in file order, are its
transitions, each row's ``last_frame`` the next row's ``first_frame``
(:func:`sequences`). Both refuse what cannot make a film before anything is spent.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from typing import Optional

from kf2v_tasks.batch.manifest import ExtraColumns, ParsedManifest, RowDefaults
from kf2v_tasks.batch.plan import output_path
from kf2v_tasks.dashscope.catalog import active_catalog, get_model
from kf2v_tasks.dashscope.models import CLIP_MAX_SECONDS, CLIP_MIN_SECONDS
from kf2v_tasks.errors import ManifestFileError
from kf2v_tasks.storage.files import write_text_atomic
from kf2v_tasks.storage.paths import basename, is_url, join, parent, safe_child

__all__ = [
    "SEQUENCE_COLUMN",
    "continuation_step",
    "manifest_extra_columns",
    "sequences",
    "write_transitions",
]

#: The manifest column that groups rows into storyboards.
SEQUENCE_COLUMN = "sequence"


def manifest_extra_columns(extra_columns: ExtraColumns) -> ExtraColumns:
    """The manifest's accepted own columns: ``sequence``, plus the caller's (True: any)."""
    if extra_columns is True:
        return True
    return [SEQUENCE_COLUMN, *(extra_columns or [])]


async def write_transitions(
    frames: list[str],
    output: str,
    prompt: Optional[str],
    prompts: Optional[list[Optional[str]]],
    opts: Optional[dict],
    step: Optional[int] = None,
) -> tuple[str, str, dict[str, str]]:
    """Write one storyboard's transitions as a manifest in ``<film>.storyboard/``.

    With ``step`` (seconds), the transitions continue each other: transition 1 goes from
    keyframe 1 to 2 in ``step`` s, transition i continues clip i-1 (its ``first_clip``) to
    keyframe i+1, ``i * step`` s in total. Only the transitions of ``frames`` are written:
    a clip exists only once the transition before it is made.

    Returns:
        ``(manifest, output root, {sequence: film path})``.

    Raises:
        ValueError: fewer than 2 frames, a prompt count that is not one per transition,
            an output that is not an .mp4 file.
    """
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
    head = ["id", "first_frame", "last_frame", "prompt", "output", SEQUENCE_COLUMN]
    writer.writerow(head + (["first_clip", "duration"] if step else []))
    for i in range(len(frames) - 1):
        text = (prompts[i] if prompts else None) or prompt or ""
        tid = f"transition-{i + 1:02d}"
        first = absolute[i] if not step or i == 0 else ""
        cells = [tid, first, absolute[i + 1], text, f"{tid}.mp4", stem]
        if step:  # the clip before, beside this manifest; the film so far plus one step
            cells += [f"transition-{i:02d}.mp4" if i else "", str((i + 1) * step)]
        writer.writerow(cells)
    manifest = join(root, "storyboard.csv")
    await write_text_atomic(manifest, buf.getvalue(), storage_options=opts)
    return manifest, root, {stem: output}


def continuation_step(frames: Optional[list[str]], defaults: RowDefaults) -> int:
    """Seconds each continued transition adds; refuses a chain the model cannot make.

    Transition i continues a clip of ``(i - 1) * step`` s to ``i * step`` s, so the last
    clip must fit the model's longest video and each clip continued the first_clip limits.

    Raises:
        ValueError: no keyframes, a model that continues no clip, or a chain too long for
            the limits (the message names the limit and the value).
    """
    if frames is None:
        raise ValueError("continue_clips: give keyframes (frames), not a manifest")
    spec = get_model(defaults.model)
    if not spec.clip:
        takers = ", ".join(s.name for s in active_catalog().models if s.clip)
        raise ValueError(
            f"continue_clips: {spec.name} cannot continue a clip (models that can: {takers})"
        )
    step, n = defaults.duration or spec.default_duration, len(frames) - 1
    longest = min(spec.duration_max, int(CLIP_MAX_SECONDS) + step)
    if step < CLIP_MIN_SECONDS or n * step > longest:
        raise ValueError(
            f"continue_clips: {n} transitions of {step} s end in a {n * step} s clip; "
            f"{spec.name} makes at most {spec.duration_max} s and continues clips of "
            f"{CLIP_MIN_SECONDS:g}..{CLIP_MAX_SECONDS:g} s (use fewer keyframes or a shorter "
            "duration)"
        )
    return step


def _absolute(frames: list[str]) -> list[str]:
    return [f if is_url(f) else os.path.abspath(os.path.expanduser(f)) for f in frames]


def sequences(
    parsed: ParsedManifest, root: str, films: Optional[dict[str, str]]
) -> dict[str, tuple[str, list[int]]]:
    """Sequence -> (film path, its rows in file order); refuses what cannot make a film.

    ``parsed`` was read with ``sequence`` among its extra columns; ``films`` maps the
    sequences of keyframes to their film (``None``: a manifest's, ``<root>/<name>.mp4``).

    Raises:
        ManifestFileError: no sequence column, a row without a sequence, a broken chain
            of keyframes, or a film name that is unusable or overwrites a clip.
    """
    source = parsed.source
    column = next((c for c in parsed.extra_columns if c.lower() == SEQUENCE_COLUMN), None)
    if column is None:
        raise ManifestFileError(
            source, f"has no {SEQUENCE_COLUMN!r} column: it says which rows make one film"
        )
    valid = {r.row_number: r for r in parsed.rows}
    outputs = {output_path(root, r): r.row_number for r in parsed.rows}
    found: dict[str, tuple[str, list[int]]] = {}
    for n in sorted(parsed.extras):
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
            if a is None or b is None:
                continue
            if b.first_clip is not None:  # a continuation: of the clip of the row before
                if b.first_clip != output_path(root, a):
                    raise ManifestFileError(
                        source,
                        f"row {after}, column 'first_clip': {b.first_clip!r} is not the clip "
                        f"of row {before}, the transition before it in sequence {name!r}",
                        line=after,
                    )
            elif a.last_frame != b.first_frame:
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
