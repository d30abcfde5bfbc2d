"""Frame validation: every accept/reject rule, transports, remote sources, prepare_frame."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import os
import struct
import threading
import zlib
from functools import partial
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from kf2v_tasks.dashscope.models import Kf2vModel
from kf2v_tasks.errors import FrameValidationError
from kf2v_tasks.generation.frames import (
    FrameLimits,
    FrameMemo,
    check_pair,
    inspect_frame,
    prepare_frame,
    read_frame_bytes,
)
from kf2v_tasks.generation.models import FrameTransport


def make_image(path: Path, size=(320, 240), mode="RGB", fmt="PNG", **save) -> Path:
    color = {"RGB": (200, 30, 30), "RGBA": (0, 0, 255, 128), "CMYK": (0, 50, 50, 0)}.get(mode, 128)
    Image.new(mode, size, color).save(path, fmt, **save)
    return path


def png_16bit_rgb(path: Path, w=300, h=300) -> Path:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\x12\x34" * 3 * w for _ in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


async def reject(source, match: str, **kw) -> FrameValidationError:
    with pytest.raises(FrameValidationError) as ei:
        await inspect_frame(str(source), **kw)
    assert match in ei.value.reason, ei.value.reason
    return ei.value


class FakeClient:
    """Stands in for Kf2vClient.upload_file."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, str, str]] = []

    async def upload_file(self, data: bytes, filename: str, model: str) -> str:
        self.calls.append((data, filename, model))
        return f"oss://dashscope-instant/abc/2025-01-01/x/{filename}"


# -- accepted -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,ext,mode",
    [("JPEG", "jpg", "RGB"), ("PNG", "png", "RGB"), ("BMP", "bmp", "RGB"), ("WEBP", "webp", "RGB")]
    + [("JPEG", "jpg", "L"), ("PNG", "png", "P"), ("PNG", "png", "L")],
)
async def test_accepts_supported_formats(tmp_path, fmt, ext, mode):
    p = make_image(tmp_path / f"a.{ext}", (640, 360), mode, fmt)
    info = await inspect_frame(str(p), role="first")
    assert info.format == fmt
    assert (info.width, info.height) == (640, 360)
    assert info.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert info.size_bytes == p.stat().st_size
    assert info.transport is FrameTransport.DATA_URI
    assert info.warnings == [] and not info.has_alpha
    assert info.mode == mode


async def test_boundary_sides_are_inclusive(tmp_path):
    p = make_image(tmp_path / "edge.png", (240, 8000), "L")
    info = await inspect_frame(str(p))
    assert (info.width, info.height) == (240, 8000)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
async def test_png_with_alpha_is_refused_with_the_fix(tmp_path, mode):
    # Both Model Studio pages: PNG *without* alpha (reference §4, §16).
    p = make_image(tmp_path / "a.png", (300, 300), mode)
    err = await reject(p, f"PNG with an alpha channel (mode {mode}) is not accepted")
    assert "save it without transparency" in err.reason
    assert err.role == "first" and "RGBA" not in err.reason.split("(mode")[0]


async def test_palette_png_with_a_transparent_colour_is_refused(tmp_path):
    p = make_image(tmp_path / "p.png", (300, 300), "P", transparency=0)
    err = await reject(p, "PNG with an alpha channel (mode P with a transparent colour)")
    assert "save it without transparency" in err.reason


@pytest.mark.parametrize("fmt,ext", [("WEBP", "webp")])
async def test_alpha_in_another_format_is_a_warning(tmp_path, fmt, ext):
    p = make_image(tmp_path / f"a.{ext}", (300, 300), "RGBA", fmt)
    info = await inspect_frame(str(p))
    assert info.has_alpha and any("alpha" in w for w in info.warnings)


# -- rejected -----------------------------------------------------------------------------


async def test_gif_rejected(tmp_path):
    p = make_image(tmp_path / "a.gif", (300, 300), "P", "GIF")
    err = await reject(p, "format GIF is not accepted (JPEG, PNG, BMP, WEBP)", role="last")
    assert err.role == "last" and "last frame" in str(err)


async def test_animated_webp_rejected(tmp_path):
    frames = [Image.new("RGB", (300, 300), c) for c in ("red", "blue", "green")]
    p = tmp_path / "anim.webp"
    frames[0].save(p, "WEBP", save_all=True, append_images=frames[1:])
    await reject(p, "animated image (3 frames)")


