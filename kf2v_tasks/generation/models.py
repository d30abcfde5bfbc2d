"""What a validated frame is: its source, content hash, size, format and how it travels.

These are generation's records, not the wire protocol: the wire only ever sees the URL or
data URI that :func:`~kf2v_tasks.generation.frames.prepare_frame` makes from them. They
import nothing from the rest of the package, so any layer above can use them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Optional

from pydantic import BaseModel, Field, model_validator

__all__ = ["AudioInfo", "ClipInfo", "FrameInfo", "FramePair", "FrameTransport"]


class FrameTransport(StrEnum):
    """How a validated frame travels to the service."""

    URL = "url"  # public http(s) URL passed through
    DATA_URI = "data_uri"  # small file inlined as base64
    UPLOAD = "upload"  # larger file through the temporary (oss://) upload


class ValidatedFile(BaseModel):
    """A file (frame, audio, clip) that passed validation: where it is and how it travels.

    The bytes are not kept here (results stay small): they are read again at submit time
    and checked against ``sha256`` (:func:`~kf2v_tasks.generation.frame_source.read_validated`).
    """

    source: str = Field(description="The file as the user gave it (path or URL).")
    sha256: str
    size_bytes: int
    transport: FrameTransport


class FrameInfo(ValidatedFile):
    """A frame that passed validation: what it is, and how it will be sent."""

    width: int
    height: int
    format: str = Field(description="Image format as Pillow names it (JPEG, PNG, BMP, WEBP).")
    mode: str = Field(description="Pillow colour mode, e.g. RGB, RGBA, L.")
    has_alpha: bool = False
    warnings: list[str] = Field(default_factory=list)

    @property
    def aspect_ratio(self) -> float:
        """Width over height."""
        return self.width / self.height


class AudioInfo(ValidatedFile):
    """A driving audio that passed validation (mp3 or wav): what it is, how long."""

    format: str = Field(description="mp3 or wav.")
    seconds: float = Field(description="Length of the audio in seconds.")
    warnings: list[str] = Field(default_factory=list)

    @property
    def mime(self) -> str:
        """The MIME type for a ``data:`` URI or an upload."""
        return "audio/mpeg" if self.format == "mp3" else "audio/wav"


class ClipInfo(ValidatedFile):
    """A ``first_clip`` that passed validation (mp4 or mov), to be continued by the model."""

    format: str = Field(description="mp4 or mov.")
    seconds: float = Field(description="Length of the clip in seconds.")
    width: int
    height: int


class FramePair(BaseModel):
    """The first and last frame of one generation, both validated (and its driving audio).

    A generation that continues a clip has ``clip`` instead of ``first``, and ``last``
    only when it is to end on a given frame.

    Example:
        ```python
        from kf2v_tasks.generation.models import FrameInfo, FramePair
        info = FrameInfo(
            source="a.png", sha256="00" * 32, size_bytes=10, width=320, height=240,
            format="PNG", mode="RGB", transport="data_uri",
        )
        pair = FramePair(first=info, last=info, warnings=[])
        assert pair.last.source == "a.png"
        ```
    """

    first: Optional[FrameInfo] = None
    last: Optional[FrameInfo] = None
    audio: Optional[AudioInfo] = Field(
        default=None, description="Driving audio (media-protocol models only), if any."
    )
    clip: Optional[ClipInfo] = Field(
        default=None, description="The first_clip to continue (instead of a first frame)."
    )
    warnings: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_start(self) -> FramePair:
        if (self.first is None) == (self.clip is None):
            raise ValueError("a generation starts from a first frame or a first_clip")
        if self.first is not None and self.last is None:
            raise ValueError("a first frame needs a last frame")
        return self

    @property
    def sources(self) -> list[str]:
        """Every input as the user gave it: clip, frames, audio."""
        items = (self.clip, self.first, self.last, self.audio)
        return [i.source for i in items if i is not None]
