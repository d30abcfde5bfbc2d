"""Manifest rows that continue a clip (first_clip, first_clip + last_frame) on the simulator.

On a real (ephemeral) Prefect server against the simulator over real HTTP: the videos
last the requested duration, a re-run pays nothing, and every bad clip is refused before
any create, one line per broken limit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import pytest

from kf2v_flows.batch import generate_batch
from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.batch.plan import plan_batch
from kf2v_tasks.errors import BatchFailedError
from kf2v_tasks.simulator import RuntimeDistribution
from kf2v_tasks.simulator.render import render_video
from kf2v_tasks.simulator.soundtrack import tone

from helpers import fast_service, make_frame, manifest_text, pointed_at

pytestmark = pytest.mark.usefixtures("prefect_server")
FAST = ConcurrencySettings(max_in_flight=4, submits_per_second=20, queries_per_second=200)
COLUMNS = ["id", "first_frame", "first_clip", "last_frame", "model", "duration", "audio"]


@pytest.fixture(scope="module")
def sim():
    with fast_service(RuntimeDistribution(kind="fixed", low=30), seed=22) as s:
        yield s


@pytest.fixture(autouse=True)
def _env(sim, monkeypatch):
    with pointed_at(sim, monkeypatch):
        yield


def _clip(path: Path, seconds: int, tiny: bool = False) -> None:
    a, b = path.with_suffix(".a.png"), path.with_suffix(".b.png")
    make_frame(a, (480, 400), (90, 40, 200))
    make_frame(b, (480, 400), (200, 200, 40))
    data = render_video(a.read_bytes(), b.read_bytes(), "480P", tiny=tiny, fps=2, seconds=seconds)
    path.write_bytes(data)


def _write(folder: Path, rows: list[dict]) -> Path:
    path = folder / "m.csv"
    path.write_text(manifest_text(rows, COLUMNS))
    return path


def _seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        return container.duration / 1e6


async def test_rows_continuing_a_clip_last_their_duration_and_a_rerun_pays_nothing(sim, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _clip(src / "shot.mp4", 3)
    make_frame(src / "end.png", (480, 400), (20, 160, 90))
    w27 = {"model": "wan2.7-i2v", "first_clip": "shot.mp4"}
    rows = [
        {"id": "to-end", **w27, "last_frame": "end.png", "duration": "8"},
        {"id": "free", **w27, "duration": "6"},
    ]
    manifest = _write(src, rows)
    before = sim.stats()["creates"]
    summary = await generate_batch(str(manifest), str(out), concurrency=FAST)
    assert summary.counts == {"succeeded": 2}, [r.error_message for r in summary.results]
    assert sim.stats()["creates"] - before == 2
    assert _seconds(out / "to-end.mp4") == pytest.approx(8.0, abs=0.1)
    assert _seconds(out / "free.mp4") == pytest.approx(6.0, abs=0.1)
    side = json.loads((out / "to-end.json").read_text())
    clip_sha = hashlib.sha256((src / "shot.mp4").read_bytes()).hexdigest()
    assert (side["clip_source"], side["clip_sha256"]) == (str(src / "shot.mp4"), clip_sha)
    assert side["duration_seconds"] == 8
    # Billed for the whole output (8 s at wan2.7-i2v's 1080P price), the clip's 3 s included.
    costs = {r.id: r.cost for r in summary.results}
    assert costs["to-end"] == pytest.approx(8 * costs["free"] / 6)

    again = await generate_batch(str(manifest), str(out), concurrency=FAST)
    assert again.counts == {"skipped": 2}
    assert sim.stats()["creates"] - before == 2


W27 = {"model": "wan2.7-i2v", "last_frame": "end.png"}
BAD_ROWS = {
    "too long and too small": (
        {**W27, "first_clip": "long_tiny.mp4"},
        [
            "column 'first_clip': '{src}/long_tiny.mp4': is 12.0 s long; a first_clip must be "
            "2..10 s",
            "column 'first_clip': '{src}/long_tiny.mp4': is 80×64 px; each side must be "
            "240..4096 px",
        ],
    ),
    "too short": ({**W27, "first_clip": "short.mp4"}, ["is 1.0 s long"]),
    "not a video": ({**W27, "first_clip": "end.png"}, ["a first_clip is an mp4 or mov video"]),
    "missing": ({**W27, "first_clip": "nope.mp4"}, ["column 'first_clip'", "file not found"]),
    "on kf2v": (
        {"first_clip": "shot.mp4", "last_frame": "end.png"},
        ["column 'first_clip': wan2.2-kf2v-flash cannot continue a clip (models that can: "],
    ),
    "with a first frame": (
        {**W27, "first_clip": "shot.mp4", "first_frame": "end.png"},
        ["column 'first_clip': a row continues a first_clip or starts from a first_frame"],
    ),
    "with audio": (
        {**W27, "first_clip": "shot.mp4", "audio": "voice.wav"},
        ["column 'audio': a row that continues a first_clip takes no driving audio"],
    ),
}


async def test_every_bad_clip_is_refused_before_any_create_one_line_per_limit(sim, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _clip(src / "shot.mp4", 3)
    _clip(src / "short.mp4", 1)
    _clip(src / "long_tiny.mp4", 12, tiny=True)
    make_frame(src / "end.png", (480, 400), (20, 160, 90))
    (src / "voice.wav").write_bytes(tone(3.0, wav=True))
    rows = [{"id": f"r{i}", **row} for i, (row, _) in enumerate(BAD_ROWS.values())]
    manifest = _write(src, rows + [{"id": "good", **W27, "first_clip": "shot.mp4"}])
    plan = await plan_batch(str(manifest), str(tmp_path / "out"))
    assert [r.id for r in plan.runnable] == ["good"]  # nothing else of the batch is lost
    # Said with the estimate: the whole output is billed, the clip's own seconds included.
    good = len(BAD_ROWS) + 2
    assert (
        f"row {good}: first_clip: the video is the clip continued to 5 s in total; all 5 s "
        "are billed, the clip's own seconds included"
    ) in plan.manifest.warnings
    messages = {r.id: r.error_message for r in plan.invalid}
    for i, (case, (_, expected)) in enumerate(BAD_ROWS.items()):
        lines = messages[f"r{i}"].splitlines()
        assert all(line.startswith(f"row {i + 2}, column") for line in lines), (case, lines)
        for part in expected:
            assert part.format(src=src) in messages[f"r{i}"], (case, lines)
    assert len(messages["r0"].splitlines()) == 2  # both limits the clip breaks, one line each
    before = sim.stats()["creates"]
    with pytest.raises(BatchFailedError) as info:
        await generate_batch(str(manifest), str(tmp_path / "out"), concurrency=FAST)
    assert info.value.summary.counts == {"invalid": len(BAD_ROWS), "succeeded": 1}
    assert sim.stats()["creates"] - before == 1


async def test_the_single_video_flow_continues_a_clip_and_a_rerun_pays_nothing(sim, tmp_path):
    from kf2v_flows.single import generate_video
    from kf2v_tasks.dashscope.models import GenerationOptions

    src = tmp_path / "in"
    src.mkdir()
    _clip(src / "shot.mp4", 4)
    make_frame(src / "end.png", (480, 400), (20, 160, 90))
    options = GenerationOptions(model="wan2.7-i2v", duration=7)
    before = sim.stats()["creates"]
    for _ in range(2):
        video = await generate_video(
            None,
            str(src / "end.png"),
            str(tmp_path / "out" / "more.mp4"),
            "and then",
            options=options,
            first_clip=str(src / "shot.mp4"),
        )
        assert video.duration_seconds == 7 and _seconds(Path(video.path)) == pytest.approx(
            7.0, abs=0.1
        )
    assert sim.stats()["creates"] - before == 1
