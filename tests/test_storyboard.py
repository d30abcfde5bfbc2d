"""Storyboards on a real (ephemeral) Prefect server against the simulator over real HTTP.

The simulator renders tiny clips (64 px on the short side, 1 fps, 5 frames) whose first
frame is the first keyframe and whose last frame is the last keyframe; the film must
keep both ends and drop the one duplicated frame at each boundary.
"""

from __future__ import annotations

import csv
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from kf2v_flows.storyboard import StoryboardFailedError, generate_storyboard
from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.errors import ManifestFileError
from kf2v_tasks.simulator import FaultConfig, RuntimeDistribution

from helpers import fast_service, make_frame, manifest_text, pointed_at

pytestmark = pytest.mark.usefixtures("prefect_server")
FAST = ConcurrencySettings(max_in_flight=8, submits_per_second=20, queries_per_second=200)
COLOURS = [(200, 80, 40), (30, 200, 160), (90, 90, 220), (240, 240, 20), (120, 20, 90)]
#: Measured on the simulator's tiny clips after stitching: a film's end against its own
#: keyframe 22-25 dB, against another keyframe under 10 dB.
MIN_PSNR = 20.0


@pytest.fixture(scope="module")
def sim():
    with fast_service(RuntimeDistribution(kind="uniform", low=60, high=120), seed=7) as s:
        yield s


@pytest.fixture(autouse=True)
def _env(sim, monkeypatch):
    with pointed_at(sim, monkeypatch):
        yield


def keyframes(folder: Path, n: int) -> list[str]:
    return [str(make_frame(folder / f"key{i}.png", (320, 240), COLOURS[i])) for i in range(n)]


def creates(sim) -> int:
    return sim.stats()["creates"]


def decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def fitted(path: str, shape, crop: bool) -> np.ndarray:
    """The keyframe at the video's size; ``crop``: center-cropped to its aspect first,
    as the service does with a last frame whose aspect differs from the first's."""
    h, w = shape[:2]
    img = Image.open(path).convert("RGB")
    if crop:
        iw, ih = img.size
        if iw / ih > w / h:
            cw = round(ih * w / h)
            img = img.crop(((iw - cw) // 2, 0, (iw - cw) // 2 + cw, ih))
        else:
            ch = round(iw * h / w)
            img = img.crop((0, (ih - ch) // 2, iw, (ih - ch) // 2 + ch))
    return np.asarray(img.resize((w, h), Image.Resampling.LANCZOS))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


async def test_four_keyframes_make_one_film_and_a_rerun_pays_nothing(sim, tmp_path):
    keys = keyframes(tmp_path / "keys", 4)
    film = tmp_path / "out" / "film.mp4"
    before = creates(sim)
    summary = await generate_storyboard(keys, str(film), prompt="a slow dolly", concurrency=FAST)
    assert creates(sim) - before == 3  # one create per transition
    work = tmp_path / "out" / "film.storyboard"
    clips = [work / f"transition-{i:02d}.mp4" for i in (1, 2, 3)]
    clip_frames = [len(decode(c)) for c in clips]
    frames = decode(film)
    assert len(frames) == sum(clip_frames) - 2  # the 2 shared boundary frames are gone
    (made,) = summary.films
    assert made.status == "made" and made.stitch.frames == len(frames)
    assert made.stitch.clip_frames == clip_frames
    assert made.stitch.reencoded and "not a keyframe" in made.stitch.reencode_reason
    first, last = frames[0], frames[-1]
    assert psnr(first, fitted(keys[0], first.shape, crop=False)) > MIN_PSNR
    assert psnr(last, fitted(keys[3], last.shape, crop=True)) > MIN_PSNR
    assert psnr(last, fitted(keys[0], last.shape, crop=True)) < MIN_PSNR - 5  # it tells apart
    rows = list(csv.DictReader((work / "results.csv").open()))
    assert [r["status"] for r in rows] == ["succeeded"] * 3
    assert {r["sequence"] for r in rows} == {"film"}

    film_bytes = film.read_bytes()
    again = await generate_storyboard(keys, str(film), prompt="a slow dolly", concurrency=FAST)
    assert creates(sim) - before == 3  # the re-run made no create
    assert again.batch.counts == {"skipped": 3}
    assert again.films[0].status == "reused" and film.read_bytes() == film_bytes


async def test_a_failed_transition_names_its_row_and_keeps_the_others(sim, tmp_path):
    keys = keyframes(tmp_path / "keys", 4)
    film = tmp_path / "out" / "film.mp4"
    before = creates(sim)
    # Transitions 1 and 2 made first: the four-keyframe storyboard shares them.
    await generate_storyboard(keys[:3], str(film), prompt="pan", concurrency=FAST)
    assert creates(sim) - before == 2
    work = tmp_path / "out" / "film.storyboard"
    kept = {i: (work / f"transition-{i:02d}.mp4").read_bytes() for i in (1, 2)}
    sim.set_faults(FaultConfig({"task.fail_internal": 1.0}))
    try:
        state = await generate_storyboard(
            keys, str(film), prompt="pan", concurrency=FAST, return_state=True
        )
    finally:
        sim.set_faults(FaultConfig())
    error = await state.aresult(raise_on_failure=False)
    assert state.is_failed() and isinstance(error, StoryboardFailedError)
    assert "storyboard 'film': row 4 (transition-03) failed" in str(error)
    assert "kept 2 of 3 transitions" in str(error)
    assert error.summary.counts == {"skipped": 2, "failed": 1}
    assert error.storyboard.films[0].status == "failed"
    for i, data in kept.items():  # the transitions that succeeded are still there
        assert (work / f"transition-{i:02d}.mp4").read_bytes() == data
    middle = creates(sim)
    summary = await generate_storyboard(keys, str(film), prompt="pan", concurrency=FAST)
    assert creates(sim) - middle == 1  # only the failed transition is paid again
    assert summary.batch.counts == {"skipped": 2, "succeeded": 1}
    assert len(decode(film)) == summary.films[0].stitch.frames == 5 * 3 - 2


async def test_a_manifest_makes_one_film_per_sequence(sim, tmp_path):
    keys = keyframes(tmp_path / "in", 5)
    rows = [  # two sequences, interleaved: each keeps its own file order
        {"sequence": "alpha", "first_frame": keys[0], "last_frame": keys[1], "prompt": "a"},
        {"sequence": "beta", "first_frame": keys[3], "last_frame": keys[4], "prompt": "b"},
        {"sequence": "alpha", "first_frame": keys[1], "last_frame": keys[2], "prompt": "a"},
        {"sequence": "alpha", "first_frame": keys[2], "last_frame": keys[3], "prompt": "a"},
    ]
    manifest = tmp_path / "in" / "storyboards.csv"
    manifest.write_text(manifest_text(rows, ["sequence", "first_frame", "last_frame", "prompt"]))
    out = tmp_path / "out"
    before = creates(sim)
    summary = await generate_storyboard(manifest=str(manifest), output=str(out), concurrency=FAST)
    assert creates(sim) - before == 4
    films = {f.sequence: f for f in summary.films}
    assert films["alpha"].rows == [2, 4, 5] and films["beta"].rows == [3]
    assert len(decode(out / "alpha.mp4")) == 3 * 5 - 2
    assert len(decode(out / "beta.mp4")) == 5


async def test_bad_storyboards_are_refused_and_a_dry_run_spends_nothing(sim, tmp_path):
    keys = keyframes(tmp_path / "in", 4)
    rows = [
        {"sequence": "s", "first_frame": keys[0], "last_frame": keys[1]},
        {"sequence": "s", "first_frame": keys[2], "last_frame": keys[3]},
    ]
    manifest = tmp_path / "in" / "m.csv"
    manifest.write_text(manifest_text(rows, ["sequence", "first_frame", "last_frame"]))
    before = creates(sim)
    with pytest.raises(
        ManifestFileError, match=r"row 3, column 'first_frame': .* last_frame of row 2"
    ):
        await generate_storyboard(manifest=str(manifest), output=str(tmp_path / "out"))
    plain = tmp_path / "in" / "plain.csv"
    plain.write_text(manifest_text(rows[:1], ["first_frame", "last_frame"]))
    with pytest.raises(ManifestFileError, match="no 'sequence' column"):
        await generate_storyboard(manifest=str(plain), output=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="frames: a storyboard needs at least 2 keyframes, got 1"):
        await generate_storyboard(keys[:1], str(tmp_path / "film.mp4"))
    with pytest.raises(ValueError, match="prompts: expected 3 .* got 2"):
        await generate_storyboard(keys, str(tmp_path / "film.mp4"), prompts=["a", "b"])
    rehearsal = await generate_storyboard(keys, str(tmp_path / "film.mp4"), dry_run=True)
    assert rehearsal.batch.counts == {"planned": 3} and rehearsal.films[0].status == "planned"
    assert not (tmp_path / "film.mp4").exists()
    assert creates(sim) == before


async def test_columns_of_ones_own_besides_sequence_only_when_asked(sim, tmp_path):
    keys = keyframes(tmp_path / "in", 3)
    rows = [
        {"sequence": "s", "first_frame": keys[0], "last_frame": keys[1], "notes": "n1"},
        {"sequence": "s", "first_frame": keys[1], "last_frame": keys[2], "notes": "n2"},
    ]
    manifest = tmp_path / "in" / "m.csv"
    manifest.write_text(manifest_text(rows, ["sequence", "first_frame", "last_frame", "notes"]))
    out = str(tmp_path / "out")
    before = creates(sim)
    with pytest.raises(ManifestFileError, match=r"unknown column 'notes'; known: .*") as info:
        await generate_storyboard(manifest=str(manifest), output=out, dry_run=True)
    assert str(info.value).endswith("add them to extra_columns (it names 'sequence')")
    typo = tmp_path / "in" / "typo.csv"
    typo.write_text(manifest_text(rows, ["sequence", "first_frame", "last_frame", "promt"]))
    with pytest.raises(ManifestFileError, match=r"'promt' \(did you mean 'prompt'\?\)"):
        await generate_storyboard(manifest=str(typo), output=out, dry_run=True, extra_columns=[])
    for own in (["notes"], True):
        plan = await generate_storyboard(
            manifest=str(manifest), output=out, dry_run=True, extra_columns=own
        )
        assert plan.batch.counts == {"planned": 2} and plan.films[0].rows == [2, 3]
        table = (tmp_path / "out" / "results.dry-run.csv").read_text()
        assert table.splitlines()[0].endswith(",sequence,notes") and ",n2" in table
    assert creates(sim) == before


async def test_the_example_storyboard_manifest(sim, tmp_path):
    import shutil

    example = Path(__file__).parent.parent / "examples" / "storyboard"
    shutil.copytree(example, tmp_path / "in")
    before = creates(sim)
    summary = await generate_storyboard(
        manifest=str(tmp_path / "in" / "storyboard.csv"),
        output=str(tmp_path / "out"),
        concurrency=FAST,
    )
    assert creates(sim) - before == 5
    assert {f.sequence: f.stitch.frames for f in summary.films} == {"day": 13, "moon": 9}
    assert len(decode(tmp_path / "out" / "day.mp4")) == 13
