"""Manifest parsing: one test per rule, path resolution, and a fuzzing property."""

from __future__ import annotations

import csv
import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kf2v_tasks.batch.manifest import ParsedManifest, load_manifest, parse_manifest
from kf2v_tasks.batch.manifest_defaults import RowDefaults
from kf2v_tasks.batch.manifest_paths import manifest_base_dir, resolve_frame
from kf2v_tasks.batch.manifest_row import KNOWN_COLUMNS, ManifestRow, RowError
from kf2v_tasks.dashscope.models import Kf2vModel, Resolution
from kf2v_tasks.errors import ManifestError, ManifestFileError, PermanentError

HEADER = "id,first_frame,last_frame"


def parse(text: str | bytes, base_dir: str = "/data", **kw) -> ParsedManifest:
    return parse_manifest(text, source="m.csv", base_dir=base_dir, **kw)


def only_error(parsed: ParsedManifest) -> RowError:
    assert not parsed.rows, parsed.rows
    assert len(parsed.errors) == 1, [e.message() for e in parsed.errors]
    return parsed.errors[0]


def one_row(parsed: ParsedManifest) -> ManifestRow:
    assert not parsed.errors, [e.message() for e in parsed.errors]
    assert len(parsed.rows) == 1
    return parsed.rows[0]


# ----------------------------------------------------------------- basics, numbering


def test_minimal_row_uses_defaults_and_derived_id():
    row = one_row(parse("first_frame,last_frame\na.png,b.png\n"))
    assert row.row_number == 2
    assert row.id == "row-0002"
    assert row.output == "row-0002.mp4"
    assert (row.first_frame, row.last_frame) == ("/data/a.png", "/data/b.png")
    assert row.prompt is None and row.negative_prompt is None
    assert row.options.model == Kf2vModel.WAN22_FLASH == "wan2.2-kf2v-flash"
    assert row.options.resolution is Resolution.P720
    assert row.options.seed is None
    assert row.options.prompt_extend is True and row.options.watermark is False
    assert row.raw == {"first_frame": "a.png", "last_frame": "b.png"}


def test_all_columns_parsed():
    text = (
        "ID , First_Frame,LAST_FRAME,prompt,negative_prompt,model,resolution,seed,"
        "prompt_extend,watermark,output\n"
        "s1,a.png,b.png, a cat ,dogs,WAN2.1-KF2V-PLUS,720p,42,No,YES,clips/s1\n"
    )
    parsed = parse(text)
    row = one_row(parsed)
    assert parsed.columns[:3] == ["id", "first_frame", "last_frame"]
    assert row.id == "s1"
    assert row.prompt == "a cat" and row.negative_prompt == "dogs"
    assert row.options.model == Kf2vModel.WAN21_PLUS
    assert row.options.resolution is Resolution.P720
    assert row.options.seed == 42
    assert row.options.prompt_extend is False and row.options.watermark is True
    assert row.output == "clips/s1.mp4"


def test_row_numbers_are_file_lines_with_blank_lines_and_quoted_newlines():
    text = f'{HEADER},prompt\n\na,a.png,b.png,"two\nlines"\n\n\nb,c.png,d.png,x\nc,,d.png,\n'
    parsed = parse(text)
    assert [(r.id, r.row_number) for r in parsed.rows] == [("a", 3), ("b", 7)]
    assert parsed.rows[0].prompt == "two\nlines"
    err = only_error(ParsedManifest(source="", errors=parsed.errors))
    assert err.row_number == 8 and err.column == "first_frame" and err.id == "c"
    assert parsed.total == 3
    assert parsed.invalid_row_numbers == [8]


def test_rows_of_empty_cells_are_skipped():
    parsed = parse(f"{HEADER}\n,,\n  , ,\na,a.png,b.png\n")
    assert [r.row_number for r in parsed.rows] == [4]
    assert parsed.total == 1


def test_defaults_apply_to_empty_cells():
    defaults = RowDefaults(
        prompt="p",
        negative_prompt="n",
        resolution="480P",
        seed=9,
        prompt_extend=False,
        watermark=True,
    )
    row = one_row(parse(f"{HEADER},seed,prompt\na,a.png,b.png,,\n", defaults=defaults))
    assert (row.prompt, row.negative_prompt) == ("p", "n")
    assert row.options.resolution is Resolution.P480 and row.options.seed == 9
    assert row.options.prompt_extend is False and row.options.watermark is True
    # and a cell overrides its default
    row = one_row(parse(f"{HEADER},seed\na,a.png,b.png,0\n", defaults=defaults))
    assert row.options.seed == 0


