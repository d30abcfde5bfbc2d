"""Driving audio: read an mp3 or wav, check it against the model, decide how it travels.

Only media-protocol models take a driving audio (``wan2.7-i2v``: mp3 or wav, 2–30 s, per
third-party docs: UNCERTAIN, so the bounds come from the models table and can be
overridden). The format is recognised from the bytes, not the name, and the length is
read from the file's own headers (WAV's ``fmt``/``data`` chunks; every MPEG audio frame of
an MP3), with no codec library, so validation runs before anything is paid.

A public ``http(s)`` URL is passed through (after the check); a file anywhere else is sent
through the temporary ``oss://`` upload: ``data:`` URIs are documented for images only.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from typing import Any, Optional

from kf2v_tasks.dashscope.catalog import ModelSpec
from kf2v_tasks.errors import FrameValidationError
from kf2v_tasks.generation.frame_source import (
    display_source,
    is_http,
    read_frame_bytes,
    resend_validated,
)
from kf2v_tasks.generation.models import AudioInfo, FrameTransport

__all__ = ["AudioProblem", "AudioValidationError", "audio_length", "inspect_audio", "prepare_audio"]

ROLE = "audio"


class AudioProblem(ValueError):
    """The bytes are not a usable mp3 or wav (the message says why)."""


class AudioValidationError(FrameValidationError):
    """A driving audio is unusable: ``audio '<source>': <reason>`` (``role`` is "audio")."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(source, reason, role=ROLE)
        self.args = (f"audio {source!r}: {reason}",)


# --------------------------------------------------------------------------- WAV


def _wav_seconds(data: bytes) -> float:
    if len(data) < 12 or data[8:12] != b"WAVE":
        raise AudioProblem("not a WAV file (no RIFF/WAVE header)")
    pos, byte_rate, data_size = 12, None, None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if chunk == b"fmt " and size >= 16 and body + 16 <= len(data):
            _fmt, channels, rate, byte_rate = struct.unpack("<HHII", data[body : body + 12])
            if not channels or not rate or not byte_rate:
                raise AudioProblem("WAV header has zero channels, sample rate or byte rate")
        elif chunk == b"data":
            # Streamed WAVs write 0 or 0xFFFFFFFF: then the data is the rest of the file.
            rest = len(data) - body
            data_size = rest if size in (0, 0xFFFFFFFF) or size > rest else size
            break
        pos = body + size + (size & 1)  # chunks are padded to an even size
    if byte_rate is None:
        raise AudioProblem("WAV file has no 'fmt ' chunk")
    if not data_size:
        raise AudioProblem("WAV file has no audio data")
    return data_size / byte_rate


# --------------------------------------------------------------------------- MP3

