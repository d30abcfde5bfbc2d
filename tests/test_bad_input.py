"""Bad input, end to end: every bad row or frame becomes a row-level error, never a create.

Property-based (hypothesis) over whole manifests and frame files, through the batch's
planning phase (``plan_batch``: manifest parsing + frame validation, exactly what runs
before the first submit), plus one real batch on the simulator with a catalogue of bad rows
mixed with good ones: the bad rows end as ``invalid`` naming row, column and reason, the
simulator sees zero creates for them, and the good rows are delivered.

A PNG with an alpha channel is one of them: both Model Studio pages say PNG without alpha
(reference §16), so it is refused before any create, with the fix in the message.
"""

from __future__ import annotations

import csv
import io
import re
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kf2v_tasks.batch.manifest import ManifestFileError  # noqa: E402
from kf2v_tasks.batch.plan import plan_batch  # noqa: E402
from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig  # noqa: E402
from reliability.harness import make_dataset, read_results, run_batch, simulated_service  # noqa: E402

from conftest import TEST_API_KEY  # noqa: E402

pytestmark = pytest.mark.usefixtures("prefect_server")

HEADER = [
    "id",
    "first_frame",
    "last_frame",
    "prompt",
    "seed",
    "model",
    "resolution",
    "duration",
    "audio",
    "output",
]


# ------------------------------------------------------------------------ frame makers


def _rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def good_png(path: Path, seed: int = 0) -> None:
    _rgb(256, 240, seed).save(path, "PNG")


