"""Signed, expiring result URLs; Range resume; filler payloads."""

from __future__ import annotations

import hashlib
import time
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import httpx

from kf2v_tasks.simulator import downloads

from .simkit import create, wait_status


def finished_url(sim) -> str:
    task_id = create(sim).json()["output"]["task_id"]
    return wait_status(sim, task_id, {"SUCCEEDED"})["output"]["video_url"]


def test_download_and_range(sim):
    url = finished_url(sim)
    full = httpx.get(url)
    assert full.status_code == 200
    assert full.headers["content-type"] == "video/mp4"
    assert int(full.headers["content-length"]) == len(full.content) > 100
    assert full.content[4:8] == b"ftyp"
    part = httpx.get(url, headers={"Range": "bytes=100-"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-{len(full.content) - 1}/{len(full.content)}"
    assert part.content == full.content[100:]
    assert httpx.get(url, headers={"Range": "bytes=10-19"}).content == full.content[10:20]
    assert httpx.get(url, headers={"Range": f"bytes={len(full.content)}-"}).status_code == 416
    assert sim.stats()["renders"] == 1  # rendered once, served four times


def test_signature_and_expiry(make_sim, monkeypatch):
    # The downloads check Expires on a clock the test moves: no real second has to pass
    # (Expires has one-second resolution), and a slow machine cannot expire the URL
    # (0.3 real seconds) before its first download.
    now = [time.time()]  # before the simulator starts: before any URL's Expires
    monkeypatch.setattr(downloads, "time", SimpleNamespace(time=lambda: now[0]))
    sim = make_sim(url_ttl=300.0)  # 0.3 real seconds at speed 1000
    url = finished_url(sim)
    assert httpx.get(url).status_code == 200
    query = parse_qs(urlsplit(url).query)
    tampered = url.replace(query["Expires"][0], str(int(query["Expires"][0]) + 1000))
    resp = httpx.get(tampered)
    assert resp.status_code == 403 and b"SignatureDoesNotMatch" in resp.content
    now[0] = int(query["Expires"][0]) + 1  # one second past it
    resp = httpx.get(url)
    assert resp.status_code == 403
    assert b"<Code>AccessDenied</Code>" in resp.content and b"Request has expired." in resp.content


def test_filler_payload_is_deterministic_and_resumable(make_sim):
    size = 3 * 2**20 + 12345
    sim = make_sim(video_bytes=size)
    url = finished_url(sim)
    digest = hashlib.sha256()
    with httpx.stream("GET", url) as resp:
        assert int(resp.headers["content-length"]) == size
        for chunk in resp.iter_bytes():
            digest.update(chunk)
    again = httpx.get(url).content
    assert hashlib.sha256(again).hexdigest() == digest.hexdigest() and len(again) == size
    tail = httpx.get(url, headers={"Range": f"bytes={2**20 + 7}-"})
    assert tail.status_code == 206 and tail.content == again[2**20 + 7 :]
