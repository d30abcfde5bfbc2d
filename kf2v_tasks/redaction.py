"""One way to keep secrets out of text: API keys, bearer tokens and signed-URL queries.

Everything this package writes where people or programs can read it (logs, exception
messages, ledger records, sidecars, results, artifacts) goes through these helpers first:
:func:`redact_text` for text, :func:`redact_url` for one URL, :func:`scrub` for documents.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import Enum
from typing import Any, Optional, overload

__all__ = ["MASK", "md_escape", "redact_text", "redact_url", "scrub"]

#: What a removed secret is replaced with.
MASK = "[secure]"

# A URL of a scheme whose query may carry a signature, up to (not including) its query.
_URL_QUERY_RE = re.compile(r"((?:https?|oss)://[^\s?#\"'<>]+)\?[^\s#\"'<>]*", re.IGNORECASE)
# ``scheme://user:password@host``: the credentials part, for any scheme.
_USERINFO_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/@\"'<>]+@")
# DashScope keys look like ``sk-`` + letters/digits; 8+ characters keeps words like "sk-8".
_KEY_RE = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}")
_BEARER_RE = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}")


def redact_text(text: str, secrets: Iterable[Optional[str]] = ()) -> str:
    """``text`` with secrets, signed-URL queries, URL credentials and key shapes removed.

    Every given ``secrets`` value becomes ``[secure]``; the query string and fragment of every
    ``http(s)://`` / ``oss://`` URL are dropped (signatures and expiry live there), and so is
    a URL's ``user:pass@``; ``sk-...`` keys and ``Bearer <token>`` values it was *not* told
    about are masked too.
    """
    # Longest first: a secret that contains another is blanked whole.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_QUERY_RE.sub(r"\1", text)
    text = _USERINFO_RE.sub(r"\1", text)
    text = _KEY_RE.sub(f"sk-{MASK}", text)
    return _BEARER_RE.sub(rf"\1 {MASK}", text)


@overload
def redact_url(url: str) -> str: ...
@overload
def redact_url(url: None) -> None: ...
def redact_url(url: Optional[str]) -> Optional[str]:
    """``url`` without its query string, fragment and ``user:password@`` part.

    Signed OSS URLs authenticate by their query (``Signature``, ``OSSAccessKeyId``,
    ``Expires``), so only scheme, host and path may be stored or shown. ``None`` and
    ``""`` come back unchanged.
    """
    if not url:
        return url
    trimmed = url.split("#", 1)[0].split("?", 1)[0]
    return _USERINFO_RE.sub(r"\1", trimmed)


def scrub(value: Any, secrets: Iterable[Optional[str]] = ()) -> Any:
    """``value`` with :func:`redact_text` applied to every string inside it: dict values (keys
    are field names), lists and tuples, as new containers of the same kind.
    """
    known = tuple(s for s in secrets if s)
    return _scrub(value, known)


def _scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, Enum):  # a str-Enum member is a name from our code, not data
        return value
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub(v, secrets) for v in value)
    return value


def md_escape(text: object) -> str:
    """``text`` on one line, safe inside markdown (and the HTML markdown may carry).

    Signed-URL query strings and key-shaped strings are removed first
    (:func:`redact_text`): artifacts are visible to everyone who
    can see the flow run.
    """
    value = re.sub(r"\s+", " ", redact_text(str(text))).strip()
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_{}\[\]()#+!|~])", r"\\\1", value)
