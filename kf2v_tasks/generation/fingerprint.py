"""The fingerprint of a piece of work: same fingerprint, same (paid) video.

It hashes the frames' bytes (not their URLs, which differ between a data URI and an
upload of the same file), both prompts and every generation parameter (the duration among
them), and the driving audio's and the first_clip's bytes when there are. The ledger keys
its records by it, so it must never change for the same work: the document hashed is
versioned (``"v": 1``) and any change to it needs a new version. Fields added since
(``audio``, ``clip``) enter the document only when set, so the work of earlier rows keeps
its fingerprint. A clip's work has no first frame (``"first": ""``), and no last frame
unless it ends on one.

Example:
    ```python
    from kf2v_tasks.dashscope.models import GenerationOptions
    from kf2v_tasks.generation.fingerprint import fingerprint

    fp = fingerprint(GenerationOptions(), "a cat", None, "ab" * 32, "cd" * 32)
    assert len(fp) == 64
    ```
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # annotations only: no runtime import, so dashscope.models can load first
    from kf2v_tasks.dashscope.models import GenerationOptions
    from kf2v_tasks.generation.models import FramePair

__all__ = ["fingerprint", "request_fingerprint"]

#: Version of the hashed document; bump only with a migration of existing ledgers.
FINGERPRINT_VERSION = 1


def fingerprint(
    options: GenerationOptions,
    prompt: Optional[str],
    negative_prompt: Optional[str],
    first_sha256: str,
    last_sha256: str,
    audio_sha256: Optional[str] = None,
    clip_sha256: Optional[str] = None,
) -> str:
    """Content fingerprint of a piece of work, as 64 hex characters.

    An empty prompt and no prompt are the same work (the service sends neither). The
    duration is in the parameters; ``audio_sha256`` (driving audio) and ``clip_sha256``
    (first_clip) are hashed when given.

    Example:
        ```python
        from kf2v_tasks.dashscope.models import GenerationOptions
        from kf2v_tasks.generation.fingerprint import fingerprint
        a = fingerprint(GenerationOptions(), "", None, "ab" * 32, "cd" * 32)
        assert a == fingerprint(GenerationOptions(), None, "", "ab" * 32, "cd" * 32)
        ```
    """
    doc = {
        "v": FINGERPRINT_VERSION,
        "model": options.model,
        "parameters": options.parameters(),
        "prompt": prompt or "",
        "negative_prompt": negative_prompt or "",
        "first": first_sha256,
        "last": last_sha256,
    }
    if audio_sha256:
        doc["audio"] = audio_sha256
    if clip_sha256:
        doc["clip"] = clip_sha256
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def request_fingerprint(
    frames: FramePair,
    prompt: Optional[str],
    negative_prompt: Optional[str],
    options: GenerationOptions,
) -> str:
    """Fingerprint of a generation from its validated frames (and audio), prompts and options.

    Example:
        ```python
        from kf2v_tasks.dashscope.models import GenerationOptions
        from kf2v_tasks.generation.fingerprint import fingerprint, request_fingerprint
        from kf2v_tasks.generation.models import FrameInfo, FramePair
        info = FrameInfo(
            source="a.png", sha256="ab" * 32, size_bytes=10, width=320, height=240,
            format="PNG", mode="RGB", transport="data_uri",
        )
        fp = request_fingerprint(FramePair(first=info, last=info), "pan", None, GenerationOptions())
        assert fp == fingerprint(GenerationOptions(), "pan", None, "ab" * 32, "ab" * 32)
        ```
    """
    first, last, audio, clip = (
        f.sha256 if f is not None else None
        for f in (frames.first, frames.last, frames.audio, frames.clip)
    )
    return fingerprint(options, prompt, negative_prompt, first or "", last or "", audio, clip)