_BITRATES = {  # kbit/s by bitrate index, Layer III
    "1": (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    "2": (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {0b11: (44100, 48000, 32000), 0b10: (22050, 24000, 16000), 0b00: (11025, 12000, 8000)}


def _mp3_frame(data: bytes, pos: int) -> Optional[tuple[int, float]]:
    """``(length in bytes, seconds)`` of the Layer III frame at ``pos``, or None."""
    if pos + 4 > len(data) or data[pos] != 0xFF or (data[pos + 1] & 0xE0) != 0xE0:
        return None
    version = (data[pos + 1] >> 3) & 0b11
    layer = (data[pos + 1] >> 1) & 0b11
    bitrate_index = data[pos + 2] >> 4
    rate_index = (data[pos + 2] >> 2) & 0b11
    padding = (data[pos + 2] >> 1) & 1
    if version == 0b01 or layer != 0b01 or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved, not Layer III, free-format or bad values
    rate = _RATES[version][rate_index]
    kbps = _BITRATES["1" if version == 0b11 else "2"][bitrate_index]
    per_frame = 1152 if version == 0b11 else 576
    length = per_frame // 8 * kbps * 1000 // rate + padding
    return length, per_frame / rate


def _mp3_seconds(data: bytes) -> float:
    pos = 0
    if data[:3] == b"ID3" and len(data) >= 10:  # ID3v2 tag: syncsafe size, optional footer
        size = 0
        for b in data[6:10]:
            size = (size << 7) | (b & 0x7F)
        pos = 10 + size + (10 if data[5] & 0x10 else 0)
    # Tolerate a little junk before the first frame, as decoders do.
    start = next((p for p in range(pos, min(len(data), pos + 4096)) if _mp3_frame(data, p)), None)
    if start is None:
        raise AudioProblem("not an MP3 file (no MPEG Layer III frame found)")
    seconds, frames, pos = 0.0, 0, start
    while (frame := _mp3_frame(data, pos)) is not None:
        length, secs = frame
        if pos + length > len(data):
            break  # a cut last frame: decoders drop it
        seconds, frames, pos = seconds + secs, frames + 1, pos + length
    if frames < 2:
        raise AudioProblem("MP3 data is truncated or corrupt (fewer than 2 frames)")
    return seconds


def audio_length(data: bytes) -> tuple[str, float]:
    """``(format, seconds)`` of mp3 or wav bytes.

    Raises:
        AudioProblem: anything else, or a broken file.
    """
    if data[:4] == b"RIFF":
        return "wav", _wav_seconds(data)
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3", _mp3_seconds(data)
    raise AudioProblem("not an mp3 or wav file")


async def inspect_audio(
    source: str,
    spec: ModelSpec,
    *,
    storage_options: Optional[dict] = None,
) -> AudioInfo:
    """Read and validate a driving audio for the model ``spec``; decide how it is sent.

    Raises:
        AudioValidationError: the model takes no audio, or the file is
            missing, too large, not mp3/wav, or too short or long; ``reason`` says which.
    """
    shown = display_source(source)
    if not spec.audio:
        raise AudioValidationError(shown, f"{spec.name} takes no driving audio")
    try:
        data = await read_frame_bytes(
            source, storage_options=storage_options, max_bytes=spec.audio_max_bytes
        )
    except FrameValidationError as exc:
        reason = exc.reason.replace("frames may be", "audio files may be")
        raise AudioValidationError(shown, reason) from None
    if not data:
        raise AudioValidationError(shown, "file is empty")
    if len(data) > spec.audio_max_bytes:
        limit = spec.audio_max_bytes / 2**20
        raise AudioValidationError(
            shown, f"file is larger than {limit:g} MiB, the most audio may be"
        )
    try:
        fmt, seconds = await asyncio.to_thread(audio_length, data)
    except AudioProblem as exc:
        raise AudioValidationError(shown, str(exc)) from None
    if fmt not in spec.audio_formats:
        allowed = ", ".join(spec.audio_formats)
        raise AudioValidationError(shown, f"{fmt} is not accepted by {spec.name} ({allowed})")
    lo, hi = spec.audio_min_seconds, spec.audio_max_seconds
    if not lo - 0.01 <= seconds <= hi + 0.01:
        raise AudioValidationError(
            shown, f"audio is {seconds:.1f} s long; {spec.name} takes {lo:g}..{hi:g} s"
        )
    transport = FrameTransport.URL if is_http(source) else FrameTransport.UPLOAD
    return AudioInfo(
        source=source,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        format=fmt,
        seconds=round(seconds, 3),
        transport=transport,
    )


async def prepare_audio(
    info: AudioInfo,
    *,
    client: Any,
    model: str,
    storage_options: Optional[dict] = None,
) -> str:
    """The ``driving_audio`` URL of a validated audio: its URL, or an ``oss://`` upload.

    Raises:
        AudioValidationError: the file changed since validation.
        FrameValidationError: the file vanished or cannot be read.
    """
    return await resend_validated(
        info, "audio", AudioValidationError, client, model, storage_options
    )