def test_row_defaults_reject_inconsistent_model_and_resolution():
    with pytest.raises(ValueError, match="not available"):
        RowDefaults(model="wanx2.1-kf2v-plus", resolution="1080P")
    for name, field in RowDefaults.model_fields.items():
        assert field.description and field.description.endswith("."), name


# ----------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    "data",
    [
        b"first_frame,last_frame\na.png,b.png\n",
        "\ufefffirst_frame,last_frame\na.png,b.png\n".encode(),  # UTF-8 BOM
        "first_frame,last_frame\r\na.png,b.png\r\n".encode("utf-16"),  # BOM included
        "first_frame,last_frame\na.png,b.png\n".encode("utf-16-be").join([b"\xfe\xff", b""]),
        "\ufefffirst_frame,last_frame\na.png,b.png\n",  # str with a BOM
    ],
)
def test_encodings(data):
    row = one_row(parse(data))
    assert row.first_frame == "/data/a.png"


def test_non_utf8_is_a_file_level_error_with_line():
    data = "first_frame,last_frame\na.png,é.png\n".encode("latin-1")
    with pytest.raises(ManifestFileError, match="not UTF-8") as info:
        parse(data)
    assert info.value.line == 2
    assert str(info.value).startswith("manifest m.csv: line 2 is not UTF-8 text (byte 0xe9")


def test_semicolon_separated_export_is_understood():
    row = one_row(parse("first_frame;last_frame;seed\na.png;b.png;5\n"))
    assert row.options.seed == 5


# ----------------------------------------------------------------- header


def test_missing_required_columns():
    with pytest.raises(ManifestFileError) as info:
        parse("id,first_frame,prompt\na,b,c\n")
    assert info.value.line == 1
    assert str(info.value) == (
        "manifest m.csv: line 1 (header): missing required column(s) last_frame "
        "(header has: 'id', 'first_frame', 'prompt')"
    )


def test_empty_manifest():
    for text in ("", "\n\n  \n", b""):
        with pytest.raises(ManifestFileError, match="^manifest m.csv: is empty"):
            parse(text)


def test_duplicate_header_column():
    with pytest.raises(ManifestFileError, match="column 'seed' appears more than once") as info:
        parse("first_frame,last_frame,Seed,seed\n")
    assert info.value.line == 1


def test_unknown_column_is_refused_with_a_did_you_mean():
    with pytest.raises(ManifestFileError) as info:
        parse("first_frame,last_frame,promt\na.png,b.png,a slow pan\n")
    message = str(info.value)
    assert message.startswith("manifest m.csv: line 1 (header): unknown column 'promt' ")
    assert "(did you mean 'prompt'?)" in message and "--extra-columns" in message
    assert "\n" not in message and info.value.line == 1


def test_every_unknown_column_is_named_in_one_line():
    with pytest.raises(ManifestFileError) as info:
        parse("first_frame,last_frame,Negative Prompt,colour,Seeds\n")
    message = str(info.value)
    assert (
        "unknown columns 'negative prompt' (did you mean 'negative_prompt'?), 'colour', "
        "'seeds' (did you mean 'seed'?); known: id, first_frame, " in message
    )


def test_duration_and_audio_are_columns_refused_row_by_row_on_kf2v():
    text = (
        "id,first_frame,last_frame,model,duration,audio\n"
        "k5,a.png,b.png,wan2.2-kf2v-flash,5,\n"
        "k8,a.png,b.png,wan2.2-kf2v-flash,8,\n"
        "ka,a.png,b.png,wan2.2-kf2v-flash,,voice.wav\n"
        "w8,a.png,b.png,wan2.7-i2v,8,voice.mp3\n"
        "w16,a.png,b.png,wan2.7-i2v,16,\n"
        "wx,a.png,b.png,wan2.7-i2v,eight,\n"
    )
    parsed = parse(text)
    assert [r.id for r in parsed.rows] == ["k5", "w8"]
    k5, w8 = parsed.rows
    assert k5.options.duration == 5 and k5.audio is None
    assert w8.options.duration == 8 and w8.audio == "/data/voice.mp3"
    messages = [e.message() for e in parsed.errors]
    assert messages == [
        "row 3, column 'duration': duration 8 s is not available for wan2.2-kf2v-flash "
        "(its videos are always 5 s long)",
        "row 4, column 'audio': wan2.2-kf2v-flash takes no driving audio "
        "(models that do: wan2.7-i2v)",
        "row 6, column 'duration': duration 16 s is not available for wan2.7-i2v "
        "(allowed: 2..15 s)",
        "row 7, column 'duration': 'eight' is not a whole number of seconds",
    ]


