"""The models table, the options and requests it drives, the fingerprint, and driving audio."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import wave

import pytest

from kf2v_tasks.dashscope.catalog import (
    MEDIA_CREATE_PATH,
    MODELS_FILE_ENV,
    FactSource,
    ModelCatalog,
    Protocol,
    UnknownModelError,
    active_catalog,
    get_model,
    load_models_file,
    register_model,
    reset_catalog,
)
from kf2v_tasks.dashscope.models import (
    CREATE_PATH,
    MODEL_RESOLUTIONS,
    GenerationOptions,
    Kf2vModel,
    Kf2vRequest,
)
from kf2v_tasks.errors import FrameValidationError
from kf2v_tasks.generation.audio import AudioValidationError, audio_length, inspect_audio
from kf2v_tasks.generation.fingerprint import fingerprint, request_fingerprint
from kf2v_tasks.generation.frames import FrameLimits, check_pair
from kf2v_tasks.generation.models import FrameTransport

from helpers import make_frame


@pytest.fixture(autouse=True)
def _fresh_catalog(monkeypatch):
    monkeypatch.delenv(MODELS_FILE_ENV, raising=False)
    reset_catalog()
    yield
    reset_catalog()


def _wav(seconds: float, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(rate * seconds))
    return buf.getvalue()


# ------------------------------------------------------------------------ the table


def test_the_kf2v_rows_say_what_the_plugin_always_did():
    for model, resolutions in MODEL_RESOLUTIONS.items():
        spec = get_model(model)
        assert spec.protocol is Protocol.KF2V and spec.create_path == CREATE_PATH
        assert {r.value for r in resolutions} == set(spec.resolutions)
        assert spec.durations() == [5] and not spec.audio
        limits = FrameLimits.for_model(model)
        assert limits == FrameLimits()  # 240..8000 px, 10 MiB: unchanged
    assert set(MODEL_RESOLUTIONS) == set(Kf2vModel)


def test_wan27_row_and_its_sources():
    spec = get_model("wan2.7-i2v")
    assert spec.protocol is Protocol.MEDIA and spec.create_path == MEDIA_CREATE_PATH
    assert spec.resolutions == ("720P", "1080P") and spec.duration_text() == "2..15"
    assert spec.audio and spec.audio_formats == ("mp3", "wav")
    # Model Studio's own page (reference §16): 240..8000 px, 1:8..8:1, 20 MB, prompt 5000.
    assert (spec.min_side, spec.max_side, spec.max_aspect) == (240, 8000, 8.0)
    assert spec.max_frame_bytes == 20 * 2**20 and spec.prompt_max_chars == 5000
    assert (spec.concurrency, spec.creates_per_second) == (5, 5.0)
    # The protocol comes from the SDK; the rest, prices by region too, from Model Studio's docs.
    assert spec.source("protocol") is FactSource.SDK
    facts = ("resolutions", "durations", "frame_limits", "audio", "prompt", "prices", "regions")
    for fact in (*facts, "concurrency"):
        assert spec.source(fact) is FactSource.OFFICIAL_DOC, fact
    assert get_model("wan2.2-kf2v-flash").source("prices") is FactSource.OFFICIAL_DOC


def test_dated_variants_match_by_prefix_and_unknown_names_fail():
    assert get_model("wan2.7-i2v-2026-04-25").name == "wan2.7-i2v"
    cat = active_catalog()
    assert cat.find("wan2.7-i2vx") is None and cat.find("wan2.2-kf2v-flash-2025") is None
    with pytest.raises(UnknownModelError, match="'wan9-i2v' is not a known model"):
        get_model("wan9-i2v")


def test_a_new_model_is_one_entry_in_a_models_file(tmp_path, monkeypatch):
    path = tmp_path / "models.toml"
    path.write_text(
        "[[models]]\n"
        'name = "wan2.8-i2v"\nmatch_prefix = true\nprotocol = "media"\n'
        'resolutions = ["720P", "1080P"]\nduration_min = 3\nduration_max = 10\n'
        'audio = true\naudio_formats = ["mp3"]\naudio_min_seconds = 1\naudio_max_seconds = 10\n'
        'prices = {"720P" = 0.9, "1080P" = 1.5}\n'
        "[[models]]\n"
        'name = "wan2.7-i2v"\nmax_side = 4096\n'
    )
    monkeypatch.setenv(MODELS_FILE_ENV, str(path))
    new = get_model("wan2.8-i2v-2027-01-01")
    assert new.name == "wan2.8-i2v" and new.allows_duration(10) and not new.allows_duration(11)
    patched = get_model("wan2.7-i2v")
    assert patched.max_side == 4096 and patched.source("frame_limits") is FactSource.USER
    assert patched.source("protocol") is FactSource.SDK  # untouched facts keep their source
    opts = GenerationOptions(model="wan2.8-i2v", duration=10, resolution="1080P")
    req = Kf2vRequest(first_frame_url="https://h/a.png", last_frame_url="https://h/b.png",
                      options=opts)  # fmt: skip
    assert req.create_path == MEDIA_CREATE_PATH and req.to_payload()["model"] == "wan2.8-i2v"


def test_models_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"models": [{"name": "x", "protocol": "media"}]}))
    with pytest.raises(ValueError, match=r"models file .*m.json: .*resolutions"):
        load_models_file(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid"):
        load_models_file(bad)
    with pytest.raises(ValueError, match="kf2v protocol has no audio input"):
        ModelCatalog().with_entries([{"name": "wan2.2-kf2v-flash", "audio": True,
                                      "audio_formats": ["mp3"]}])  # fmt: skip


def test_register_model_is_the_python_api():
    register_model({"name": "wan2.7-i2v", "duration_max": 20})
    assert GenerationOptions(model="wan2.7-i2v", duration=20).duration == 20
    reset_catalog()
    with pytest.raises(ValueError, match=r"duration 20 s is not available .*2\.\.15"):
        GenerationOptions(model="wan2.7-i2v", duration=20)


# ------------------------------------------------------------------ options and requests


def test_options_validate_against_the_table():
    with pytest.raises(ValueError, match=r"duration 8 s is not available for wan2.2-kf2v-flash"):
        GenerationOptions(duration=8)
    with pytest.raises(ValueError, match="resolution 480P is not available for wan2.7-i2v"):
        GenerationOptions(model="wan2.7-i2v", resolution="480P")
    assert GenerationOptions(model=Kf2vModel.WAN21_PLUS).model == "wan2.1-kf2v-plus"
    assert GenerationOptions(model=" WAN2.7-I2V ").model == "wan2.7-i2v"


def test_kf2v_payload_is_unchanged_and_media_payload_follows_the_sdk():
    kf2v = Kf2vRequest(first_frame_url="https://h/a.png", last_frame_url="oss://b.png",
                       prompt="p", options=GenerationOptions(resolution="480P"))  # fmt: skip
    assert kf2v.create_path == "/services/aigc/image2video/video-synthesis" and kf2v.uses_oss
    assert kf2v.to_payload() == {
        "model": "wan2.2-kf2v-flash",
        "input": {"first_frame_url": "https://h/a.png", "last_frame_url": "oss://b.png",
                  "prompt": "p"},
        "parameters": {"resolution": "480P", "prompt_extend": True, "watermark": False,
                       "duration": 5},
    }  # fmt: skip
    media = Kf2vRequest(
        first_frame_url="data:image/png;base64,AA",
        last_frame_url="https://h/b.png",
        audio_url="oss://dir/voice.mp3",
        prompt="p",
        negative_prompt="n",
        options=GenerationOptions(model="wan2.7-i2v", duration=12, seed=4, resolution="1080P"),
    )
    assert media.uses_oss and media.create_path == MEDIA_CREATE_PATH
    assert media.to_payload() == {
        "model": "wan2.7-i2v",
        "input": {
            "prompt": "p",
            "negative_prompt": "n",
            "media": [
                {"type": "first_frame", "url": "data:image/png;base64,AA"},
                {"type": "last_frame", "url": "https://h/b.png"},
                {"type": "driving_audio", "url": "oss://dir/voice.mp3"},
            ],
        },
        "parameters": {"resolution": "1080P", "prompt_extend": True, "watermark": False,
                       "duration": 12, "seed": 4},
    }  # fmt: skip
    with pytest.raises(ValueError, match="wan2.2-kf2v-flash takes no driving audio"):
        Kf2vRequest(first_frame_url="a", last_frame_url="b", audio_url="oss://x.mp3")


# ------------------------------------------------------------------------ fingerprint


def test_kf2v_fingerprints_did_not_change():
    # The document as version 1 has always hashed it, written out by hand.
    doc = {
        "v": 1,
        "model": "wan2.2-kf2v-flash",
        "parameters": {"resolution": "720P", "prompt_extend": True, "watermark": False,
                       "duration": 5},
        "prompt": "a cat",
        "negative_prompt": "",
        "first": "ab" * 32,
        "last": "cd" * 32,
    }  # fmt: skip
    expected = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    assert fingerprint(GenerationOptions(), "a cat", None, "ab" * 32, "cd" * 32) == expected
    assert fingerprint(GenerationOptions(), "a cat", None, "ab" * 32, "cd" * 32, None) == expected


def test_duration_and_audio_make_different_work():
    five = GenerationOptions(model="wan2.7-i2v")
    eight = GenerationOptions(model="wan2.7-i2v", duration=8)
    args = ("p", None, "ab" * 32, "cd" * 32)
    fps = {
        fingerprint(five, *args),
        fingerprint(eight, *args),
        fingerprint(eight, *args, "ee" * 32),
        fingerprint(eight, *args, "ff" * 32),
    }
    assert len(fps) == 4


# ------------------------------------------------------------------------ driving audio


def test_audio_length_reads_wav_and_mp3_headers():
    from kf2v_tasks.simulator.soundtrack import tone

    assert audio_length(_wav(2.5)) == ("wav", 2.5)
    fmt, seconds = audio_length(tone(4.0))
    assert fmt == "mp3" and seconds == pytest.approx(4.0, abs=0.1)
    for junk, reason in ((b"OggS" + b"\0" * 100, "not an mp3 or wav"),
                         (b"RIFF\0\0\0\0WAVE", "no 'fmt ' chunk"),
                         (b"ID3\x04\0\0\0\0\0\0" + b"\0" * 50, "no MPEG Layer III frame")):  # fmt: skip
        with pytest.raises(ValueError, match=reason):
            audio_length(junk)


def test_inspect_audio_checks_model_format_and_length(tmp_path):
    spec = get_model("wan2.7-i2v")
    ok = tmp_path / "ok.wav"
    ok.write_bytes(_wav(3.0))
    info = asyncio.run(inspect_audio(str(ok), spec))
    assert (info.format, info.seconds, info.transport) == ("wav", 3.0, FrameTransport.UPLOAD)
    assert info.sha256 == hashlib.sha256(ok.read_bytes()).hexdigest()
    short = tmp_path / "short.wav"
    short.write_bytes(_wav(1.0))
    cases = {
        str(short): "audio is 1.0 s long; wan2.7-i2v takes 2..30 s",
        str(tmp_path / "none.mp3"): "file not found",
    }
    for source, reason in cases.items():
        with pytest.raises(AudioValidationError, match=reason) as info_:
            asyncio.run(inspect_audio(source, spec))
        assert info_.value.role == "audio" and str(info_.value).startswith("audio '")
    with pytest.raises(AudioValidationError, match="wan2.2-kf2v-flash takes no driving audio"):
        asyncio.run(inspect_audio(str(ok), get_model("wan2.2-kf2v-flash")))
    only_mp3 = spec.model_copy(update={"audio_formats": ("mp3",)})
    with pytest.raises(AudioValidationError, match=r"wav is not accepted by wan2.7-i2v \(mp3\)"):
        asyncio.run(inspect_audio(str(ok), only_mp3))


def test_check_pair_carries_the_audio_and_frame_errors_come_first(tmp_path):
    a = make_frame(tmp_path / "a.png", (480, 400))
    b = make_frame(tmp_path / "b.png", (480, 400), (10, 10, 10))
    voice = tmp_path / "v.wav"
    voice.write_bytes(_wav(2.0))
    pair = asyncio.run(check_pair(str(a), str(b), audio=str(voice), model="wan2.7-i2v"))
    assert pair.audio is not None and pair.audio.seconds == 2.0
    assert request_fingerprint(pair, None, None, GenerationOptions(model="wan2.7-i2v")) != (
        request_fingerprint(pair.model_copy(update={"audio": None}), None, None,
                            GenerationOptions(model="wan2.7-i2v"))
    )  # fmt: skip
    with pytest.raises(FrameValidationError) as info:
        asyncio.run(check_pair(str(tmp_path / "x.png"), str(b), audio="nope.wav",
                               model="wan2.7-i2v"))  # fmt: skip
    assert info.value.role == "first"
