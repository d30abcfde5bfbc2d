"""kf2v_tasks.redaction: secrets, signed-URL queries, URL credentials and key shapes."""

from __future__ import annotations

from enum import Enum

import pytest

from kf2v_tasks.redaction import MASK, redact_text, redact_url, scrub

from conftest import TEST_API_KEY

SIGNED = "https://b.oss-cn.aliyuncs.com/out/v.mp4?Expires=1&OSSAccessKeyId=AK&Signature=s%2B"


@pytest.mark.parametrize(
    "url, expected",
    [
        (SIGNED, "https://b.oss-cn.aliyuncs.com/out/v.mp4"),
        ("https://x.test/a.mp4#t=3", "https://x.test/a.mp4"),
        ("https://x.test/a.mp4?sig=1#t=3", "https://x.test/a.mp4"),
        ("oss://dashscope-instant/a/b.png?x=1", "oss://dashscope-instant/a/b.png"),
        ("s3://key:secret@bucket/a.mp4", "s3://bucket/a.mp4"),
        ("https://user@x.test/a", "https://x.test/a"),
        ("https://x.test/a", "https://x.test/a"),
        ("out/row-1.mp4", "out/row-1.mp4"),
        ("", ""),
        (None, None),
    ],
)
def test_redact_url(url: str | None, expected: str | None) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"GET {SIGNED} -> 403", "GET https://b.oss-cn.aliyuncs.com/out/v.mp4 -> 403"),
        ("see 'oss://b/k.png?x=1' now", "see 'oss://b/k.png' now"),
        ("HTTP://X.TEST/a?sig=1", "HTTP://X.TEST/a"),
        (
            "two https://a.test/1?s=1 and https://b.test/2?s=2",
            "two https://a.test/1 and https://b.test/2",
        ),
        ("creds in https://u:p@host.test/x", "creds in https://host.test/x"),
        ("key sk-abcdef123456 leaked", f"key sk-{MASK} leaked"),
        ("Authorization: Bearer abc.def-ghi_123", f"Authorization: Bearer {MASK}"),
        ("authorization: bearer abcdefgh12345678", f"authorization: bearer {MASK}"),
        # Not secrets: short sk- words, words containing "sk-", plain URLs and paths.
        ("task-abcdefghijk and sk-8", "task-abcdefghijk and sk-8"),
        ("https://x.test/a/b.mp4", "https://x.test/a/b.mp4"),
        ("what? yes", "what? yes"),
    ],
)
def test_redact_text_patterns(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redact_text_blanks_given_secrets() -> None:
    text = f"Invalid API-key provided: {TEST_API_KEY}; also hunter2 and hunter22"
    got = redact_text(text, [TEST_API_KEY, "hunter22", "hunter2", "", None])
    assert got == f"Invalid API-key provided: {MASK}; also {MASK} and {MASK}"
    assert TEST_API_KEY not in got


def test_redact_text_masks_unknown_keys_too() -> None:
    got = redact_text(f"echo {TEST_API_KEY} back")
    assert TEST_API_KEY not in got and got == f"echo sk-{MASK} back"


def test_redact_text_is_idempotent() -> None:
    text = f"Bearer {TEST_API_KEY} at {SIGNED} by https://u:p@h.test/x?y=1"
    once = redact_text(text, [TEST_API_KEY])
    assert redact_text(once, [TEST_API_KEY]) == once
    assert "Signature" not in once and "u:p@" not in once and TEST_API_KEY not in once


class Color(str, Enum):
    RED = "sk-looks-like-a-key"


def test_scrub_is_recursive_and_keeps_shapes() -> None:
    doc = {
        "error": f"401 for {TEST_API_KEY}",
        "urls": [SIGNED, ("oss://b/k?x=1", 3)],
        "nested": {"bearer": "Bearer abcdefgh1234", "n": 5, "none": None, "ok": True},
        "enum": Color.RED,
        SIGNED: "keys are left alone",
    }
    got = scrub(doc, [TEST_API_KEY])
    assert got == {
        "error": f"401 for {MASK}",
        "urls": ["https://b.oss-cn.aliyuncs.com/out/v.mp4", ("oss://b/k", 3)],
        "nested": {"bearer": f"Bearer {MASK}", "n": 5, "none": None, "ok": True},
        "enum": Color.RED,
        SIGNED: "keys are left alone",
    }
    assert isinstance(got["urls"][1], tuple) and got["enum"] is Color.RED
    assert doc["error"] == f"401 for {TEST_API_KEY}"  # the input is not modified


@pytest.mark.parametrize("value", [None, 3, 2.5, b"sk-abcdefgh1234", object])
def test_scrub_leaves_other_values(value: object) -> None:
    assert scrub(value) is value
