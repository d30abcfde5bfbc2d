"""The gallery page and its writer: escaping, links, throttled rewrites, dry runs, presigning.

The page as a browser sees it is checked in tests/test_gallery_browser.py (headless
Chromium); here the HTML text and the writer's behaviour.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from kf2v_tasks.batch.gallery import GalleryWriter
from kf2v_tasks.batch.gallery_page import GalleryCard, relative_link, render_gallery
from kf2v_tasks.batch.results import BatchSummary, RowResult, RowStatus, to_csv
from kf2v_tasks.storage.presign import (
    MAX_EXPIRY_SECONDS,
    can_presign,
    presign,
    presign_many,
)

HOSTILE = '<img src=x onerror=alert(1)><script>alert(2)</script>"\' onmouseover=alert(3) x="'


class _Tags(HTMLParser):
    """Every start tag and its attributes, as a browser's parser reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def test_everything_users_and_the_service_wrote_stays_text():
    card = GalleryCard(
        row=2,
        id=HOSTILE,
        status="succeeded",
        prompt=HOSTILE,
        actual_prompt=HOSTILE,
        video=relative_link("out", 'out/a"><script>b.mp4'),
        poster=relative_link("out", "out/javascript:alert(1).poster.jpg"),
        cost=0.5,
    )
    bad = GalleryCard(row=3, status="failed", error=HOSTILE, task_id=HOSTILE)
    page = render_gallery([card, bad], title=HOSTILE, subtitle=HOSTILE)
    tags = _tags(page)
    assert {t for t, _ in tags} <= {
        "html", "head", "meta", "title", "style", "body", "header", "h1", "p", "span", "main",
        "article", "div", "video", "source", "a", "h2", "dl", "dt", "dd",
    }  # fmt: skip
    assert not any(k.startswith("on") for _, attrs in tags for k in attrs)  # no handler
    assert page.count("&lt;img src=x onerror=alert(1)&gt;") >= 5  # title, id, prompts, error
    (source,) = [a for t, a in tags if t == "source"]
    assert source["src"] == "a%22%3E%3Cscript%3Eb.mp4"  # a file name cannot end the attribute
    (video,) = [a for t, a in tags if t == "video"]
    assert video["poster"] == "javascript%3Aalert%281%29.poster.jpg"  # a path, not a scheme
    # No script may run even if something slipped through, and nothing is loaded from afar.
    csp = next(a["content"] for t, a in tags if t == "meta" and "http-equiv" in a)
    assert "script-src 'none'" in csp
    assert not re.search(r"(src|href|poster)=\"(https?:)?//", page)


def test_links_are_relative_encoded_and_never_leave_the_folder():
    assert relative_link("out", "out/clips/a b#1.mp4") == "clips/a%20b%231.mp4"
    assert relative_link("s3://b/run", "s3://b/run/x/y.mp4") == "x/y.mp4"
    assert relative_link("s3://b/run", "s3://b/run2/y.mp4") is None
    assert relative_link("out", "other/a.mp4") is None and relative_link("out", None) is None
    page = render_gallery([GalleryCard(row=2, status="succeeded", video="javascript:alert(1)")])
    assert "javascript:" not in page and "<video" not in page  # refused, not linked
    signed = "https://b.s3.test/a.mp4?X-Amz-Signature=ab&amp=1"
    page = render_gallery([GalleryCard(row=2, status="succeeded", video=signed)])
    assert 'src="https://b.s3.test/a.mp4?X-Amz-Signature=ab&amp;amp=1"' in page


def _plan(root: str, prompts: dict[int, str]):
    rows = [
        SimpleNamespace(row_number=n, prompt=p, id=f"r{n}", output=f"r{n}.mp4")
        for n, p in prompts.items()
    ]
    manifest = SimpleNamespace(source="https://x.test/m.csv?sig=1", rows=rows)
    plan = SimpleNamespace(output=root, manifest=manifest, invalid=[])
    return plan, SimpleNamespace(currency="CNY")


