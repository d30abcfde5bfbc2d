"""The fingerprint of a piece of work: same fingerprint, same (paid) video.

It hashes the frames' bytes (not their URLs: a data URI and an upload of one file differ),
both prompts, every generation parameter, and the driving audio's and first_clip's bytes
when there are. The ledger keys records by it, so it must never change for the same work:
the hashed document is versioned (``"v": 1``); fields added since (``audio``, ``clip``)
enter it only when set, so earlier rows keep their fingerprint. A clip's work has no first
frame (``"first": ""``), and no last frame unless it ends on one.
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

    An empty prompt and no prompt are the same work (the service sends neither).
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
    """Fingerprint of a generation from its validated frames (and audio), prompts and options."""
    first, last, audio, clip = (
        f.sha256 if f is not None else None
        for f in (frames.first, frames.last, frames.audio, frames.clip)
    )
    return fingerprint(options, prompt, negative_prompt, first or "", last or "", audio, clip)