def test_default_duration_follows_the_model_and_is_checked_against_it():
    text = "id,first_frame,last_frame,model\nk,a.png,b.png,wan2.2-kf2v-flash\nw,a.png,b.png,wan2.7-i2v\n"
    plain = parse(text)
    assert [r.options.duration for r in plain.rows] == [5, 5]
    # A default of 10 s fits wan2.7 rows; on a kf2v row the blame goes to its model cell.
    ten = parse(text, defaults=RowDefaults(model="wan2.7-i2v", duration=10))
    assert [r.options.duration for r in ten.rows] == [10]
    [err] = ten.errors
    assert err.message() == (
        "row 2, column 'model': duration 10 s (the default) is not available for "
        "wan2.2-kf2v-flash (its videos are always 5 s long)"
    )
    with pytest.raises(ValueError, match="default duration 10 s is not available"):
        RowDefaults(duration=10)


def test_dated_variant_and_resolution_of_media_model():
    text = (
        "id,first_frame,last_frame,model,resolution\n"
        "d,a.png,b.png,wan2.7-i2v-2026-04-25,1080P\n"
        "r,a.png,b.png,wan2.7-i2v,480P\n"
        "u,a.png,b.png,wan3-i2v,\n"
    )
    parsed = parse(text)
    assert [r.options.model for r in parsed.rows] == ["wan2.7-i2v-2026-04-25"]
    msgs = [e.message() for e in parsed.errors]
    assert msgs[0] == (
        "row 3, column 'resolution': resolution 480P is not available for wan2.7-i2v "
        "(allowed: 1080P, 720P)"
    )
    assert msgs[1].startswith("row 4, column 'model': 'wan3-i2v' is not a known model (one of:")


def test_extra_columns_are_kept_per_row_in_manifest_order():
    text = "Job ID,first_frame,last_frame,seed,notes,\nj1,a.png,b.png,x,hi,\nj2,c.png,d.png\n"
    parsed = parse(text, extra_columns=True)
    assert parsed.extra_columns == ["Job ID", "notes"]
    # Every row, valid or not, carries its own cells (a short row: empty ones).
    assert parsed.extras == {2: {"Job ID": "j1", "notes": "hi"}, 3: {"Job ID": "j2", "notes": ""}}
    assert [e.row_number for e in parsed.errors] == [2] and parsed.rows[0].row_number == 3
    assert any("empty header name" in w for w in parsed.warnings)


def test_extra_columns_may_not_reuse_a_results_column_and_typos_warn():
    with pytest.raises(ManifestFileError, match="'status' cannot be carried into results.csv"):
        parse("first_frame,last_frame,status\n", extra_columns=True)
    parsed = parse("first_frame,last_frame,promt\na,b,x\n", extra_columns=True)
    assert any("'promt'" in w and "'prompt'" in w for w in parsed.warnings)
    assert parsed.rows[0].prompt is None


def test_extra_columns_may_name_the_columns_to_accept():
    text = "first_frame,last_frame,Sequence,Job ID\na.png,b.png,day,j1\n"
    parsed = parse(text, extra_columns=["sequence", " job id "])  # as the header, any case
    assert parsed.extra_columns == ["Sequence", "Job ID"]
    assert parsed.extras == {2: {"Sequence": "day", "Job ID": "j1"}}
    assert not parsed.warnings and parsed.rows[0].first_frame == "/data/a.png"
    # A listed column may be absent: it is accepted, not required.
    assert parse("first_frame,last_frame\na,b\n", extra_columns=["sequence"]).extras == {}