def _video(root: Path, name: str, previews: bool = True) -> str:
    (root / f"{name}.mp4").write_bytes(b"v")
    (root / f"{name}.poster.jpg").write_bytes(b"p")
    (root / f"{name}.strip.jpg").write_bytes(b"s")
    side: dict = {"actual_prompt": f"{name}, cinematic", "currency": "CNY"}
    if previews:
        side["previews"] = {
            "poster": str(root / f"{name}.poster.jpg"),
            "strip": str(root / f"{name}.strip.jpg"),
            "frames": 5,
            "poster_frame": 2,
            "width": 64,
            "height": 48,
        }
    (root / f"{name}.json").write_text(json.dumps(side))
    return str(root / f"{name}.mp4")


async def test_the_page_is_rewritten_as_rows_finish_at_most_once_per_interval(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    writer = GalleryWriter(min_interval=0.3)
    plan, cost = _plan(str(root), {n: f"prompt {n}" for n in range(2, 42)})
    await writer.on_plan(plan, cost, dry_run=False)
    assert writer.writes == 1 and "0 rows finished" in (root / "index.html").read_text()
    assert "sig=1" not in (root / "index.html").read_text()  # the title is the file name only
    results = [
        RowResult(row=n, id=f"r{n}", status=RowStatus.SUCCEEDED, output=_video(root, f"r{n}"))
        for n in range(2, 42)
    ]
    for i, r in enumerate(results):
        writer.on_row(r, {"succeeded": i + 1}, 40)
        await asyncio.sleep(0.01)  # 40 rows over ~0.4 s
    # Its rewrites end once a write leaves nothing new (its pause grows with a slow write).
    await asyncio.wait_for(writer._loop, 30)
    assert 2 <= writer.writes <= 4  # not one write per row
    page = (root / "index.html").read_text()
    assert page.count("<article") == 40 and "r41, cinematic" in page
    summary = BatchSummary(
        manifest="m.csv", output=str(root), total=40, counts={"succeeded": 40}, results=results
    )
    before = writer.writes
    await writer.on_finish(summary)
    assert writer.writes == before + 1  # and once at the end
    page = (root / "index.html").read_text()
    assert "40 rows: 40 succeeded" in page and 'poster="r2.poster.jpg"' in page
    assert 'src="r2.strip.jpg"' in page and "prompt 2" in page


async def test_the_cards_of_rows_an_earlier_run_made_stay_on_the_page(tmp_path):
    # results.csv of an earlier run with another manifest: r2 (this run has it) and old9.
    root = tmp_path / "out"
    root.mkdir()
    before = [
        RowResult(row=2, id="r2", status=RowStatus.FAILED, output=str(root / "r2.mp4")),
        RowResult(
            row=9, id="old9", status=RowStatus.SUCCEEDED, output=_video(root, "old9"), cost=0.5
        ),
    ]
    (root / "results.csv").write_text(to_csv(before))
    writer = GalleryWriter(min_interval=0.01)
    plan, cost = _plan(str(root), {2: "prompt 2"})
    await writer.on_plan(plan, cost, dry_run=False)
    page = (root / "index.html").read_text()
    assert 'id="earlier-row-9"' in page and "old9, cinematic" in page  # there from the start
    assert "0 rows finished so far" in page and "earlier run: 1" in page
    now = [RowResult(row=2, id="r2", status=RowStatus.SUCCEEDED, output=_video(root, "r2"))]
    summary = BatchSummary(
        manifest="m.csv", output=str(root), total=1, counts={"succeeded": 1}, results=now
    )
    await writer.on_finish(summary)
    page = (root / "index.html").read_text()
    assert page.count("<article") == 2 and "1 row: 1 succeeded" in page
    assert page.index('id="row-2"') < page.index('id="earlier-row-9"')
    assert 'data-earlier-run="true"' in page and ">earlier run</span>" in page
    assert page.count('data-earlier-run="true"') == 1  # r2 is this run's now


async def test_a_sharded_parent_keeps_the_earlier_cards_from_the_merged_results(tmp_path):
    # No plan is seen by the parent's gallery: the merged results.csv says what to keep.
    root = tmp_path / "out"
    root.mkdir()
    now = [RowResult(row=2, id="r2", status=RowStatus.SUCCEEDED, output=_video(root, "r2"))]
    old = RowResult(row=5, id="old5", status=RowStatus.SUCCEEDED, output=_video(root, "old5"))
    merged = [*now, old.model_copy(update={"earlier_run": True})]
    (root / "results.csv").write_text(to_csv(merged))
    writer = GalleryWriter()
    summary = BatchSummary(
        manifest="m.csv", output=str(root), total=1, counts={"succeeded": 1}, results=now
    )
    await writer.on_finish(summary)
    page = (root / "index.html").read_text()
    assert page.count("<article") == 2 and 'id="earlier-row-5"' in page


async def test_a_dry_run_writes_no_gallery(tmp_path):
    writer = GalleryWriter(min_interval=0.01)
    plan, cost = _plan(str(tmp_path), {2: "p"})
    await writer.on_plan(plan, cost, dry_run=True)
    writer.on_row(RowResult(row=2, status=RowStatus.PLANNED), {"planned": 1}, 1)
    await writer.on_finish(BatchSummary(manifest="m", output=str(tmp_path), dry_run=True))
    assert writer.writes == 0 and not (tmp_path / "index.html").exists()


async def test_an_older_sidecar_finds_previews_made_since_under_their_names(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    old = _video(root, "old", previews=False)
    (root / "gone.mp4").write_bytes(b"v")  # no sidecar, no previews
    writer = GalleryWriter()
    results = [
        RowResult(row=2, id="old", status=RowStatus.SKIPPED, output=old),
        RowResult(row=3, id="gone", status=RowStatus.SKIPPED, output=str(root / "gone.mp4")),
    ]
    await writer.on_finish(BatchSummary(manifest="m", output=str(root), total=2, results=results))
    page = (root / "index.html").read_text()
    assert 'poster="old.poster.jpg"' in page and 'src="old.strip.jpg"' in page
    assert '<source src="gone.mp4"' in page and "gone.poster.jpg" not in page


async def test_a_failed_gallery_write_never_fails_the_batch(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    writer = GalleryWriter(min_interval=0.01)
    plan, cost = _plan(str(blocker / "out"), {})
    with pytest.raises(OSError):
        await writer.on_plan(plan, cost, dry_run=False)  # the reporter catches this one
    writer.on_row(RowResult(row=2, status=RowStatus.FAILED), {"failed": 1}, 1)
    await asyncio.sleep(0.1)
    assert "writing the gallery failed" in caplog.text


# -- presigned links ----------------------------------------------------------------------------


async def test_presigned_links_open_in_a_browser_and_say_when_they_expire(s3_server):
    bucket = s3_server.new_bucket()
    s3_server.filesystem().pipe_file(f"{bucket}/out/a.poster.jpg", b"\xff\xd8jpeg")
    opts = s3_server.storage_options
    before = datetime.now(UTC)
    link = await presign(f"s3://{bucket}/out/a.poster.jpg", storage_options=opts, expires_in=600)
    assert link.source == f"s3://{bucket}/out/a.poster.jpg" and link.expires_in == 600
    assert before + timedelta(seconds=599) <= link.expires_at <= before + timedelta(seconds=660)
    got = httpx.get(link.url)
    assert got.status_code == 200 and got.content == b"\xff\xd8jpeg"
    assert got.headers["content-type"] == "image/jpeg"
    assert "Signature" not in repr(link) and "Signature" not in str(link)
    (longest,) = await presign_many(
        [f"s3://{bucket}/out/a.poster.jpg"], storage_options=opts, expires_in=10**9
    )
    assert longest.expires_in == MAX_EXPIRY_SECONDS  # SigV4's limit: said, not pretended
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", longest.expiry_text())


async def test_only_s3_objects_are_presigned():
    assert can_presign("s3://b/a.mp4") and can_presign("S3A://b/a.mp4")
    assert not can_presign("/data/out/a.mp4") and not can_presign("gs://b/a.mp4")
    with pytest.raises(ValueError, match="not an s3:// URL"):
        await presign("/data/out/a.mp4")
    with pytest.raises(ValueError, match="at least 1 second"):
        await presign("s3://b/a.mp4", expires_in=0)
