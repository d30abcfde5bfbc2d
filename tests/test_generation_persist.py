"""persist_task_video and find_persisted: what a kept video is, what it cost, and the ledger.

The video "service" is an httpx.MockTransport behind a stand-in client's ``download_http``;
files go to a real local folder and the ledger is a real one beside them.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from kf2v_tasks.dashscope.models import GenerationOptions, TaskStatus
from kf2v_tasks.dashscope.task_state import TaskState
from kf2v_tasks.generation.ledger import Ledger, LedgerRecord, LedgerState
from kf2v_tasks.generation.persist import persist_task_video
from kf2v_tasks.generation.persisted import PersistedVideo, find_persisted
from kf2v_tasks.generation.pricing import PriceTable
from kf2v_tasks.generation.submit import Submission

FP = "d" * 64
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
SIGNED = "https://result.oss.test/v/task-1.mp4?Expires=1&OSSAccessKeyId=AK&Signature=zzz"
OPTIONS = GenerationOptions(resolution="480P", seed=1)


class VideoClient:
    """The part of Kf2vClient persist uses: a download pool and get_task."""

    def __init__(self, body: bytes = VIDEO) -> None:
        self.requests: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return httpx.Response(200, content=body, headers={"Content-Length": str(len(body))})

        self.download_http = httpx.AsyncClient(transport=httpx.MockTransport(handler))

    async def get_task(self, task_id: str) -> TaskState:
        return succeeded(task_id)


def succeeded(task_id: str = "task-1", **usage) -> TaskState:
    return TaskState.from_response(
        {
            "request_id": "q-1",
            "output": {
                "task_id": task_id,
                "task_status": "SUCCEEDED",
                "video_url": SIGNED,
                "orig_prompt": "a cat",
                "actual_prompt": "a cat walking slowly, cinematic light",
            },
            "usage": usage or {"video_duration": 5, "video_count": 1, "SR": 480},
        }
    )


def submission(task_id: str = "task-1", **over) -> Submission:
    fields = dict(
        task_id=task_id,
        fingerprint=FP,
        request_id="req-1",
        submitted_at=datetime.now(UTC),
        model=str(OPTIONS.model),
        resolution=OPTIONS.resolution,
        duration_seconds=OPTIONS.duration,
        prompt="a cat",
        negative_prompt="blur",
        parameters=OPTIONS.parameters(),
    )
    return Submission(**{**fields, **over})


@pytest.fixture
async def ledger(tmp_path: Path) -> Ledger:
    led = Ledger(str(tmp_path / "out"))
    rec = LedgerRecord.new(FP)
    rec.begin_create()
    rec.submitted("task-1", "req-1")
    await led.put(rec)
    return led


@pytest.fixture
def dest(tmp_path: Path) -> str:
    return str(tmp_path / "out" / "clip.mp4")


async def test_a_kept_video_says_what_it_is_and_what_it_cost(ledger, dest):
    client = VideoClient()
    video = await persist_task_video(
        succeeded(), dest, client=client, submission=submission(), ledger=ledger
    )
    assert Path(dest).read_bytes() == VIDEO
    assert video.sha256 == hashlib.sha256(VIDEO).hexdigest() and video.bytes == len(VIDEO)
    assert (video.task_id, video.fingerprint, video.reused_existing) == ("task-1", FP, False)
    assert (video.model, video.resolution, video.duration_seconds) == (
        "wan2.2-kf2v-flash",
        "480P",
        5,
    )
    assert (video.prompt, video.negative_prompt) == ("a cat", "blur")
    assert video.actual_prompt == "a cat walking slowly, cinematic light"
    assert (video.cost, video.currency) == (0.5, "CNY")  # 5 s x 0.10 CNY/s (default table)
    assert f"{video.resolution} {video.model}" == "480P wan2.2-kf2v-flash"  # plain text in logs
    assert video.download_attempts == 1 and len(client.requests) == 1

    side = json.loads(Path(video.sidecar_path).read_text())
    assert video.sidecar_path.endswith("clip.json")
    assert (side["cost"], side["currency"], side["resolution"], side["duration_seconds"]) == (
        0.5,
        "CNY",
        "480P",
        5,
    )
    assert side["sha256"] == video.sha256 and side["actual_prompt"] == video.actual_prompt
    assert side["video_source"] == "https://result.oss.test/v/task-1.mp4"

    rec = await ledger.get(FP)
    assert rec.state is LedgerState.PERSISTED and rec.events[-1]["event"] == "persisted"
    assert (rec.output_path, rec.sha256, rec.bytes) == (dest, video.sha256, video.bytes)
    assert (rec.model, rec.resolution, rec.duration_seconds) == ("wan2.2-kf2v-flash", "480P", 5)
    assert (rec.cost, rec.currency) == (0.5, "CNY")
    for f in Path(dest).parent.rglob("*.json"):  # sidecar and ledger record
        text = f.read_text()
        assert "Signature" not in text and "OSSAccessKeyId" not in text


async def test_the_price_table_passed_is_the_one_used(ledger, dest):
    usd = PriceTable(currency="USD", per_second={"wan2.2-kf2v-flash": {"480P": 0.02}})
    video = await persist_task_video(
        succeeded(), dest, client=VideoClient(), submission=submission(), price_table=usd
    )
    assert (video.cost, video.currency) == (0.1, "USD")
    assert json.loads(Path(video.sidecar_path).read_text())["currency"] == "USD"


async def test_no_price_for_the_video_keeps_it_without_a_cost(ledger, dest, caplog):
    table = PriceTable(currency="CNY", per_second={"wan2.1-kf2v-plus": {"720P": 0.7}})
    video = await persist_task_video(
        succeeded(),
        dest,
        client=VideoClient(),
        submission=submission(),
        ledger=ledger,
        price_table=table,
    )
    assert Path(dest).read_bytes() == VIDEO
    assert (video.cost, video.currency) == (None, None)
    assert "no price for model wan2.2-kf2v-flash at resolution 480P" in caplog.text
    assert (await ledger.get(FP)).state is LedgerState.PERSISTED


async def test_billed_seconds_and_reported_resolution_without_a_submission(dest):
    state = succeeded(video_duration=5, SR=720)
    video = await persist_task_video(state, dest, client=VideoClient())
    assert (video.resolution, video.duration_seconds, video.model) == ("720P", 5, None)
    assert (video.cost, video.currency) == (None, None)  # no model, no price
    assert video.prompt == "a cat"  # the service's orig_prompt


async def test_a_crash_before_the_ledger_said_persisted_reuses_the_file(ledger, dest):
    first = await persist_task_video(
        succeeded(), dest, client=VideoClient(), submission=submission()
    )  # no ledger: as if the process died before marking it
    assert (await ledger.get(FP)).state is LedgerState.SUBMITTED
    client = VideoClient()
    again = await persist_task_video(
        succeeded(), dest, client=client, submission=submission(), ledger=ledger
    )
    assert again.reused_existing and again.download_attempts == 0 and client.requests == []
    assert (again.sha256, again.cost, again.resolution) == (first.sha256, 0.5, "480P")
    assert (await ledger.get(FP)).state is LedgerState.PERSISTED


async def test_a_record_that_follows_another_task_is_left_alone(ledger, dest):
    await persist_task_video(
        succeeded("task-0"),
        dest,
        client=VideoClient(),
        submission=submission("task-0"),
        ledger=ledger,
    )
    rec = await ledger.get(FP)
    assert rec.state is LedgerState.SUBMITTED and rec.task_id == "task-1"


async def test_only_a_succeeded_task_has_a_video(dest):
    failed = TaskState(task_id="task-1", status=TaskStatus.FAILED)
    with pytest.raises(ValueError, match="task task-1 is FAILED; only SUCCEEDED"):
        await persist_task_video(failed, dest)


# -- find_persisted --------------------------------------------------------------------------


async def test_find_persisted_reports_the_same_video_without_any_call(ledger, dest):
    kept = await persist_task_video(
        succeeded(), dest, client=VideoClient(), submission=submission(), ledger=ledger
    )
    found = await find_persisted(ledger, FP, dest)
    assert isinstance(found, PersistedVideo) and found.reused_existing
    same = ("path", "sidecar_path", "sha256", "bytes", "task_id", "fingerprint", "model")
    assert all(getattr(found, k) == getattr(kept, k) for k in same)
    assert (found.resolution, found.duration_seconds, found.cost, found.currency) == (
        "480P",
        5,
        0.5,
        "CNY",
    )
    assert (found.prompt, found.negative_prompt, found.actual_prompt) == (
        "a cat",
        "blur",
        "a cat walking slowly, cinematic light",
    )
    # The record already read by the caller is used as it is.
    assert (await find_persisted(ledger, FP, dest, record=await ledger.get(FP))) == found
    assert await find_persisted(ledger, FP, dest, record=None) is None


async def test_find_persisted_refuses_a_changed_file_another_path_or_no_ledger(ledger, dest):
    await persist_task_video(
        succeeded(), dest, client=VideoClient(), submission=submission(), ledger=ledger
    )
    assert await find_persisted(None, FP, dest) is None
    assert await find_persisted(ledger, FP, dest + ".other.mp4") is None
    Path(dest).write_bytes(b"edited by hand")
    assert await find_persisted(ledger, FP, dest) is None


async def test_find_persisted_fills_an_old_record_from_its_sidecar(ledger, dest, tmp_path):
    """A record written before the ledger kept cost fields: the sidecar has the rest."""
    await persist_task_video(
        succeeded(), dest, client=VideoClient(), submission=submission(), ledger=ledger
    )
    path = tmp_path / "out" / ".kf2v" / "ledger" / f"{FP}.json"
    doc = json.loads(path.read_text())
    for key in ("model", "resolution", "duration_seconds", "cost", "currency"):
        doc.pop(key)
    path.write_text(json.dumps(doc))
    side = Path(dest).with_suffix(".json")
    old_side = json.loads(side.read_text())
    for key in ("resolution", "duration_seconds", "cost", "currency"):
        old_side.pop(key)  # an old sidecar: parameters and usage only
    side.write_text(json.dumps(old_side))

    found = await find_persisted(ledger, FP, dest)
    assert (found.model, found.resolution, found.duration_seconds) == (
        "wan2.2-kf2v-flash",
        "480P",
        5,
    )
    assert (found.cost, found.currency) == (0.5, "CNY")  # priced with the default table
    usd = PriceTable(currency="USD", per_second={"wan2.2-kf2v-flash": {"480P": 0.02}})
    assert (await find_persisted(ledger, FP, dest, price_table=usd)).currency == "USD"


async def test_find_persisted_ignores_the_sidecar_of_another_video(ledger, dest):
    await persist_task_video(
        succeeded(), dest, client=VideoClient(), submission=submission(), ledger=ledger
    )
    side = Path(dest).with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "sha256": "0" * 64}))
    found = await find_persisted(ledger, FP, dest)
    assert found.prompt is None and found.actual_prompt is None  # not this video's
    assert (found.cost, found.resolution) == (0.5, "480P")  # the ledger's own facts


# -- sound (media models) ----------------------------------------------------------------------

WAN27 = GenerationOptions(model="wan2.7-i2v", resolution="720P", duration=8)


def media_submission(**over) -> Submission:
    return submission(
        model=WAN27.model,
        resolution=WAN27.resolution,
        duration_seconds=WAN27.duration,
        parameters=WAN27.parameters(),
        **over,
    )


async def test_a_video_with_a_driving_audio_says_so_and_a_rerun_still_does(ledger, dest):
    voice = "https://media.example/voice.wav?X-Amz-Signature=secret"
    kept = await persist_task_video(
        succeeded(video_duration=8, video_count=1),
        dest,
        client=VideoClient(),
        submission=media_submission(audio_source=voice, audio_sha256="a" * 64),
        ledger=ledger,
    )
    # The query string of a signed URL is never written down.
    assert (kept.audio, kept.audio_source) == ("driving", "https://media.example/voice.wav")
    assert kept.duration_seconds == 8 and kept.model == "wan2.7-i2v"
    side = json.loads(Path(kept.sidecar_path).read_text())
    assert (side["audio"], side["audio_source"]) == (kept.audio, kept.audio_source)

    found = await find_persisted(ledger, FP, dest)
    assert (found.audio, found.audio_source) == ("driving", "https://media.example/voice.wav")
    assert found.model_dump(exclude={"download_attempts", "reused_existing"}) == kept.model_dump(
        exclude={"download_attempts", "reused_existing"}
    )


async def test_a_media_model_without_audio_makes_its_own_sound_and_kf2v_none(ledger, dest):
    made = await persist_task_video(
        succeeded(video_duration=8, video_count=1),
        dest,
        client=VideoClient(),
        submission=media_submission(),
        ledger=ledger,
    )
    assert (made.audio, made.audio_source) == ("generated", None)
    silent = await persist_task_video(
        succeeded(), dest + ".kf2v.mp4", client=VideoClient(), submission=submission()
    )
    assert (silent.audio, silent.audio_source) == (None, None)


async def test_a_crash_after_the_file_keeps_the_sound_of_the_reused_video(ledger, dest):
    sub = media_submission(audio_source="voice.wav", audio_sha256="b" * 64)
    await persist_task_video(
        succeeded(video_duration=8), dest, client=VideoClient(), submission=sub
    )
    # The ledger never heard of it (a crash): the second call reuses the committed file.
    again = await persist_task_video(
        succeeded(video_duration=8), dest, client=VideoClient(), submission=sub, ledger=ledger
    )
    assert again.reused_existing and (again.audio, again.audio_source) == ("driving", "voice.wav")


async def test_an_old_sidecar_without_sound_fields_is_still_read(ledger, dest):
    await persist_task_video(
        succeeded(video_duration=8), dest, client=VideoClient(), submission=media_submission(),
        ledger=ledger,
    )  # fmt: skip
    side = Path(dest).with_suffix(".json")
    old = json.loads(side.read_text())
    for key in ("audio", "audio_source", "audio_sha256"):
        old.pop(key)
    side.write_text(json.dumps(old))
    found = await find_persisted(ledger, FP, dest)
    assert found is not None and (found.audio, found.audio_source) == (None, None)
    assert found.model == "wan2.7-i2v" and found.duration_seconds == 8


async def test_keeping_a_video_on_s3_sends_no_head_and_no_listing(s3_server):
    """Every request of a fresh persist on S3, counted by a proxy in front of moto.

    The claim check, the video, its previews (size known: no HeadObject), the sidecar and
    the ledger's "persisted" (a conditional PUT of the record this ledger wrote last: no
    read) cost one request each. A task this process has just created has no sidecar
    yet: nothing is read to find one.
    """
    import io

    from PIL import Image

    from kf2v_tasks.simulator.render import render_video
    from kf2v_testing.s3_faults import S3FaultProxy

    def png(colour) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (320, 240), colour).save(buf, "PNG")
        return buf.getvalue()

    mp4 = render_video(png((220, 30, 30)), png((30, 30, 220)), "480P", fps=24)
    proxy = S3FaultProxy(s3_server, seed=4)
    try:
        bucket = s3_server.new_bucket()
        opts = proxy.storage_options
        led = Ledger(f"s3://{bucket}/out", storage_options=opts)
        rec = LedgerRecord.new(FP)
        rec.begin_create()
        rec.submitted("task-1", "req-1")
        await led.put(rec)
        before = dict(proxy.counts)
        video = await persist_task_video(
            succeeded(),
            f"s3://{bucket}/out/clip.mp4",
            client=VideoClient(mp4),
            submission=submission(),
            ledger=led,
            storage_options=opts,
        )
        ops = {
            k.removeprefix("forwarded."): v - before.get(k, 0)
            for k, v in proxy.counts.items()
            if k.startswith("forwarded.") and v != before.get(k, 0)
        }
    finally:
        proxy.stop()
    assert video.previews is not None
    # GET: the claim (absent), the video's one range for the previews.
    # PUT: the video, poster, strip, sidecar and the ledger record.
    assert ops == {"GetObject": 2, "PutObject": 5}
    stored = await Ledger(f"s3://{bucket}/out", storage_options=s3_server.storage_options).get(FP)
    assert stored.state is LedgerState.PERSISTED and stored.previews == video.previews


async def test_a_success_put_off_is_written_with_persisted_or_alone_if_not_kept(ledger, dest):
    """One ledger write for "ended" and "persisted"; a video not kept still says it ended."""
    from kf2v_tasks.errors import TaskExpiredError
    from kf2v_tasks.generation.outcome import record_outcome

    writes: list[str] = []
    real_put = ledger._put_sync

    def counting(path, data):
        writes.append(json.loads(data)["state"])
        return real_put(path, data)

    ledger._put_sync = counting
    await record_outcome(ledger, FP, succeeded(), persist_follows=True)
    await persist_task_video(succeeded(), dest, client=VideoClient(), submission=submission(),
                             ledger=ledger)  # fmt: skip
    assert writes == ["persisted"]
    rec = await ledger.get(FP)
    assert [e["event"] for e in rec.events][-2:] == ["ended", "persisted"]

    class NoVideo(VideoClient):
        def __init__(self) -> None:
            super().__init__()
            self.download_http = httpx.AsyncClient(
                transport=httpx.MockTransport(lambda request: httpx.Response(403))
            )

        async def get_task(self, task_id: str) -> TaskState:
            raise TaskExpiredError(task_id, f"task {task_id} expired")

    other = LedgerRecord.new("e" * 64)
    other.begin_create()
    other.submitted("task-2", "req-2")
    await ledger.put(other)
    writes.clear()
    await record_outcome(ledger, "e" * 64, succeeded("task-2"), persist_follows=True)
    with pytest.raises(TaskExpiredError):
        await persist_task_video(
            succeeded("task-2"), dest + ".2.mp4", client=NoVideo(),
            submission=submission("task-2", fingerprint="e" * 64), ledger=ledger,
        )  # fmt: skip
    assert writes == ["terminal"]
    rec = await ledger.get("e" * 64)
    assert rec.terminal_status is TaskStatus.SUCCEEDED and rec.is_reusable()


async def test_previews_made_for_a_record_read_at_planning_are_noted_without_a_read(s3_server):
    """On S3 the note is a conditional PUT of the record the plan read: no second read."""
    import io

    from PIL import Image

    from kf2v_tasks.simulator.render import render_video

    def png(colour) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (320, 240), colour).save(buf, "PNG")
        return buf.getvalue()

    mp4 = render_video(png((220, 30, 30)), png((30, 30, 220)), "480P", fps=24)
    bucket = s3_server.new_bucket()
    opts = s3_server.storage_options
    dest = f"s3://{bucket}/out/old.mp4"
    s3_server.filesystem().pipe_file(f"{bucket}/out/old.mp4", mp4)
    led = Ledger(f"s3://{bucket}/out", storage_options=opts)
    rec = LedgerRecord.new(FP)
    rec.begin_create()
    rec.submitted("task-1", "req-1")
    rec.persisted(dest, hashlib.sha256(mp4).hexdigest(), len(mp4))  # kept before previews
    await Ledger(f"s3://{bucket}/out", storage_options=opts).put(rec)
    planned = await led.get(FP)
    reads: list[str] = []
    real_get = led._get_sync
    led._get_sync = lambda path: reads.append(path) or real_get(path)
    kept = await find_persisted(led, FP, dest, storage_options=opts, record=planned)
    assert kept is not None and kept.previews is not None and reads == []
    stored = await Ledger(f"s3://{bucket}/out", storage_options=opts).get(FP)
    assert stored.previews == kept.previews and stored.events[-1]["event"] == "previews"


async def test_a_kept_video_of_a_task_past_its_lifetime_is_found_by_its_sidecar(ledger, dest):
    """Only a live task's sidecar is taken as absent: an expired one could not be fetched."""
    from datetime import timedelta

    from kf2v_tasks.generation import sidecar

    first = await persist_task_video(
        succeeded(), dest, client=VideoClient(), submission=submission(), ledger=ledger
    )
    sidecar._written.clear()  # another process: nothing of this in memory
    old = submission(submitted_at=datetime.now(UTC) - timedelta(hours=30))
    client = VideoClient()
    again = await persist_task_video(
        succeeded(), dest, client=client, submission=old, ledger=ledger
    )
    assert again.reused_existing and again.sha256 == first.sha256 and client.requests == []


async def test_a_video_made_at_an_unknown_price_stays_unknown_when_found_again(ledger, dest):
    """Money as it was: not priced afterwards at whatever region the next run is in."""
    nothing = PriceTable(per_second={})  # no price for the model where it was made
    await persist_task_video(
        succeeded(), dest, client=VideoClient(), submission=submission(), ledger=ledger,
        price_table=nothing,
    )  # fmt: skip
    found = await find_persisted(ledger, FP, dest, price_table=PriceTable.default("beijing"))
    assert (found.cost, found.currency) == (None, None)