def test_a_column_the_list_does_not_name_is_refused_with_its_hint():
    with pytest.raises(ManifestFileError) as info:
        parse("first_frame,last_frame,sequence,promt,colour\n", extra_columns=["sequence"])
    message = str(info.value)
    assert message.startswith(
        "manifest m.csv: line 1 (header): unknown columns 'promt' (did you mean 'prompt'?), "
        "'colour'; known: id, first_frame, "
    )
    assert message.endswith("add them to extra_columns (it names 'sequence')")
    assert info.value.line == 1 and "\n" not in message
    # A near miss of a listed column is hinted too.
    with pytest.raises(ManifestFileError, match="'sequense' \\(did you mean 'sequence'\\?\\)"):
        parse("first_frame,last_frame,sequense\n", extra_columns=["sequence"])
    # An empty list is the same as False, with its own hint.
    with pytest.raises(ManifestFileError, match="it names none"):
        parse("first_frame,last_frame,notes\n", extra_columns=[])


def test_extra_columns_lists_only_columns_of_ones_own():
    with pytest.raises(ValueError, match="'Prompt' is a column the plugin reads itself"):
        parse("first_frame,last_frame\n", extra_columns=["Prompt"])
    with pytest.raises(ValueError, match="'' is not a column name"):
        parse("first_frame,last_frame\n", extra_columns=[""])
    with pytest.raises(ValueError, match="expected True, False or a list"):
        parse("first_frame,last_frame\n", extra_columns="sequence")
    with pytest.raises(ManifestFileError, match="'status' cannot be carried into results.csv"):
        parse("first_frame,last_frame,status\n", extra_columns=["status"])


def test_header_only_gives_no_rows():
    parsed = parse("first_frame,last_frame\n")
    assert parsed.rows == [] and parsed.errors == [] and parsed.total == 0


def test_unclosed_quote_is_a_file_level_error():
    with pytest.raises(ManifestFileError, match="line 3: malformed CSV") as info:
        parse(f'{HEADER}\na,a.png,b.png\nb,"c.png,d.png\ne,f,g\n')
    assert info.value.line == 3


def test_cell_over_the_csv_field_limit_is_a_file_level_error():
    with pytest.raises(ManifestFileError, match="field larger than field limit") as info:
        parse(f"{HEADER},prompt\na,a.png,b.png,{'x' * 200_000}\n")
    assert info.value.line == 2


# ----------------------------------------------------------------- cells


def test_too_many_cells():
    err = only_error(parse(f"{HEADER},prompt\na,a.png,b.png,a cat, sitting\n"))
    assert err.column is None
    assert err.reason.startswith("row has 5 cells but the header has 4")


def test_trailing_empty_cells_are_padding_and_short_rows_are_fine():
    parsed = parse(f"{HEADER},seed\na,a.png,b.png,1,,\nb,c.png,d.png\n")
    assert [r.id for r in parsed.rows] == ["a", "b"]


def test_empty_frames():
    parsed = parse(f"{HEADER}\na, ,\n")
    assert [(e.column, e.row_number) for e in parsed.errors] == [
        ("first_frame", 2),
        ("last_frame", 2),
    ]
    assert not parsed.rows


def test_frame_with_control_character():
    err = only_error(parse(f"{HEADER}\na,a\x00.png,b.png\n"))
    assert err.column == "first_frame" and "control character" in err.reason


@pytest.mark.parametrize(
    "seed", ["-3", "1.5", "abc", "2147483648", "+5", "1_000", "５", "9" * 5000]
)
def test_bad_seed(seed):
    err = only_error(parse(f"{HEADER},seed\na,a.png,b.png,{seed}\n"))
    assert err.column == "seed"
    assert err.reason.endswith("is not an integer in 0..2147483647")
    assert len(err.reason) < 120  # huge cells are shortened


def test_seed_message_format():
    err = only_error(parse(f"{HEADER},seed\n\n\n\n\n\nx,a.png,b.png,-3\n"))
    assert err.message() == "row 7, column 'seed': '-3' is not an integer in 0..2147483647"


@pytest.mark.parametrize("seed,value", [("0", 0), ("2147483647", 2147483647), (" 12 ", 12)])
def test_good_seed(seed, value):
    assert one_row(parse(f"{HEADER},seed\na,a.png,b.png,{seed}\n")).options.seed == value


