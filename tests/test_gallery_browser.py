"""index.html as a user opens it: headless Chromium over the DevTools protocol.

A real batch runs on the simulator (real H.264 videos, a hostile prompt, an invalid row);
the gallery it leaves is opened from disk in Debian's ``chromium``. Every poster must
decode, every ``<video>`` must load its file and present a decoded frame, the page must
fetch nothing but its own files, and the hostile prompt must stay text (no script, no
dialog, no injected element). Skipped, with the reason, when chromium is not installed.

The protocol client is ~40 lines over ``websockets`` (a Prefect dependency) and httpx to
the browser's loopback endpoint: no Playwright or Selenium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.batch.gallery import GalleryWriter
from kf2v_tasks.batch.reporting import run_observer
from kf2v_tasks.batch.runner import BatchRunner
from kf2v_tasks.simulator import RuntimeDistribution

from helpers import fast_service, make_pairs, manifest_text, pointed_at

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
    pytest.mark.usefixtures("prefect_server"),
]

HOSTILE = "<img src=x onerror=alert(1)><script>window.__pwned=1</script> & \"quotes\" 'too'"
FAST = ConcurrencySettings(max_in_flight=4, submits_per_second=20, queries_per_second=200)


class Browser:
    """Headless Chromium and one page, driven over the DevTools protocol."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="kf2v-chromium-")
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # root in a container has no user namespace sandbox
                "--disable-gpu",
                "--no-first-run",
                "--mute-audio",
                "--autoplay-policy=no-user-gesture-required",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.events: list[dict[str, Any]] = []
        self._id = 0
        port = self._port()
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(p for p in pages if p["type"] == "page")
        from websockets.sync.client import connect

        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=20)

    def _port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                return int(m.group(1))
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError("chromium did not open its DevTools endpoint")

    def call(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        self._id += 1
        me = self._id
        self.ws.send(json.dumps({"id": me, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == me:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e.get("method") == event:
                    return e
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            self.events.append(msg)

    def evaluate(self, expression: str, timeout: float = 120) -> Any:
        result = self.call(
            "Runtime.evaluate",
            timeout=timeout,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            shutil.rmtree(self.profile, ignore_errors=True)


#: What a user would see, measured in the page: posters decode, videos present a frame.
CHECK = r"""
(async () => {
  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  const probe = document.createElement('video');
  const out = {canPlay: probe.canPlayType('video/mp4; codecs="avc1.64001e"'),
               posters: [], strips: [], videos: [], pwned: window.__pwned === 1,
               injected: document.querySelectorAll('img[src="x"], script').length,
               prompts: [...document.querySelectorAll('dd.prompt')].map((d) => d.textContent),
               errors: [...document.querySelectorAll('dd.error-text')].map((d) => d.textContent),
               cards: [...document.querySelectorAll('article.card')].map(
                 (a) => [a.id, a.dataset.status])};
  for (const v of document.querySelectorAll('video')) {
    v.scrollIntoView();
    const img = new Image();
    img.src = v.poster;
    let decoded = true;
    try { await img.decode(); } catch (e) { decoded = false; }
    out.posters.push({poster: v.getAttribute('poster'), decoded, width: img.naturalWidth});
    v.muted = true;
    v.preload = 'auto';
    const loaded = new Promise((res) => {
      v.addEventListener('loadeddata', () => res('loadeddata'), {once: true});
      setTimeout(() => res('timeout'), 20000);
    });
    v.load();
    const how = await loaded;
    let frame = false;
    if (how === 'loadeddata') {
      frame = await new Promise((res) => {
        v.requestVideoFrameCallback(() => res(true));
        v.play().catch(() => res(false));
        setTimeout(() => res(false), 20000);
      });
      v.pause();
    }
    out.videos.push({src: v.currentSrc, how, readyState: v.readyState, width: v.videoWidth,
                     height: v.videoHeight, frame, error: v.error && v.error.code});
  }
  for (const i of document.querySelectorAll('img.strip')) {
    i.scrollIntoView();
    for (let t = 0; t < 200 && !i.complete; t++) await wait(50);
    out.strips.push({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth});
  }
  return out;
})()
"""


@pytest.fixture(scope="module")
def sim():
    with fast_service(RuntimeDistribution(kind="fixed", low=30), seed=11) as s:
        yield s


async def test_the_gallery_plays_every_video_and_keeps_a_hostile_prompt_as_text(
    sim, tmp_path, monkeypatch
):
    folder = tmp_path / "in"
    pairs = make_pairs(folder, 3)
    rows = [
        {"id": "sunrise", "first_frame": pairs[0][0], "last_frame": pairs[0][1], "prompt": "dawn"},
        {"id": "evil", "first_frame": pairs[1][0], "last_frame": pairs[1][1], "prompt": HOSTILE},
        {"id": "plain", "first_frame": pairs[2][0], "last_frame": pairs[2][1]},
        {"id": "broken", "first_frame": pairs[0][0], "last_frame": "missing <b>.png"},
    ]
    (folder / "m.csv").write_text(
        manifest_text(rows, ["id", "first_frame", "last_frame", "prompt"])
    )
    out = tmp_path / "out dir"  # a space: links must be encoded, not broken
    gallery = GalleryWriter(min_interval=0.1)
    with pointed_at(sim, monkeypatch):
        summary = await BatchRunner(
            str(folder / "m.csv"), str(out), concurrency=FAST, observer=run_observer(gallery)
        ).run()
    assert summary.counts == {"succeeded": 3, "invalid": 1}
    index = out / "index.html"
    assert gallery.path == str(index) and gallery.writes >= 2  # first page, rows, final
    page = index.read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page

    browser = Browser(CHROMIUM)
    try:
        browser.call("Page.enable")
        browser.call("Network.enable")
        browser.call("Runtime.enable")
        browser.call("Page.navigate", url=index.as_uri())
        browser.wait_for("Page.loadEventFired")
        seen = browser.evaluate(CHECK)
        time.sleep(0.5)
        browser.call("Runtime.evaluate", expression="1")  # drain events that came meanwhile
    finally:
        browser.close()

    assert seen["canPlay"] in ("probably", "maybe"), "this chromium cannot play H.264"
    assert seen["cards"] == [
        ["row-2", "succeeded"], ["row-3", "succeeded"], ["row-4", "succeeded"],
        ["row-5", "invalid"],
    ]  # fmt: skip
    assert len(seen["posters"]) == 3 and len(seen["videos"]) == 3 and len(seen["strips"]) == 3
    for p in seen["posters"]:
        assert p["decoded"] and p["width"] > 0, p
    for s in seen["strips"]:
        assert s["complete"] and s["width"] > 0, s
    for v in seen["videos"]:
        assert v["how"] == "loadeddata" and v["readyState"] >= 2 and v["error"] is None, v
        assert v["width"] > 0 and v["frame"], v
        assert v["src"].startswith("file://") and "out%20dir" in v["src"], v
    # The hostile prompt is text: shown exactly, nothing injected, nothing run.
    assert HOSTILE in seen["prompts"] and "dawn" in seen["prompts"]
    assert not seen["pwned"] and seen["injected"] == 0
    assert not [e for e in browser.events if e.get("method") == "Page.javascriptDialogOpening"]
    assert any("missing <b>.png" in e for e in seen["errors"])
    # Nothing but the page's own files was fetched.
    urls = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
    assert all(Path(u[len("file://") :]).parent for u in urls)
    root = out.as_uri()
    assert all(u.startswith(root + "/") for u in urls if u.startswith("file://")), urls
    assert not os.path.exists(out / "x")
