"""The work fingerprint: stable across releases (ledgers are keyed by it), and sensitive to
every input that changes the paid video."""

from __future__ import annotations

import pytest

from kf2v_tasks.dashscope.models import GenerationOptions
from kf2v_tasks.generation.fingerprint import fingerprint, request_fingerprint
from kf2v_tasks.generation.models import FrameInfo, FramePair, FrameTransport

A, B = "ab" * 32, "cd" * 32


def frame(sha256: str, source: str = "a.png", transport=FrameTransport.DATA_URI) -> FrameInfo:
    return FrameInfo(
        source=source,
        sha256=sha256,
        size_bytes=10,
        width=320,
        height=240,
        format="PNG",
        mode="RGB",
        transport=transport,
    )


def test_known_values_never_change():
    """Computed by the implementation that wrote existing ledgers (v1, before the move)."""
    opts = GenerationOptions(
        model="wan2.2-kf2v-flash", resolution="1080P", seed=42, prompt_extend=False, watermark=True
    )
    assert fingerprint(opts, "a red fox at dawn", "blurry", A, B) == (
        "2db5e2ce16b329c6b8e3fba46f95b6601477f5e0335ef18294cc2ddc7ab66e5a"
    )
    assert fingerprint(GenerationOptions(), None, None, "00" * 32, "11" * 32) == (
        "84a4b542c04ff61e94d7770eaa4e68eb41e89d87d764af783fd418780f93c105"
    )


def test_no_prompt_and_an_empty_prompt_are_the_same_work():
    opts = GenerationOptions()
    assert fingerprint(opts, None, None, A, B) == fingerprint(opts, "", "", A, B)


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "another prompt"},
        {"negative": "noise"},
        {"first": "ef" * 32},
        {"last": "ef" * 32},
        {"swap": True},
        {"options": GenerationOptions(resolution="480P")},
        {"options": GenerationOptions(seed=1)},
        {"options": GenerationOptions(prompt_extend=False)},
        {"options": GenerationOptions(watermark=True)},
        {"options": GenerationOptions(model="wan2.1-kf2v-plus")},
    ],
)
def test_every_input_changes_the_fingerprint(change):
    base = dict(options=GenerationOptions(), prompt="p", negative="n", first=A, last=B)
    args = {**base, **change}
    if args.pop("swap", False):
        args["first"], args["last"] = args["last"], args["first"]
    assert fingerprint(*base.values()) != fingerprint(*args.values())


def test_request_fingerprint_uses_frame_content_not_where_it_lives():
    opts = GenerationOptions(resolution="480P")
    local = FramePair(first=frame(A, "a.png"), last=frame(B, "b.png"))
    remote = FramePair(
        first=frame(A, "https://h/a.png", FrameTransport.URL),
        last=frame(B, "s3://bucket/b.png", FrameTransport.UPLOAD),
    )
    assert request_fingerprint(local, "p", None, opts) == fingerprint(opts, "p", None, A, B)
    assert request_fingerprint(local, "p", None, opts) == request_fingerprint(
        remote, "p", None, opts
    )