def test_bad_model_lists_the_models():
    err = only_error(parse(f"{HEADER},model\na,a.png,b.png,wan3-kf2v\n"))
    assert err.column == "model"
    for m in Kf2vModel:
        assert m.value in err.reason


def test_bad_resolution():
    err = only_error(parse(f"{HEADER},resolution\na,a.png,b.png,4K\n"))
    assert err.column == "resolution" and "480P, 720P, 1080P" in err.reason


def test_resolution_not_allowed_for_model():
    err = only_error(parse(f"{HEADER},model,resolution\na,a.png,b.png,wanx2.1-kf2v-plus,1080P\n"))
    assert err.column == "resolution"
    assert err.reason == ("resolution 1080P is not available for wanx2.1-kf2v-plus (allowed: 720P)")


def test_model_that_does_not_take_the_default_resolution_blames_the_model_cell():
    err = only_error(
        parse(
            f"{HEADER},model\na,a.png,b.png,wan2.1-kf2v-plus\n",
            defaults=RowDefaults(resolution="480P"),
        )
    )
    assert err.column == "model" and "(the default)" in err.reason


@pytest.mark.parametrize("word,value", [("TRUE", True), ("yes", True), ("1", True), ("No", False)])
def test_booleans(word, value):
    row = one_row(parse(f"{HEADER},prompt_extend,watermark\na,a.png,b.png,{word},{word}\n"))
    assert row.options.prompt_extend is value and row.options.watermark is value


def test_bad_boolean():
    err = only_error(parse(f"{HEADER},watermark\na,a.png,b.png,maybe\n"))
    assert err.column == "watermark" and "true/false" in err.reason


def test_long_prompts_warn_and_absurd_prompts_fail():
    parsed = parse(f"{HEADER},prompt,negative_prompt\na,a.png,b.png,{'p' * 801},{'n' * 501}\n")
    row = one_row(parsed)
    assert len(row.prompt) == 801
    assert len(row.warnings) == 2
    assert any(w.startswith("row 2: prompt has 801 characters") for w in parsed.warnings)
    assert any("negative_prompt has 501" in w for w in parsed.warnings)
    err = only_error(parse(f"{HEADER},prompt\na,a.png,b.png,{'p' * 100_001}\n"))
    assert err.column == "prompt" and "100001 characters" in err.reason


def test_long_default_prompt_warns_per_row():
    parsed = parse(f"{HEADER}\na,a,b\n", defaults=RowDefaults(prompt="p" * 900))
    assert one_row(parsed).prompt == "p" * 900
    assert parsed.warnings == [
        "row 2: prompt has 900 characters; the service keeps the first 800 "
        "and silently drops the rest"
    ]


def test_all_errors_of_a_row_are_collected():
    text = f"{HEADER},seed,model,watermark,output\nbad id,,b.png,x,y,z,../o\n"
    parsed = parse(text)
    assert {e.column for e in parsed.errors} == {
        "id",
        "first_frame",
        "seed",
        "model",
        "watermark",
        "output",
    }
    assert all(e.row_number == 2 for e in parsed.errors)


# ----------------------------------------------------------------- ids


@pytest.mark.parametrize(
    "value,fragment",
    [
        ("a b", "' ' at position 2"),
        ("shot/1", "'/' at position 5"),
        ("é", "'é' at position 1"),
        ("x" * 129, "129 characters"),
    ],
)
def test_bad_ids(value, fragment):
    err = only_error(parse(f"{HEADER}\n{value},a.png,b.png\n"))
    assert err.column == "id" and fragment in err.reason and err.id is None


def test_every_row_of_a_duplicate_id_is_invalid():
    parsed = parse(f"{HEADER}\nx,a,b\ny,a,b\nx,a,b\nx,a,b\n")
    assert [r.row_number for r in parsed.rows] == [3]
    assert [e.message() for e in parsed.errors] == [
        "row 2, column 'id': 'x' is also used by rows 4, 5",
        "row 4, column 'id': 'x' is also used by rows 2, 5",
        "row 5, column 'id': 'x' is also used by rows 2, 4",
    ]
    assert {e.id for e in parsed.errors} == {"x"}