async def test_animated_png_rejected(tmp_path):
    frames = [Image.new("RGB", (300, 300), c) for c in ("red", "blue")]
    p = tmp_path / "anim.png"
    frames[0].save(p, "PNG", save_all=True, append_images=frames[1:])
    await reject(p, "animated image (2 frames)")


async def test_cmyk_jpeg_rejected(tmp_path):
    p = make_image(tmp_path / "c.jpg", (300, 300), "CMYK", "JPEG")
    err = await reject(p, "colour mode CMYK")
    assert "without transparency" in err.reason and "RGBA" not in err.reason


async def test_16bit_gray_png_rejected(tmp_path):
    p = tmp_path / "g16.png"
    Image.fromarray(np.full((300, 300), 40000, dtype=np.uint16)).save(p, "PNG")
    await reject(p, "colour mode I;16 (16-bit)")


async def test_16bit_rgb_png_rejected(tmp_path):
    await reject(png_16bit_rgb(tmp_path / "rgb16.png"), "16-bit PNG")


async def test_too_small_rejected(tmp_path):
    p = make_image(tmp_path / "s.png", (200, 150))
    await reject(p, "image is 200×150 px; each side must be 240..8000 px")


async def test_too_large_dimensions_rejected_cheaply(tmp_path):
    p = make_image(tmp_path / "wide.png", (9000, 300), "1")
    assert p.stat().st_size < 10_000
    await reject(p, "image is 9000×300 px")


async def test_wan27_takes_what_model_studio_takes_and_refuses_beyond_8_to_1(tmp_path):
    wan = FrameLimits.for_model("wan2.7-i2v")  # reference §16: 240..8000 px, 1:8..8:1, 20 MB
    big = make_image(tmp_path / "uhd.jpg", (3840, 2160), fmt="JPEG")
    info = await inspect_frame(str(big), limits=wan)
    assert (info.width, info.height) == (3840, 2160)
    edge = make_image(tmp_path / "edge.png", (1920, 240), "L")  # exactly 8:1
    assert (await inspect_frame(str(edge), limits=wan)).width == 1920
    tall = make_image(tmp_path / "tall.png", (240, 2000), "L")  # 1:8.33
    await reject(tall, "an aspect of 8.33:1; it must be between 1:8 and 8:1", limits=wan)
    assert wan.max_bytes == 20 * 2**20 and FrameLimits().max_aspect is None


async def test_configurable_side_limits(tmp_path):
    p = make_image(tmp_path / "m.png", (300, 300))
    await reject(
        p, "each side must be 360..2000 px", limits=FrameLimits(min_side=360, max_side=2000)
    )


async def test_file_larger_than_max_bytes_rejected(tmp_path):
    p = make_image(tmp_path / "big.bmp", (300, 300), fmt="BMP")  # ~270 KB
    err = await reject(p, "frames may be at most 100 KiB", limits=FrameLimits(max_bytes=100 * 1024))
    assert "file is" in err.reason


