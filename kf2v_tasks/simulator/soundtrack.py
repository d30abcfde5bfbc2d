"""Sound for media-protocol videos: check a driving audio, and make the AAC track.

``wan2.7-i2v`` videos carry an audio track: the driving audio when the request gave one
(trimmed or padded with silence to the video's length), otherwise a generated tone (the
service generates sound; the simulator's stand-in is a soft chord whose pitch follows the
task, so two videos do not sound alike).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from fractions import Fraction
from typing import Any, Optional

import av
import numpy as np

from kf2v_tasks.simulator.wire import ApiError

SAMPLE_RATE = 44100
_FORMATS = {"mp3": "mp3", "wav": "wav"}  # container name -> format the catalog names


def probe_audio(data: bytes, field: str, formats: tuple[str, ...]) -> tuple[str, float]:
    """``(format, seconds)`` of a driving audio; 400 InvalidParameter if it is not usable.

    Example:
        ```python
        from kf2v_tasks.simulator.soundtrack import probe_audio, tone
        fmt, seconds = probe_audio(tone(3.0, wav=True), "driving_audio", ("mp3", "wav"))
        assert fmt == "wav" and round(seconds) == 3
        ```
    """
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            names = set(container.format.name.split(","))
            if not container.streams.audio:
                raise ValueError("no audio stream")
            seconds = _decoded_seconds(container)
    except Exception:
        raise ApiError(
            400, "InvalidParameter", f"The {field} cannot be decoded as audio."
        ) from None
    fmt = next((f for name, f in _FORMATS.items() if name in names), None)
    if fmt is None or fmt not in formats:
        raise ApiError(
            400,
            "InvalidParameter",
            f"The {field} format is not supported (supported: {', '.join(formats)}).",
        )
    return fmt, seconds


def _decoded_seconds(container: Any) -> float:
    samples, rate = 0, None
    for frame in container.decode(audio=0):
        samples += frame.samples
        rate = frame.sample_rate
    if not samples or not rate:
        raise ValueError("no samples")
    return samples / rate


def _pcm_of(data: bytes) -> np.ndarray:
    """Decode to float32 stereo at :data:`SAMPLE_RATE`, shape ``(2, n)``."""
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=SAMPLE_RATE)
    chunks = []
    with av.open(io.BytesIO(data), mode="r") as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray())
    return np.concatenate(chunks, axis=1) if chunks else np.zeros((2, 0), np.float32)


def _tone_pcm(seconds: float, seed: int = 0) -> np.ndarray:
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    base = 220.0 * 2 ** ((seed % 12) / 12)
    wave = sum(np.sin(2 * np.pi * base * k * t) for k in (1.0, 1.25, 1.5)) / 3
    envelope = np.minimum(1.0, np.minimum(t, seconds - t) * 4)  # soft in and out
    mono = (0.3 * wave * envelope).astype(np.float32)
    return np.stack([mono, mono])


def tone(seconds: float, *, wav: bool = False, seed: int = 0) -> bytes:
    """A small audio file of a soft chord: WAV, or MP3 (tests use both as driving audio).

    Example:
        ```python
        from kf2v_tasks.simulator.soundtrack import tone
        assert tone(2.0, wav=True)[:4] == b"RIFF" and tone(2.0)[:3] == b"ID3"
        ```
    """
    pcm = _tone_pcm(seconds, seed)
    buf = io.BytesIO()
    fmt, codec, sample_fmt = ("wav", "pcm_s16le", "s16") if wav else ("mp3", "libmp3lame", "s16p")
    with av.open(buf, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=SAMPLE_RATE)
        stream.layout = "mono"
        samples = (pcm[0] * 32767).astype(np.int16)
        for packet in _encode(stream, samples[None, :], sample_fmt, "mono"):
            container.mux(packet)
    return buf.getvalue()


def _encode(stream: Any, samples: np.ndarray, fmt: str, layout: str) -> Iterator[Any]:
    step = 1152  # the encoder's own FIFO regroups samples into its frame size
    for start in range(0, samples.shape[1], step):
        chunk = np.ascontiguousarray(samples[:, start : start + step])
        frame = av.AudioFrame.from_ndarray(chunk, format=fmt, layout=layout)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        frame.time_base = Fraction(1, SAMPLE_RATE)
        yield from stream.encode(frame)
    yield from stream.encode(None)


def soundtrack(seconds: int, driving: Optional[bytes], seed: int = 0) -> np.ndarray:
    """The track of a ``seconds``-long video: the driving audio fitted to it, or a tone.

    Returns float32 stereo samples at :data:`SAMPLE_RATE`, shape ``(2, seconds * rate)``.

    Example:
        ```python
        from kf2v_tasks.simulator.soundtrack import SAMPLE_RATE, soundtrack
        assert soundtrack(2, None).shape == (2, 2 * SAMPLE_RATE)
        ```
    """
    n = seconds * SAMPLE_RATE
    pcm = _pcm_of(driving) if driving is not None else _tone_pcm(seconds, seed)
    if pcm.shape[1] >= n:
        return np.ascontiguousarray(pcm[:, :n])
    return np.concatenate([pcm, np.zeros((2, n - pcm.shape[1]), np.float32)], axis=1)


def add_aac_stream(container: Any) -> Any:
    """An AAC stereo stream on ``container`` (an MP4 being written)."""
    stream = container.add_stream("aac", rate=SAMPLE_RATE)
    stream.layout = "stereo"
    return stream


def mux_track(container: Any, stream: Any, pcm: np.ndarray) -> None:
    """Encode ``pcm`` (float32 stereo) into ``stream`` and mux it."""
    for packet in _encode(stream, pcm.astype(np.float32), "fltp", "stereo"):
        container.mux(packet)