def test_explicit_id_colliding_with_derived_id():
    parsed = parse(f"{HEADER}\n,a,b\nrow-0002,a,b\n")
    assert not parsed.rows
    assert [e.message() for e in parsed.errors] == [
        "row 2, column 'id': derived id 'row-0002' is also used by row 3",
        "row 3, column 'id': 'row-0002' is also used by row 2",
    ]


def test_invalid_row_still_claims_its_id():
    parsed = parse(f"{HEADER},seed\nx,a,b,bad\nx,a,b,1\n")
    assert not parsed.rows
    assert [(e.row_number, e.column) for e in parsed.errors] == [(2, "seed"), (2, "id"), (3, "id")]


# ----------------------------------------------------------------- outputs


@pytest.mark.parametrize(
    "value,expected",
    [
        ("clip", "clip.mp4"),
        ("clip.MP4", "clip.MP4"),
        ("a/b/clip.mp4", "a/b/clip.mp4"),
        ("./a//clip", "a/clip.mp4"),
        ("v1.2", None),  # has an extension that is not .mp4
    ],
)
def test_output_names(value, expected):
    parsed = parse(f"{HEADER},output\na,a.png,b.png,{value}\n")
    if expected is None:
        assert "must end in .mp4" in only_error(parsed).reason
    else:
        assert one_row(parsed).output == expected


@pytest.mark.parametrize(
    "value,fragment",
    [
        ("../x.mp4", "'..'"),
        ("a/../../x.mp4", "'..'"),
        ("/etc/x.mp4", "absolute"),
        ("C:/x.mp4", "':'"),
        ("s3://b/x.mp4", "':'"),
        ("a\\x.mp4", "backslash"),
        ("a\x00.mp4", "control character"),
        ("dir/", "folder"),
        ("x.mov", ".mp4"),
        (".", "not a file name"),
        (".kf2v/ledger", "reserved"),
        ("./.kf2v/x.mp4", "reserved"),
        ("~/x.mp4", "'~'"),
    ],
)
def test_output_must_stay_inside_the_root(value, fragment):
    err = only_error(parse(f'{HEADER},output\na,a.png,b.png,"{value}"\n'))
    assert err.column == "output" and fragment in err.reason


def test_outputs_must_be_unique_case_insensitively():
    parsed = parse(f"{HEADER},output\na,a,b,clip\nb,a,b,CLIP.mp4\nc,a,b,\nd,a,b,c\n")
    assert not parsed.rows  # every row of a shared output name: none is paid for
    assert [(e.row_number, e.column) for e in parsed.errors] == [
        (2, "output"), (3, "output"), (4, "id"), (5, "output"),
    ]  # fmt: skip
    assert parsed.errors[1].reason == (
        "output 'CLIP.mp4' is also used by row 2 (as 'clip.mp4'; names that differ only in "
        "case are one file on some systems)"
    )
    assert parsed.errors[3].reason == "output 'c.mp4' is also used by row 4"


# ----------------------------------------------------------------- path resolution


def test_relative_paths_resolve_against_an_s3_manifest_folder():
    base = manifest_base_dir("s3://bucket/dir/manifest.csv")
    assert base == "s3://bucket/dir/"
    text = (
        f"{HEADER}\n"
        "a,frames/a.png,../other/b.png\n"
        "b,/abs/a.png,https://example.com/b.png?x=1\n"
        "c,file:///tmp/a.png,s3://elsewhere/b.png\n"
        "d,gs://g/a.png,data:image/png;base64,AAAA\n"
    )
    # the data: URI contains a comma, so quote it the way a CSV writer would
    text = text.replace("data:image/png;base64,AAAA", '"data:image/png;base64,AAAA"')
    rows = {r.id: r for r in parse(text, base_dir=base).rows}
    assert rows["a"].first_frame == "s3://bucket/dir/frames/a.png"
    assert rows["a"].last_frame == "s3://bucket/other/b.png"
    assert rows["b"].first_frame == "/abs/a.png"
    assert rows["b"].last_frame == "https://example.com/b.png?x=1"
    assert rows["c"].first_frame == "file:///tmp/a.png"
    assert rows["c"].last_frame == "s3://elsewhere/b.png"
    assert rows["d"].first_frame == "gs://g/a.png"
    assert rows["d"].last_frame == "data:image/png;base64,AAAA"