async def test_empty_file_rejected(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    await reject(p, "file is empty")


async def test_truncated_png_rejected(tmp_path):
    p = tmp_path / "t.png"
    noisy = np.random.default_rng(1).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(p, "PNG")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    await reject(p, "truncated")


async def test_truncated_jpeg_rejected(tmp_path):
    p = tmp_path / "t.jpg"
    noisy = np.random.default_rng(2).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(p, "JPEG", quality=95)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    await reject(p, "truncated")


async def test_random_bytes_rejected(tmp_path):
    p = tmp_path / "noise.png"
    p.write_bytes(os.urandom(4096))
    await reject(p, "not a recognised image")


async def test_missing_path_rejected(tmp_path):
    err = await reject(tmp_path / "nope.png", "file not found", role="first")
    assert "first frame" in str(err)


async def test_directory_rejected(tmp_path):
    await reject(tmp_path, "is a folder")


async def test_decompression_bomb_guard(tmp_path, monkeypatch):
    p = make_image(tmp_path / "bomb.png", (400, 400))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    await reject(p, "too large to decode safely")


def test_limits_validation():
    with pytest.raises(ValueError):
        FrameLimits(min_side=500, max_side=400)
    with pytest.raises(ValueError):
        FrameLimits(allowed_formats=("GIF",))


# -- transports and sources ---------------------------------------------------------------


async def test_transport_threshold(tmp_path):
    p = make_image(tmp_path / "a.png", (300, 300))
    size = p.stat().st_size
    at = await inspect_frame(str(p), limits=FrameLimits(inline_max_bytes=size))
    above = await inspect_frame(str(p), limits=FrameLimits(inline_max_bytes=size - 1))
    assert at.transport is FrameTransport.DATA_URI
    assert above.transport is FrameTransport.UPLOAD


async def test_file_url(tmp_path):
    p = make_image(tmp_path / "a.png", (300, 300))
    info = await inspect_frame(p.as_uri())
    assert info.transport is FrameTransport.DATA_URI and info.width == 300


async def test_memory_filesystem():
    fs = fsspec.filesystem("memory")
    buf = io.BytesIO()
    Image.new("RGB", (320, 320), "red").save(buf, "PNG")
    fs.pipe("/kf2v-test/frames/a.png", buf.getvalue())
    info = await inspect_frame("memory://kf2v-test/frames/a.png")
    assert info.format == "PNG" and info.transport is FrameTransport.DATA_URI
    await reject("memory://kf2v-test/frames/missing.png", "file not found")


async def test_s3_source(tmp_path, s3_server):
    bucket = s3_server.new_bucket()
    p = make_image(tmp_path / "a.jpg", (640, 480), fmt="JPEG")
    s3_server.filesystem().put(str(p), f"{bucket}/frames/a.jpg")
    url = f"s3://{bucket}/frames/a.jpg"
    opts = s3_server.storage_options
    info = await inspect_frame(url, storage_options=opts)
    assert info.format == "JPEG" and info.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    await reject(f"s3://{bucket}/frames/none.jpg", "file not found", storage_options=opts)
    client = FakeClient()
    uri = await prepare_frame(info, client=client, model="wan2.2-kf2v-flash", storage_options=opts)
    assert base64.b64decode(uri.split(",", 1)[1]) == p.read_bytes()


@pytest.fixture(scope="module")
def http_frames(tmp_path_factory):
    """A static file server on loopback serving a folder of frames."""
    root = tmp_path_factory.mktemp("served")
    make_image(root / "a.png", (400, 300))
    make_image(root / "big.bmp", (300, 300), fmt="BMP")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


async def test_http_url_is_validated_and_passed_through(http_frames):
    base, root = http_frames
    url = f"{base}/a.png?token=abc"
    info = await inspect_frame(url)
    assert info.transport is FrameTransport.URL and info.source == url
    assert info.sha256 == hashlib.sha256((root / "a.png").read_bytes()).hexdigest()
    assert await prepare_frame(info, client=FakeClient(), model="m") == url


async def test_http_404_and_oversize(http_frames):
    base, _ = http_frames
    err = await reject(f"{base}/missing.png?sig=secret", "HTTP 404 from")
    assert "secret" not in str(err)
    await reject(f"{base}/big.bmp", "frames may be at most", limits=FrameLimits(max_bytes=50_000))
    data = await read_frame_bytes(f"{base}/big.bmp", max_bytes=None)
    assert len(data) > 250_000


# -- pairs --------------------------------------------------------------------------------


async def test_pair_aspect_warning_and_alpha(tmp_path):
    a = make_image(tmp_path / "a.png", (640, 360))
    b = make_image(tmp_path / "b.webp", (400, 400), "RGBA", "WEBP")
    pair = await check_pair(str(a), str(b))
    assert any("cropped to the first frame's aspect ratio" in w for w in pair.warnings)
    assert any(w.startswith("last frame:") and "alpha" in w for w in pair.warnings)


async def test_pair_with_an_alpha_png_is_refused_naming_the_frame(tmp_path):
    a = make_image(tmp_path / "a.png", (640, 360))
    b = make_image(tmp_path / "b.png", (640, 360), "RGBA")
    with pytest.raises(FrameValidationError) as ei:
        await check_pair(str(a), str(b))
    assert ei.value.role == "last" and "save it without transparency" in str(ei.value)


async def test_pair_same_ratio_no_warning(tmp_path):
    a = make_image(tmp_path / "a.png", (640, 360))
    b = make_image(tmp_path / "b.jpg", (1280, 722), fmt="JPEG")  # within 2 %
    pair = await check_pair(str(a), str(b))
    assert pair.warnings == []


async def test_pair_one_fails(tmp_path):
    a = make_image(tmp_path / "a.png", (640, 360))
    with pytest.raises(FrameValidationError) as ei:
        await check_pair(str(a), str(tmp_path / "missing.png"))
    assert ei.value.role == "last" and ei.value.reason == "file not found"


async def test_pair_both_fail_names_first_and_both_reasons(tmp_path):
    small = make_image(tmp_path / "small.png", (100, 100))
    with pytest.raises(FrameValidationError) as ei:
        await check_pair(str(small), str(tmp_path / "missing.png"))
    err = ei.value
    assert err.role == "first" and err.frame == str(small)
    assert "100×100" in err.reason and "file not found" in err.reason


async def test_a_memo_reads_a_frame_named_by_several_pairs_once(tmp_path):
    a = make_image(tmp_path / "a.png", (640, 360))
    b = make_image(tmp_path / "b.png", (640, 360))
    c = make_image(tmp_path / "c.png", (640, 360))
    memo = FrameMemo()
    first = await check_pair(str(a), str(b), inspect=memo)
    b.write_bytes(b"no longer an image")  # a second read would now fail
    second = await check_pair(str(b), str(c), inspect=memo)
    assert second.first.sha256 == first.last.sha256
    with pytest.raises(FrameValidationError):  # without the memo, it is read again
        await check_pair(str(b), str(c))


async def test_a_memo_raises_a_bad_frame_again_with_each_rows_role(tmp_path):
    good = make_image(tmp_path / "good.png", (640, 360))
    small = make_image(tmp_path / "small.png", (100, 100))
    memo = FrameMemo()
    with pytest.raises(FrameValidationError) as as_last:
        await check_pair(str(good), str(small), inspect=memo)
    with pytest.raises(FrameValidationError) as as_first:
        await check_pair(str(small), str(good), inspect=memo)
    assert as_last.value.role == "last" and as_first.value.role == "first"
    assert as_last.value.reason == as_first.value.reason and "100×100" in as_first.value.reason
    # Other limits are another check: the same file passes where it fits.
    ok = await check_pair(str(small), str(small), limits=FrameLimits(min_side=50), inspect=memo)
    assert ok.first.width == 100


# -- prepare_frame ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,ext,mime",
    [
        ("JPEG", "jpg", "image/jpeg"),
        ("PNG", "png", "image/png"),
        ("BMP", "bmp", "image/bmp"),
        ("WEBP", "webp", "image/webp"),
    ],
)
async def test_prepare_data_uri(tmp_path, fmt, ext, mime):
    p = make_image(tmp_path / f"a.{ext}", (300, 300), fmt=fmt)
    info = await inspect_frame(str(p))
    client = FakeClient()
    uri = await prepare_frame(info, client=client, model=Kf2vModel.WAN22_FLASH)
    prefix = f"data:{mime};base64,"
    assert uri.startswith(prefix)
    assert base64.b64decode(uri[len(prefix) :]) == p.read_bytes()
    assert client.calls == []


