"""One manifest mixing kf2v and wan2.7-i2v rows, on the simulator, through the batch flow.

On a real (ephemeral) Prefect server against the simulator over real HTTP: each row goes
to its model's protocol, the same pair at 5 s and at 8 s is two pieces of work, a driving
audio reaches the video, sidecars record the length and the sound, a re-run pays nothing,
and every bad new input is refused before any create.
"""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import av
import pytest

from kf2v_flows.batch import generate_batch
from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.batch.plan import plan_batch
from kf2v_tasks.errors import BatchFailedError
from kf2v_tasks.simulator import RuntimeDistribution
from kf2v_tasks.simulator.soundtrack import tone

from helpers import fast_service, make_frame, manifest_text, pointed_at

pytestmark = pytest.mark.usefixtures("prefect_server")
FAST = ConcurrencySettings(max_in_flight=4, submits_per_second=20, queries_per_second=200)
COLUMNS = ["id", "first_frame", "last_frame", "model", "resolution", "duration", "audio", "prompt"]


@pytest.fixture(scope="module")
def sim():
    with fast_service(RuntimeDistribution(kind="fixed", low=30), seed=16) as s:
        yield s


@pytest.fixture(autouse=True)
def _env(sim, monkeypatch):
    with pointed_at(sim, monkeypatch):
        yield


def _inputs(folder: Path) -> None:
    make_frame(folder / "k_a.png", (320, 240))
    make_frame(folder / "k_b.png", (320, 240), (20, 160, 90))
    make_frame(folder / "w_a.png", (480, 400), (90, 40, 200))
    make_frame(folder / "w_b.png", (480, 400), (200, 200, 40))
    (folder / "voice.wav").write_bytes(tone(3.0, wav=True))


def _write(folder: Path, rows: list[dict]) -> Path:
    path = folder / "m.csv"
    path.write_text(manifest_text(rows, COLUMNS))
    return path


MIXED = [
    {"id": "k", "first_frame": "k_a.png", "last_frame": "k_b.png", "resolution": "480P"},
    {"id": "w5", "first_frame": "w_a.png", "last_frame": "w_b.png", "model": "wan2.7-i2v"},
    {
        "id": "w8",
        "first_frame": "w_a.png",
        "last_frame": "w_b.png",
        "model": "wan2.7-i2v",
        "duration": "8",
    },
    {
        "id": "wa",
        "first_frame": "w_a.png",
        "last_frame": "w_b.png",
        "model": "wan2.7-i2v-2026-04-25",
        "duration": "6",
        "audio": "voice.wav",
        "prompt": "she sings",
    },
]


def _streams(path: Path) -> tuple[list[str], float]:
    with av.open(str(path)) as container:
        return sorted(s.type for s in container.streams), container.duration / 1e6