def _missing(path: Path) -> None:
    path.unlink(missing_ok=True)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    buf = io.BytesIO()
    _rgb(256, 240, 5).save(buf, "PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def _not_an_image(path: Path) -> None:
    path.write_text("first_frame,last_frame\nthis is a CSV, not a picture\n")


def _animated(path: Path) -> None:
    frames = [_rgb(256, 240, s) for s in range(3)]
    frames[0].save(path, "PNG", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _animated_gif(path: Path) -> None:
    frames = [_rgb(256, 240, s).convert("P") for s in range(3)]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _cmyk(path: Path) -> None:
    _rgb(256, 240, 1).convert("CMYK").save(path, "JPEG")


def _png16(path: Path) -> None:
    arr = (np.random.default_rng(2).integers(0, 65535, size=(240, 256))).astype(np.uint16)
    Image.fromarray(arr).save(path, "PNG")  # mode I;16


def _rgb48_png(path: Path) -> None:
    """16 bits per channel RGB (Pillow cannot write it; build the PNG by hand)."""
    w, h = 256, 240
    raw = b"".join(b"\x00" + bytes(range(256)) * (w * 6 // 256) for _ in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _alpha(path: Path) -> None:
    img = _rgb(256, 240, 3).convert("RGBA")
    img.putalpha(128)
    img.save(path, "PNG")


def _tiny(path: Path) -> None:
    _rgb(16, 16).save(path, "PNG")


def _huge(path: Path) -> None:
    Image.new("RGB", (8100, 240), (10, 20, 30)).save(path, "PNG")


def _wrong_extension(path: Path) -> None:
    """A TIFF (not an accepted format) saved under .png."""
    _rgb(256, 240).save(path, "TIFF")


def _folder(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.mkdir()


@dataclass(frozen=True)
class FrameCase:
    name: str
    make: Callable[[Path], None]
    reason: str  # regex the error message must match
    accepted: bool = False


FRAME_CASES = [
    FrameCase("missing", _missing, r"not found|does not exist|no such"),
    FrameCase("empty", _empty, r"empty"),
    FrameCase("truncated", _truncated, r"truncat|decod|corrupt|broken|incomplete"),
    FrameCase("not_an_image", _not_an_image, r"not an image|not a recogni|unknown|format|identify"),
    FrameCase("animated_png", _animated, r"animat|frames"),
    FrameCase("animated_gif", _animated_gif, r"animat|frames|GIF|format"),
    FrameCase("cmyk", _cmyk, r"CMYK|colou?r|mode"),
    FrameCase("png16", _png16, r"16|bit|depth|mode"),
    FrameCase("rgb48", _rgb48_png, r"16|bit|depth|mode"),
    FrameCase("tiny", _tiny, r"16|small|240|at least|too"),
    FrameCase("huge", _huge, r"8100|8000|large|at most|too"),
    FrameCase("tiff", _wrong_extension, r"TIFF|format"),
    FrameCase("folder", _folder, r"folder|directory"),
    FrameCase("alpha", _alpha, r"alpha channel.*save it without transparency"),
]


# ---------------------------------------------------------------------- manifest cases


@dataclass(frozen=True)
class CellCase:
    """A bad value in one column of an otherwise good row."""

    column: str
    value: str
    reason: str = r".+"
    also: tuple[tuple[str, str], ...] = ()  # other cells of the row (e.g. its model)


_WAN27 = (("model", "wan2.7-i2v"),)

CELL_CASES = [
    CellCase("seed", "-3", r"integer|0\.\."),
    CellCase("seed", "abc", r"integer"),
    CellCase("seed", "1e3", r"integer"),
    CellCase("seed", "2147483648", r"integer|2147483647"),
    CellCase("seed", "7.5", r"integer"),
    CellCase("model", "wan9-kf2v-ultra", r"model|one of|unknown"),
    CellCase("resolution", "4K", r"resolution|one of|480P"),
    CellCase(
        "resolution", "1080P", r"model|resolution|not|support"
    ),  # flash has no 1080P? checked below
    CellCase("output", "../escape.mp4", r"\.\.|outside|parent|escape"),
    CellCase("output", "/etc/passwd.mp4", r"absolute|outside|relative"),
    CellCase("output", "a/../../b.mp4", r"\.\.|outside|parent|escape"),
    CellCase("output", ".kf2v/ledger/x.mp4", r"reserved|\.kf2v"),
    CellCase(
        "output", "C:\\\\win\\\\x.mp4", r"absolute|drive|outside|backslash|relative|character"
    ),
    CellCase("output", "file:///etc/x.mp4", r"URL|scheme|absolute|relative|outside"),
    CellCase("output", "x\x00.mp4", r"character|NUL|control|invalid"),
    CellCase("prompt", "x" * 100_001, r"long|characters|100"),
    CellCase("id", "has space", r"id|character|letters"),
    CellCase("duration", "8", r"8 s is not available for wan2.2-kf2v-flash.*always 5 s"),
    CellCase("duration", "five", r"whole number of seconds"),
    CellCase("audio", "voice.wav", r"wan2.2-kf2v-flash takes no driving audio"),
    CellCase("duration", "16", r"16 s is not available for wan2.7-i2v.*2\.\.15", _WAN27),
    CellCase("duration", "1", r"1 s is not available for wan2.7-i2v", _WAN27),
    CellCase("resolution", "480P", r"480P is not available for wan2.7-i2v", _WAN27),
    CellCase("first_frame", "", r"empty|required|missing"),
    CellCase("last_frame", "   ", r"empty|required|missing"),
]


def _csv(rows: list[dict], header: list[str] = HEADER) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in header})
    return buf.getvalue()


def _good_row(i: int, folder: Path) -> dict:
    a, b = folder / f"g{i}_a.png", folder / f"g{i}_b.png"
    if not a.exists():
        good_png(a, 2 * i + 100)
        good_png(b, 2 * i + 101)
    return {"id": f"good{i}", "first_frame": a.name, "last_frame": b.name, "prompt": f"good {i}"}


async def _plan(manifest: Path, out: Path, **kw):
    # Plain planning, no Prefect: what `kf2v validate` and the batch flow both run first.
    return await plan_batch(str(manifest), str(out), **kw)


def _line_numbers(text: str) -> list[int]:
    """Line number each data record starts on (the parser's row numbering)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    starts, prev_end = [], 0
    for _ in reader:  # line_num is the line that *ends* the record
        starts.append(prev_end + 1)
        prev_end = reader.line_num
    return starts[1:]


def _assert_row_error(result, row: int, column: Optional[str], reason: str) -> None:
    msg = result.error_message or ""
    assert result.status.value == "invalid", result
    assert result.row == row, (result.row, row, msg)
    assert msg.startswith(f"row {row}"), msg
    if column:
        assert f"'{column}'" in msg, f"column {column!r} not named in: {msg}"
    assert re.search(reason, msg, re.IGNORECASE), f"reason /{reason}/ not in: {msg}"


# --------------------------------------------------------------- property-based tests


@settings(
    max_examples=18,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(
    case=st.sampled_from(CELL_CASES),
    position=st.integers(0, 2),
    good=st.integers(1, 3),
    extra_columns=st.lists(
        st.sampled_from(["notes", "Camera", " extra "]), max_size=2, unique=True
    ),
    bom=st.sampled_from(["", "utf-8-sig", "utf-16"]),
    newline_in_prompt=st.booleans(),
)
async def test_bad_cell_is_a_row_error_naming_row_column_reason(
    tmp_path_factory, case, position, good, extra_columns, bom, newline_in_prompt
) -> None:
    folder = tmp_path_factory.mktemp("cells")
    rows = [_good_row(i, folder) for i in range(good)]
    if newline_in_prompt:
        rows[0]["prompt"] = 'line one\n"quoted" line two,\nthree'
    bad = dict(_good_row(99, folder), id="bad")
    bad.update(case.also)
    bad[case.column] = case.value
    position = min(position, len(rows))
    rows.insert(position, bad)
    header = HEADER + [c for c in extra_columns if c.strip().lower() not in HEADER]
    text = _csv(rows, header)
    path = folder / "m.csv"
    path.write_bytes(text.encode(bom) if bom else text.encode("utf-8"))

    # Columns of the user's own are refused unless asked for (see test_manifest).
    plan = await _plan(path, folder / "out", extra_columns=bool(extra_columns))

    bad_line = _line_numbers(text)[position]
    is_flash_1080 = case.column == "resolution" and case.value == "1080P"
    if is_flash_1080 and not plan.invalid:
        # wan2.2-kf2v-flash may accept 1080P; then it is not bad input at all.
        assert len(plan.runnable) == len(rows)
        return
    assert [r.id for r in plan.runnable] == [r["id"] for r in rows if r is not bad]
    assert len(plan.invalid) == 1, [r.error_message for r in plan.invalid]
    _assert_row_error(plan.invalid[0], bad_line, case.column, case.reason)


@settings(
    max_examples=16,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(
    case=st.sampled_from(FRAME_CASES),
    role=st.sampled_from(["first_frame", "last_frame"]),
    position=st.integers(0, 2),
)
async def test_bad_frame_is_a_row_error_naming_row_column_reason(
    tmp_path_factory, case, role, position
) -> None:
    folder = tmp_path_factory.mktemp("frames")
    rows = [_good_row(i, folder) for i in range(2)]
    bad = dict(_good_row(99, folder), id="bad")
    target = folder / f"bad_{case.name}.png"
    good_png(target, 7)
    case.make(target)
    bad[role] = target.name
    position = min(position, len(rows))
    rows.insert(position, bad)
    text = _csv(rows)
    path = folder / "m.csv"
    path.write_text(text, encoding="utf-8")

    plan = await _plan(path, folder / "out")

    if case.accepted:
        assert not plan.invalid, [r.error_message for r in plan.invalid]
        pair = plan.frames["bad"]
        assert any(re.search(case.reason, w, re.IGNORECASE) for w in pair.warnings), pair.warnings
        return
    assert [r.id for r in plan.runnable] == [r["id"] for r in rows if r is not bad]
    assert len(plan.invalid) == 1, [r.error_message for r in plan.invalid]
    _assert_row_error(plan.invalid[0], _line_numbers(text)[position], role, case.reason)


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    ids=st.lists(st.sampled_from(["a", "b", "A", "c"]), min_size=2, max_size=5),
)
async def test_every_row_of_a_duplicate_id_is_a_row_error(tmp_path_factory, ids) -> None:
    folder = tmp_path_factory.mktemp("dups")
    rows = [dict(_good_row(i, folder), id=x) for i, x in enumerate(ids)]
    text = _csv(rows)
    (folder / "m.csv").write_text(text)
    plan = await _plan(folder / "m.csv", folder / "out")
    lines = _line_numbers(text)
    # Ids name the output files, so "a" and "A" collide (case-insensitive filesystems); and
    # none of the rows sharing one is run: which one the user meant is anybody's guess.
    shared = {x.lower() for x in ids if [y.lower() for y in ids].count(x.lower()) > 1}
    expected_bad = [line for line, x in zip(lines, ids, strict=True) if x.lower() in shared]
    assert sorted({r.row for r in plan.invalid}) == expected_bad, [
        r.error_message for r in plan.invalid
    ]
    key = {line: x.lower() for line, x in zip(lines, ids, strict=True)}
    for r in plan.invalid:
        _assert_row_error(r, r.row, "id", r"is also used by rows? \d")
        others = [n for n in lines if n != r.row and key[n] == key[r.row]]
        named = r.error_message.split("also used by ")[1]
        assert any(f"{n}" in named for n in others), r.error_message
    assert [r.id for r in plan.runnable] == [x for x in ids if x.lower() not in shared]


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    drop=st.sampled_from(["first_frame", "last_frame"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]),
)
async def test_missing_required_column_is_a_clear_file_error(tmp_path_factory, drop, encoding):
    """A missing required column makes every row unusable: one clear error naming the
    header row and the column, and nothing is validated or submitted."""
    folder = tmp_path_factory.mktemp("cols")
    rows = [_good_row(i, folder) for i in range(2)]
    text = _csv(rows, [c for c in HEADER if c != drop])
    (folder / "m.csv").write_bytes(text.encode(encoding))
    with pytest.raises(ManifestFileError) as info:
        await _plan(folder / "m.csv", folder / "out")
    assert info.value.line == 1 and drop in str(info.value)


async def test_non_utf8_manifest_is_a_clear_file_error(tmp_path: Path) -> None:
    folder = tmp_path
    rows = [_good_row(0, folder)]
    rows[0]["prompt"] = "café crème"
    (folder / "m.csv").write_bytes(_csv(rows).encode("latin-1"))
    with pytest.raises(ManifestFileError) as info:
        await _plan(folder / "m.csv", folder / "out")
    assert info.value.line == 2 and "UTF-8" in str(info.value)


async def test_short_and_long_rows_are_row_errors(tmp_path: Path) -> None:
    folder = tmp_path
    good = _good_row(0, folder)
    text = (
        _csv([good])
        + "short-row-only-one-cell\n"
        + _csv([dict(good, id="x")]).splitlines()[1]
        + ",extra,cells\n"
    )
    (folder / "m.csv").write_text(text)
    plan = await _plan(folder / "m.csv", folder / "out")
    assert [r.id for r in plan.runnable] == ["good0"]
    assert sorted({r.row for r in plan.invalid}) == [3, 4], [r.error_message for r in plan.invalid]
    for r in plan.invalid:
        assert r.error_message.startswith(f"row {r.row}"), r.error_message


async def test_duration_and_audio_cells_are_checked_against_each_rows_model(
    tmp_path: Path,
) -> None:
    # Every new bad cell in one manifest, deterministically (the property test samples).
    new = [c for c in CELL_CASES if c.column in ("duration", "audio") or c.also]
    rows = [_good_row(0, tmp_path)]
    for k, case in enumerate(new):
        row = dict(_good_row(0, tmp_path), id=f"new{k}")
        row.update(case.also)
        row[case.column] = case.value
        rows.append(row)
    text = _csv(rows)
    (tmp_path / "m.csv").write_text(text)
    plan = await _plan(tmp_path / "m.csv", tmp_path / "out")
    assert [r.id for r in plan.runnable] == ["good0"]
    lines = _line_numbers(text)
    assert len(plan.invalid) == len(new)
    for k, case in enumerate(new):
        _assert_row_error(plan.invalid[k], lines[k + 1], case.column, case.reason)


# ---------------------------------------------------------- one real batch, zero creates


@pytest.mark.slow
async def test_batch_with_a_catalogue_of_bad_rows_creates_nothing_for_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_dataset(data, 0)
    frames = data / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = [_good_row(i, frames) for i in range(3)]
    for r in rows:
        r["first_frame"], r["last_frame"] = (
            f"frames/{r['first_frame']}",
            f"frames/{r['last_frame']}",
        )
    bad_ids: list[str] = []
    for case in FRAME_CASES:
        p = frames / f"cat_{case.name}.png"
        good_png(p, 50)
        case.make(p)
        row = dict(_good_row(200 + len(rows), frames), id=f"frame-{case.name}")
        row["first_frame"] = f"frames/{row['first_frame']}"
        row["last_frame"] = f"frames/{p.name}"
        rows.append(row)
        if not case.accepted:
            bad_ids.append(row["id"])
    for k, case in enumerate(CELL_CASES):
        if case.column == "resolution" and case.value == "1080P":
            continue
        row = dict(_good_row(300 + k, frames), id=f"cell{k}")
        row["first_frame"], row["last_frame"] = (
            f"frames/{row['first_frame']}",
            f"frames/{row['last_frame']}",
        )
        row.update(case.also)
        row[case.column] = case.value
        if case.column == "id":
            bad_ids.append(case.value)
        else:
            bad_ids.append(row["id"])
        rows.append(row)
    rows.append(dict(rows[0], id="good0"))  # duplicate id
    manifest = data / "bad.csv"
    manifest.write_text(_csv(rows), encoding="utf-8")

    cfg = SimulatorConfig(
        speed=600.0,
        max_concurrent=4,
        runtime=RuntimeDistribution(kind="fixed", low=60.0),
        render="tiny",
        seed=1,
        api_key=TEST_API_KEY,
    )
    with simulated_service(cfg) as sim:
        state = await run_batch(manifest, tmp_path / "out", max_in_flight=4)
        stats = sim.stats()

    results = read_results(tmp_path / "out")
    assert len(results) == len(rows)  # every row accounted for, the batch did not crash
    by_id: dict[str, list[dict]] = {}
    for r in results:
        by_id.setdefault(r["id"], []).append(r)
    good_ids = ["good1", "good2"]  # both rows with id good0 are invalid
    for gid in good_ids:
        assert by_id[gid][0]["status"] == "succeeded", by_id[gid]
    invalid = [r for r in results if r["status"] == "invalid"]
    assert len(invalid) == len(rows) - len(good_ids), [
        (r["id"], r["status"], r["error_message"]) for r in results if r["status"] != "invalid"
    ]
    for r in invalid:
        assert r["error_code"] in ("InvalidRow", "InvalidFrame")
        assert r["error_message"].startswith(f"row {r['row']}")
        assert re.search(r"column '\w+'", r["error_message"]), r["error_message"]
    # Zero creates for the bad rows: the service saw exactly one create per good row.
    assert stats["creates"] == len(good_ids)
    assert stats["create_requests"] == len(good_ids)
    assert state.is_failed()  # invalid rows make the flow run say so


async def test_a_bad_frame_shared_by_a_chain_of_rows_names_each_row_and_its_column(tmp_path):
    # A storyboard chain: each row's last frame is the next row's first; frames are
    # read once per plan (FrameMemo), and the error still names each row's own column.
    for name, seed in (("k1.png", 1), ("k3.png", 3)):
        good_png(tmp_path / name, seed)
    _tiny(tmp_path / "k2.png")
    rows = [
        {"id": "a", "first_frame": "k1.png", "last_frame": "k2.png", "prompt": "one"},
        {"id": "b", "first_frame": "k2.png", "last_frame": "k3.png", "prompt": "two"},
        {"id": "c", "first_frame": "k1.png", "last_frame": "k3.png", "prompt": "three"},
    ]
    path = tmp_path / "m.csv"
    path.write_text(_csv(rows))
    plan = await _plan(path, tmp_path / "out")
    assert [r.id for r in plan.runnable] == ["c"]
    first, second = plan.invalid
    _assert_row_error(first, 2, "last_frame", r"k2\.png")
    _assert_row_error(second, 3, "first_frame", r"k2\.png")
    assert "last frame" in first.error_message and "first frame" in second.error_message
    assert first.error_message.rsplit("': ", 1)[1] == second.error_message.rsplit("': ", 1)[1]