async def test_prepare_upload(tmp_path):
    p = make_image(tmp_path / "my first frame!.png", (300, 300))
    info = await inspect_frame(str(p), limits=FrameLimits(inline_max_bytes=10))
    client = FakeClient()
    url = await prepare_frame(info, client=client, model=Kf2vModel.WAN22_FLASH)
    assert url.startswith("oss://")
    ((data, name, model),) = client.calls
    assert data == p.read_bytes() and model == "wan2.2-kf2v-flash"
    assert name == "my_first_frame.png"


async def test_prepare_detects_changed_file(tmp_path):
    p = make_image(tmp_path / "a.png", (300, 300))
    info = await inspect_frame(str(p))
    make_image(p, (300, 300), "L")  # replaced after validation
    with pytest.raises(FrameValidationError, match="frame changed since validation"):
        await prepare_frame(info, client=FakeClient(), model="m")
    p.unlink()
    with pytest.raises(FrameValidationError, match="file not found"):
        await prepare_frame(info, client=FakeClient(), model="m")


async def test_credentials_in_a_frame_url_never_reach_the_error():
    err = await reject("memory://user:hunter2@nowhere/missing.png?sig=abc", "file not found")
    assert "hunter2" not in str(err) and "sig=abc" not in str(err)
    assert err.frame == "memory://nowhere/missing.png"
