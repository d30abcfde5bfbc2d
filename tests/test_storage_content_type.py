"""S3 objects carry the Content-Type a browser needs: the gallery, posters, videos, sidecars.

Against a real S3 endpoint (moto server): every object's ``ContentType`` is read back with
``head_object``, as static hosting and presigned URLs serve it.
"""

from __future__ import annotations

import hashlib
import io

import httpx
import pytest
from PIL import Image

from kf2v_tasks.batch.gallery import write_gallery
from kf2v_tasks.batch.gallery_page import render_gallery
from kf2v_tasks.generation.previews import copy_previews, make_previews
from kf2v_tasks.retry import RetryPolicy
from kf2v_tasks.storage.content_types import content_type_for
from kf2v_tasks.storage.download import S3_PART_SIZE, stream_to_storage
from kf2v_tasks.storage.files import (
    copy_video,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

NO_WAIT = RetryPolicy(max_attempts=2, base_delay=0)


def _type_of(s3_server, bucket: str, key: str) -> str:
    head = s3_server.filesystem().call_s3("head_object", Bucket=bucket, Key=key)
    return head["ContentType"]


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (160, 120), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def mp4() -> bytes:
    from kf2v_tasks.simulator.render import render_video

    return render_video(_png((220, 30, 30)), _png((30, 30, 220)), "480P", fps=8)


def _serving(body: bytes) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Length": str(len(body))})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("s3://b/out/a.mp4", "video/mp4"),
        ("s3://b/out/A.POSTER.JPG", "image/jpeg"),
        ("out/a.json", "application/json"),
        ("out/index.html", "text/html; charset=utf-8"),
        ("out/results.csv", "text/csv; charset=utf-8"),
        ("out/no-extension", None),
        ("out/.hidden", None),
    ],
)
def test_content_type_for_names_the_files_this_package_writes(path, expected):
    assert content_type_for(path) == expected


async def test_small_writes_say_what_they_are(s3_server):
    bucket = s3_server.new_bucket()
    opts = s3_server.storage_options
    await write_json_atomic(f"s3://{bucket}/a.json", {"a": 1}, storage_options=opts)
    await write_text_atomic(f"s3://{bucket}/results.csv", "row\n1\n", storage_options=opts)
    await write_bytes_atomic(
        f"s3://{bucket}/blob", b"x", storage_options=opts, content_type="image/png"
    )
    page = await write_gallery(f"s3://{bucket}/out", render_gallery([]), storage_options=opts)
    assert page == f"s3://{bucket}/out/index.html"
    assert _type_of(s3_server, bucket, "a.json") == "application/json"
    assert _type_of(s3_server, bucket, "results.csv") == "text/csv; charset=utf-8"
    assert _type_of(s3_server, bucket, "blob") == "image/png"
    assert _type_of(s3_server, bucket, "out/index.html") == "text/html; charset=utf-8"
    # One object each: no temp left behind by the typed writes.
    assert sorted(s3_server.filesystem().find(bucket)) == sorted(
        f"{bucket}/{k}" for k in ("a.json", "results.csv", "blob", "out/index.html")
    )


@pytest.mark.parametrize("size", [1000, S3_PART_SIZE + 123], ids=["one-put", "multipart"])
async def test_streamed_videos_are_video_mp4(s3_server, size):
    bucket = s3_server.new_bucket()
    body = hashlib.sha256(b"v").digest() * (size // 32) + b"v" * (size % 32)
    async with _serving(body) as http:
        res = await stream_to_storage(
            "https://video.example/v.mp4",
            f"s3://{bucket}/out/v.mp4",
            storage_options=s3_server.storage_options,
            http=http,
            retry=NO_WAIT,
        )
    assert res.bytes == size
    assert _type_of(s3_server, bucket, "out/v.mp4") == "video/mp4"


async def test_posters_copies_and_their_sidecars_keep_their_types(s3_server, mp4):
    bucket = s3_server.new_bucket()
    opts = s3_server.storage_options
    src, dest = f"s3://{bucket}/out/a.mp4", f"s3://{bucket}/out/sub/b.mp4"
    await write_bytes_atomic(src, mp4, storage_options=opts)
    previews = await make_previews(src, storage_options=opts)
    sha = hashlib.sha256(mp4).hexdigest()
    side = {"sha256": sha, "previews": previews.model_dump(mode="json")}
    await write_json_atomic(f"s3://{bucket}/out/a.json", side, storage_options=opts)
    await copy_video(src, dest, storage_options=opts)
    copied = await copy_previews(src, dest, storage_options=opts)
    assert copied is not None and copied.poster == f"s3://{bucket}/out/sub/b.poster.jpg"
    types = {
        key: _type_of(s3_server, bucket, key)
        for key in (
            "out/a.mp4",
            "out/a.poster.jpg",
            "out/a.strip.jpg",
            "out/sub/b.mp4",
            "out/sub/b.json",
            "out/sub/b.poster.jpg",
            "out/sub/b.strip.jpg",
        )
    }
    assert types == {
        "out/a.mp4": "video/mp4",
        "out/a.poster.jpg": "image/jpeg",
        "out/a.strip.jpg": "image/jpeg",
        "out/sub/b.mp4": "video/mp4",  # the server-side copy of the temp keeps its type
        "out/sub/b.json": "application/json",
        "out/sub/b.poster.jpg": "image/jpeg",
        "out/sub/b.strip.jpg": "image/jpeg",
    }