async def test_a_manifest_mixing_kf2v_and_wan27_rows(sim, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _inputs(src)
    manifest = _write(src, MIXED)
    before = sim.stats()["creates"]
    summary = await generate_batch(str(manifest), str(out), concurrency=FAST)
    assert summary.counts == {"succeeded": 4}, [r.error_message for r in summary.results]
    # 5 s and 8 s of the same pair are two pieces of work: four creates, none shared.
    assert sim.stats()["creates"] - before == 4
    models = {t["model"] for t in sim.tasks()[-4:]}
    assert models == {"wan2.2-kf2v-flash", "wan2.7-i2v", "wan2.7-i2v-2026-04-25"}

    side = {i: json.loads((out / f"{i}.json").read_text()) for i in ("k", "w5", "w8", "wa")}
    assert [side[i]["duration_seconds"] for i in ("k", "w5", "w8", "wa")] == [5, 5, 8, 6]
    assert [side[i]["audio"] for i in ("k", "w5", "w8", "wa")] == [
        None,
        "generated",
        "generated",
        "driving",
    ]
    assert side["wa"]["audio_source"] == str(src / "voice.wav")
    assert side["wa"]["audio_sha256"] and side["w5"]["audio_source"] is None
    assert side["wa"]["parameters"]["duration"] == 6
    # No resolution cell: the service's default for wan2.7-i2v, 1080P (assumed 1.00 CNY/s).
    assert side["w8"]["cost"] == pytest.approx(8 * 1.00) and side["w8"]["resolution"] == "1080P"
    # Previews (poster, strip) are made for videos with sound and of any length too.
    assert side["w8"].get("previews") and side["wa"].get("previews")
    assert _streams(out / "k.mp4") == (["video"], pytest.approx(5.0, abs=0.1))
    assert _streams(out / "w8.mp4") == (["audio", "video"], pytest.approx(8.0, abs=0.1))
    assert _streams(out / "wa.mp4") == (["audio", "video"], pytest.approx(6.0, abs=0.1))

    # A re-run finds every video kept: nothing is created again (fingerprints are stable).
    again = await generate_batch(str(manifest), str(out), concurrency=FAST)
    assert again.counts == {"skipped": 4}
    assert sim.stats()["creates"] - before == 4


W27 = {"first_frame": "w_a.png", "last_frame": "w_b.png", "model": "wan2.7-i2v"}
BAD_ROWS = {
    "duration on kf2v": (
        {"first_frame": "k_a.png", "last_frame": "k_b.png", "duration": "8"},
        "column 'duration': duration 8 s is not available for wan2.2-kf2v-flash",
    ),
    "duration out of range": (
        {**W27, "duration": "20"},
        "column 'duration': duration 20 s is not available for wan2.7-i2v (allowed: 2..15 s)",
    ),
    "audio on kf2v": (
        {"first_frame": "k_a.png", "last_frame": "k_b.png", "audio": "voice.wav"},
        "column 'audio': wan2.2-kf2v-flash takes no driving audio",
    ),
    "resolution not offered": (
        {**W27, "resolution": "480P"},
        "column 'resolution': resolution 480P is not available for wan2.7-i2v",
    ),
    "audio not audio": (
        {**W27, "audio": "k_a.png"},
        "column 'audio': audio",
    ),
    "audio too long": (
        {**W27, "audio": "long.wav"},
        "takes 2..30 s",
    ),
    "audio missing": (
        {**W27, "audio": "nope.mp3"},
        "file not found",
    ),
    "frame beyond 8:1 for wan2.7": (
        {"first_frame": "strip.png", "last_frame": "w_b.png", "model": "wan2.7-i2v"},
        "column 'first_frame'",
    ),
}


def _long_wav(path: Path, seconds: int) -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(b"\x80" * 8000 * seconds)
    path.write_bytes(buf.getvalue())


async def test_every_new_bad_input_is_refused_before_any_create(sim, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _inputs(src)
    _long_wav(src / "long.wav", 31)
    make_frame(src / "strip.png", (2000, 240))  # 8.33:1, beyond §16's 1:8..8:1
    rows = [{"id": f"r{i}", **row} for i, (row, _) in enumerate(BAD_ROWS.values())]
    manifest = _write(src, rows)
    plan = await plan_batch(str(manifest), str(tmp_path / "out"))
    assert not plan.runnable
    messages = {r.id: r.error_message for r in plan.invalid}
    for i, (case, (_, expected)) in enumerate(BAD_ROWS.items()):
        assert expected in messages[f"r{i}"], (case, messages[f"r{i}"])
        assert messages[f"r{i}"].startswith(f"row {i + 2}, column"), (case, messages[f"r{i}"])
    before = sim.stats()["creates"]
    with pytest.raises(BatchFailedError) as info:
        await generate_batch(str(manifest), str(tmp_path / "out"), concurrency=FAST)
    assert info.value.summary.counts == {"invalid": len(BAD_ROWS)}
    assert sim.stats()["creates"] == before


async def test_the_single_video_flow_takes_duration_and_a_driving_audio(sim, tmp_path):
    from kf2v_flows.single import generate_video
    from kf2v_tasks.dashscope.models import GenerationOptions
    from kf2v_tasks.generation.audio import AudioValidationError

    src = tmp_path / "in"
    src.mkdir()
    _inputs(src)
    options = GenerationOptions(model="wan2.7-i2v", duration=4, resolution="1080P")
    before = sim.stats()["creates"]
    video = await generate_video(
        str(src / "w_a.png"),
        str(src / "w_b.png"),
        str(tmp_path / "out" / "sings.mp4"),
        "she sings",
        options=options,
        audio=str(src / "voice.wav"),
    )
    assert (video.model, video.duration_seconds, video.cost) == ("wan2.7-i2v", 4, 4.0)
    sidecar = json.loads(Path(video.sidecar_path).read_text())
    assert (sidecar["audio"], sidecar["audio_source"]) == ("driving", str(src / "voice.wav"))
    assert _streams(Path(video.path)) == (["audio", "video"], pytest.approx(4.0, abs=0.1))
    assert sim.stats()["creates"] - before == 1
    # Audio on a kf2v model is refused before any create.
    with pytest.raises(AudioValidationError, match="wan2.2-kf2v-flash takes no driving audio"):
        await generate_video(
            str(src / "k_a.png"),
            str(src / "k_b.png"),
            str(tmp_path / "out" / "k.mp4"),
            audio=str(src / "voice.wav"),
        )
    assert sim.stats()["creates"] - before == 1
