"""No run replaces results.csv with less than it held (issue 25 #3), and plurals say "1 row".

Unit tests of :mod:`kf2v_tasks.batch.results` on a local folder; the same over the
simulator and ``kf2v run`` is in ``tests/test_cli_keeps_results.py``.
"""

from __future__ import annotations

from pathlib import Path

from kf2v_tasks.batch.results import (
    BatchSummary,
    RowResult,
    RowStatus,
    earlier_rows,
    from_csv,
    n_rows,
    read_results,
    to_csv,
    with_earlier_rows,
)


def _row(n: int, rid: str | None, status=RowStatus.SUCCEEDED, **kw) -> RowResult:
    return RowResult(row=n, id=rid, status=status, **kw)


def test_rows_this_run_has_are_replaced_the_others_kept_and_marked():
    now = [_row(2, "a", output="out/a.mp4"), _row(3, "b", RowStatus.FAILED, output="out/b.mp4")]
    before = [
        _row(2, "a", RowStatus.FAILED, output="out/a.mp4"),  # same id
        _row(3, "z", output="out/b.mp4"),  # another id, same video: this run's row 3 is b
        _row(4, "c", output="out/c.mp4", cost=0.5),  # not in this manifest: kept
        _row(5, None, RowStatus.INVALID),  # nothing to know it by, and no row 5 now: kept
        _row(3, None, RowStatus.INVALID),  # nothing to know it by, but row 3 is this run's
    ]
    kept = earlier_rows(now, before)
    assert [(r.row, r.id, r.earlier_run) for r in kept] == [(4, "c", True), (5, None, True)]
    assert kept[0].cost == 0.5 and kept[0].status is RowStatus.SUCCEEDED


def test_results_csv_lists_this_run_first_then_the_earlier_rows_with_their_columns():
    now = [_row(3, "b", extra={"job": "1"}), _row(2, "a", extra={"job": "2"})]
    old = _row(2, "old", extra={"shot": "7"}).model_copy(update={"earlier_run": True})
    text = to_csv([*now, old], ["job"])
    header, *lines = text.splitlines()
    assert header.endswith(",earlier_run,job,shot")
    assert [line.split(",")[1] for line in lines] == ["a", "b", "old"]
    back = from_csv(text)
    assert [r.earlier_run for r in back] == [False, False, True]
    assert back[2].extra == {"job": "", "shot": "7"}


async def test_with_earlier_rows_reads_the_output_results_csv(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    assert await with_earlier_rows(str(out), "results.csv", [_row(2, "a")]) == [_row(2, "a")]
    (out / "results.csv").write_text(to_csv([_row(2, "a"), _row(3, "b"), _row(4, "c")]))
    rows = await with_earlier_rows(str(out), "results.csv", [_row(2, "a", RowStatus.FAILED)])
    assert [(r.id, r.status.value, r.earlier_run) for r in rows] == [
        ("a", "failed", False),
        ("b", "succeeded", True),
        ("c", "succeeded", True),
    ]
    # Run again with the same small manifest: the earlier rows stay, once each.
    (out / "results.csv").write_text(to_csv(rows))
    again = await with_earlier_rows(str(out), "results.csv", [_row(2, "a")])
    assert [(r.id, r.earlier_run) for r in again] == [("a", False), ("b", True), ("c", True)]
    # A shard's file or a dry run's table is this run's alone.
    for name in (".kf2v/shards/results-001.csv", "results.dry-run.csv"):
        assert await with_earlier_rows(str(out), name, [_row(2, "a")]) == [_row(2, "a")]


async def test_an_unreadable_results_csv_is_kept_aside_not_lost(tmp_path: Path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("row,id,status\nnot a number,a,succeeded\n")
    rows = await with_earlier_rows(str(out), "results.csv", [_row(2, "a")])
    assert rows == [_row(2, "a")]
    assert (out / "results.unreadable.csv").read_text().startswith("row,id,status\nnot a number")
    assert "kept as" in caplog.text
    assert await read_results(str(out / "none.csv")) == []


def test_one_row_is_one_row():
    assert (n_rows(1), n_rows(2), n_rows(0)) == ("1 row", "2 rows", "0 rows")
    assert n_rows(1, "valid") == "1 valid row" and n_rows(5, "valid") == "5 valid rows"
    one = BatchSummary(manifest="m", output="o", total=1, counts={"succeeded": 1})
    assert one.headline() == "1 row: 1 succeeded"


def test_a_manifest_column_of_ones_own_cannot_be_called_earlier_run():
    import pytest

    from kf2v_tasks.batch.manifest import ManifestFileError, parse_manifest

    with pytest.raises(ManifestFileError, match="'earlier_run' cannot be carried into results"):
        parse_manifest(
            "first_frame,last_frame,earlier_run\na.png,b.png,x\n",
            source="m.csv",
            base_dir="",
            extra_columns=True,
        )