def test_resolve_frame_edge_cases():
    assert resolve_frame("../../../x.png", "s3://b/dir/") == "s3://b/x.png"  # stays in bucket
    assert resolve_frame("x.png", "https://h/a/") == "https://h/a/x.png"
    assert resolve_frame("x.png", "https://h/a") == "https://h/a/x.png"
    assert resolve_frame("x.png", "") == "x.png"
    assert resolve_frame("x.png", "file:///tmp/m/") == "file:///tmp/m/x.png"
    assert resolve_frame("~/x.png", "/data") == os.path.expanduser("~/x.png")
    assert resolve_frame("C:\\x.png", "/data") == "C:\\x.png"
    assert resolve_frame("x.png", "simplecache::s3://b/d/") == "simplecache::s3://b/d/x.png"
    assert manifest_base_dir("https://h/a/m.csv?sig=1/2") == "https://h/a/"
    assert manifest_base_dir("s3://bucket/m.csv") == "s3://bucket/"


async def test_load_manifest_from_a_local_folder(tmp_path):
    (tmp_path / "frames").mkdir()
    manifest = tmp_path / "batch.csv"
    manifest.write_text(f"{HEADER},seed\nshot,frames/a.png,../b.png,3\nbad,x,y,-1\n")
    parsed = await load_manifest(str(manifest), defaults=RowDefaults(resolution="480P"))
    row = one_row(ParsedManifest(source="", rows=parsed.rows))
    assert parsed.source == str(manifest)
    assert row.first_frame == os.path.join(str(tmp_path), "frames", "a.png")
    assert row.last_frame == os.path.join(os.path.dirname(str(tmp_path)), "b.png")
    assert row.options.resolution is Resolution.P480
    assert [e.column for e in parsed.errors] == ["seed"]


async def test_load_manifest_from_memory_fs():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/kf2v-test/dir/m.csv", f"{HEADER}\na,a.png,b.png\n".encode())
    try:
        parsed = await load_manifest("memory://kf2v-test/dir/m.csv")
    finally:
        fs.rm("/kf2v-test", recursive=True)
    assert parsed.rows[0].first_frame == "memory://kf2v-test/dir/a.png"


@pytest.mark.parametrize("text", ["first_frame,last_frame\n", "id,first_frame,last_frame\n\n,,\n"])
async def test_a_manifest_to_run_needs_a_row(tmp_path, text):
    # Parsing says "no rows"; loading one to run refuses it, so a run never writes an
    # empty results.csv and gallery over an output's earlier ones.
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(ManifestFileError, match="has a header but no rows: nothing to run"):
        await load_manifest(str(path))


async def test_load_manifest_missing_file(tmp_path):
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(ManifestFileError) as info:
        await load_manifest(missing)
    assert str(info.value) == f"manifest {missing}: no such file"
    assert info.value.path == missing and info.value.line is None


async def test_load_manifest_folder_and_unknown_protocol(tmp_path):
    with pytest.raises(ManifestFileError, match="is a folder, not a CSV file"):
        await load_manifest(str(tmp_path))
    with pytest.raises(ManifestFileError, match="^manifest nosuchproto://b/m.csv: cannot be read"):
        await load_manifest("nosuchproto://b/m.csv")


def test_manifest_file_error_is_permanent_hides_signatures_and_pickles():
    import pickle

    err = ManifestFileError("https://host/m.csv?X-Amz-Signature=s3cr3t", "no such file", line=4)
    assert isinstance(err, PermanentError) and isinstance(err, ValueError)
    assert not isinstance(err, ManifestError)  # row errors and file errors are told apart
    assert "s3cr3t" not in str(err) and str(err) == "manifest https://host/m.csv: no such file"
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.reason, again.line) == (str(err), "no such file", 4)


# ----------------------------------------------------------------- fuzzing


