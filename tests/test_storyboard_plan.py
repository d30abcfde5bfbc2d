"""Which rows make which film, and the storyboard's error, without a Prefect server."""

from __future__ import annotations

import pickle

import pytest

import kf2v_tasks
from kf2v_flows import storyboard
from kf2v_tasks.batch.manifest import parse_manifest
from kf2v_tasks.batch.results import BatchSummary
from kf2v_tasks.errors import BatchFailedError, ManifestFileError, StoryboardFailedError
from kf2v_tasks.storyboard.plan import (
    SEQUENCE_COLUMN,
    manifest_extra_columns,
    sequences,
    write_transitions,
)
from kf2v_tasks.storyboard.results import StoryboardFilm, StoryboardSummary


def parse(text: str, extra_columns=False):
    return parse_manifest(
        text, source="m.csv", base_dir="/in", extra_columns=manifest_extra_columns(extra_columns)
    )


def test_the_sequence_column_is_always_accepted_and_others_only_when_asked():
    assert manifest_extra_columns(False) == [SEQUENCE_COLUMN]
    assert manifest_extra_columns(None) == [SEQUENCE_COLUMN]
    assert manifest_extra_columns(["notes"]) == [SEQUENCE_COLUMN, "notes"]
    assert manifest_extra_columns(True) is True
    text = "Sequence,first_frame,last_frame\nday,a.png,b.png\nday,b.png,c.png\nnight,x.png,y.png\n"
    found = sequences(parse(text), "/out", None)
    assert found == {"day": ("/out/day.mp4", [2, 3]), "night": ("/out/night.mp4", [4])}


def test_a_manifest_that_cannot_make_a_film_is_refused_naming_row_and_column():
    with pytest.raises(ManifestFileError, match="has no 'sequence' column"):
        sequences(parse("first_frame,last_frame\na.png,b.png\n"), "/out", None)
    with pytest.raises(ManifestFileError, match="row 3, column 'sequence': empty") as info:
        sequences(parse("sequence,first_frame,last_frame\nd,a,b\n,b,c\n"), "/out", None)
    assert info.value.line == 3
    broken = "sequence,first_frame,last_frame\nd,a.png,b.png\nd,c.png,d.png\n"
    with pytest.raises(ManifestFileError, match="row 3, column 'first_frame': '/in/c.png' is not"):
        sequences(parse(broken), "/out", None)
    clash = "sequence,first_frame,last_frame,output\nd,a.png,b.png,d.mp4\n"
    with pytest.raises(ManifestFileError, match="the film d.mp4 would overwrite the clip of row 2"):
        sequences(parse(clash), "/out", None)
    with pytest.raises(ManifestFileError, match=r"unknown column 'shot'; .*it names 'sequence'"):
        parse("sequence,first_frame,last_frame,shot\n")


async def test_keyframes_become_a_manifest_beside_the_film(tmp_path):
    frames = [str(tmp_path / f"k{i}.png") for i in range(3)]
    manifest, root, films = await write_transitions(
        frames, str(tmp_path / "film.mp4"), "pan", [None, "zoom"], None
    )
    assert root == str(tmp_path / "film.storyboard") and films == {
        "film": str(tmp_path / "film.mp4")
    }
    with open(manifest) as f:
        parsed = parse_manifest(
            f.read(), source=manifest, base_dir=root, extra_columns=["sequence"]
        )
    assert [(r.id, r.prompt) for r in parsed.rows] == [
        ("transition-01", "pan"),
        ("transition-02", "zoom"),
    ]
    assert sequences(parsed, root, films) == {"film": (str(tmp_path / "film.mp4"), [2, 3])}
    with pytest.raises(ValueError, match="output: the film must be an .mp4 file"):
        await write_transitions(frames, str(tmp_path / "film.mov"), None, None, None)


def test_the_storyboard_error_is_a_batch_error_exported_and_picklable():
    batch = BatchSummary(manifest="m.csv", output="out", counts={"failed": 1, "succeeded": 2})
    films = StoryboardSummary(
        films=[
            StoryboardFilm(sequence="film", path="out/film.mp4", rows=[2, 3, 4], status="failed")
        ],
        batch=batch,
    )
    error = StoryboardFailedError(batch, films, "storyboard 'film': row 4 (transition-03) failed")
    assert isinstance(error, BatchFailedError)
    assert kf2v_tasks.StoryboardFailedError is StoryboardFailedError
    assert "StoryboardFailedError" in kf2v_tasks.__all__
    assert storyboard.StoryboardFailedError is StoryboardFailedError  # the old import path
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is StoryboardFailedError and str(back) == str(error)
    assert back.summary == batch and back.storyboard == films
    # Without a message of its own it reads like the batch error it is.
    plain = pickle.loads(pickle.dumps(StoryboardFailedError(batch)))
    assert str(plain) == str(BatchFailedError(batch)) and plain.storyboard is None