def _check(result: ParsedManifest) -> None:
    assert isinstance(result, ParsedManifest)
    for err in result.errors:
        assert err.row_number >= 1 and err.reason
        assert err.message().startswith(f"row {err.row_number}")
    valid = {r.row_number for r in result.rows}
    assert not valid & set(result.invalid_row_numbers)
    assert len({r.id for r in result.rows}) == len(result.rows)
    assert len({r.output.casefold() for r in result.rows}) == len(result.rows)
    for r in result.rows:
        assert r.output.endswith((".mp4", ".MP4", ".Mp4", ".mP4"))
        assert not r.output.startswith("/") and ".." not in r.output.split("/")
        assert "\\" not in r.output and ":" not in r.output


def _parse_or_manifest_error(data: str | bytes) -> None:
    try:
        result = parse_manifest(data, source="fuzz.csv", base_dir="s3://bucket/dir/")
    except ManifestFileError as exc:
        assert exc.reason and str(exc).startswith("manifest fuzz.csv: ")
        assert exc.line is None or exc.line >= 1
        return
    _check(result)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary()))
def test_fuzz_arbitrary_input(data):
    _parse_or_manifest_error(data)


_CELLS = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "a.png",
            "a.png",
            "b.png",
            "../x.png",
            "s3://b/k.png",
            "x",
            "x",
            "-3",
            "7",
            "2147483648",
            "1080P",
            "480p",
            "wanx2.1-kf2v-plus",
            "wan2.2-kf2v-flash",
            "yes",
            "maybe",
            "out/x",
            "../escape",
            "/abs.mp4",
            "C:\\x",
            "a\nb",
            'q"uote',
            "é",
            "p" * 900,
        ]
    ),
    st.text(max_size=20),
)


_GOOD = {
    "id": st.one_of(st.just(""), st.from_regex(r"[a-z0-9]{1,3}", fullmatch=True)),
    "first_frame": st.sampled_from(["a.png", "../x.png", "s3://b/k.png", "/abs/a.png"]),
    "last_frame": st.sampled_from(["b.png", "https://h/b.png"]),
    "prompt": st.one_of(st.just(""), st.text(max_size=30)),
    "negative_prompt": st.one_of(st.just(""), st.text(max_size=30)),
    "model": st.sampled_from(["", *(m.value for m in Kf2vModel)]),
    "resolution": st.sampled_from(["", "720P", "480p"]),
    "seed": st.one_of(st.just(""), st.integers(0, 2**31 - 1).map(str)),
    "prompt_extend": st.sampled_from(["", "true", "0", "No"]),
    "watermark": st.sampled_from(["", "false", "1", "YES"]),
    "output": st.sampled_from(["", "o/x", "clip", "clip.mp4", "a/./b"]),
}


def _norm(column: str) -> str:
    return column.strip().lower()


@st.composite
def manifests(draw) -> str | bytes:
    columns = draw(st.lists(st.sampled_from(KNOWN_COLUMNS), unique=True, max_size=11))
    if draw(st.integers(0, 9)) < 8:  # usually well-formed, sometimes not
        columns += [c for c in ("first_frame", "last_frame") if c not in columns]
    if draw(st.booleans()):
        columns.insert(draw(st.integers(0, len(columns))), draw(st.text(max_size=8)))
    columns = [draw(st.sampled_from([c, c.upper(), f" {c} "])) for c in columns]
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        # Mostly plausible cells for the column (so many rows are valid), some nasty ones.
        row = [
            draw(_GOOD.get(_norm(c), _CELLS) if draw(st.integers(0, 3)) else _CELLS)
            for c in columns
        ]
        rows.append(
            row + draw(st.lists(_CELLS, max_size=2)) if draw(st.integers(0, 9)) == 0 else row
        )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(columns)
    writer.writerows(rows)
    text = buf.getvalue()
    encoding = draw(st.sampled_from(["str", "utf-8", "utf-8-sig", "utf-16"]))
    return text if encoding == "str" else text.encode(encoding)


@pytest.mark.slow  # 300 generated manifests, each a file parsed and checked
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_fuzz_structured_manifests(data):
    _parse_or_manifest_error(data)
    try:  # the user's own columns accepted: every row (valid or not) carries them
        result = parse_manifest(data, source="fuzz.csv", base_dir="", extra_columns=True)
    except ManifestFileError:
        return
    _check(result)
    if result.extra_columns:
        numbers = {r.row_number for r in result.rows} | set(result.invalid_row_numbers)
        assert numbers <= set(result.extras)
        assert all(list(cells) == result.extra_columns for cells in result.extras.values())
