"""Predicted run times per row: the prior, learning from finished tasks, the JSON file, order."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from kf2v_tasks.batch.runtimes import (
    MAX_SAMPLES,
    Order,
    RunTimeHistory,
    history_path,
    order_rows,
    prior_seconds,
    run_seconds_of,
)
from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.dashscope.task_state import TaskState

KF2V = "wan2.2-kf2v-flash"
WAN27 = "wan2.7-i2v"
WAN27_DATED = "wan2.7-i2v-2026-04-25"


def names(rows: list[tuple[str, str, str, float]]) -> list[str]:
    return [r[0] for r in rows]


def key(row: tuple[str, str, str, float]) -> tuple[str, str, float]:
    return row[1], row[2], row[3]


def observe_n(history: RunTimeHistory, model: str, res: str, dur: float, secs: float, n=5):
    for _ in range(n):
        assert history.observe(model, res, dur, secs)


# ---------------------------------------------------------------------- prior and order


def test_prior_orders_long_and_sharp_videos_first():
    rows = [
        ("short", WAN27, "720P", 2),
        ("mid", WAN27, "720P", 5),
        ("long-1080", WAN27, "1080P", 15),
    ]
    assert prior_seconds(KF2V, "720P", 5) == pytest.approx(180.0)
    assert prior_seconds(WAN27, "1080P", 15) == pytest.approx(180.0 * 3 * 1.6)
    assert prior_seconds(WAN27, "480P", 5) == pytest.approx(180.0 * 0.6)
    ordered = order_rows(rows, key, RunTimeHistory(), Order.LONGEST)
    assert names(ordered) == ["long-1080", "mid", "short"]
    assert names(order_rows(rows, key, None, "longest")) == ["long-1080", "mid", "short"]


def test_ties_keep_input_order():
    rows = [("a", KF2V, "720P", 5), ("b", WAN27, "720P", 5), ("c", KF2V, "720P", 5)]
    assert names(order_rows(rows, key, RunTimeHistory(), Order.LONGEST)) == ["a", "b", "c"]


def test_learned_run_times_reverse_the_prior_order():
    rows = [("wan-10s", WAN27, "720P", 10), ("kf2v", KF2V, "720P", 5)]
    history = RunTimeHistory()
    assert names(order_rows(rows, key, history, Order.LONGEST)) == ["wan-10s", "kf2v"]

    observe_n(history, KF2V, "720P", 5, 400.0)
    observe_n(history, WAN27, "720P", 5, 60.0)
    assert history.predict(KF2V, "720P", 5) == pytest.approx(400.0)
    assert history.predict(WAN27, "720P", 5) == pytest.approx(60.0)
    assert history.predict(WAN27, "720P", 10) == pytest.approx(120.0)  # rate × duration
    assert history.predict(KF2V, "720P", 5) > history.predict(WAN27, "720P", 5)
    assert names(order_rows(rows, key, history, Order.LONGEST)) == ["kf2v", "wan-10s"]


def test_manifest_order_is_untouched():
    rows = [("short", WAN27, "720P", 2), ("long", WAN27, "1080P", 15), ("kf2v", KF2V, "480P", 5)]
    history = RunTimeHistory()
    observe_n(history, KF2V, "480P", 5, 900.0)
    assert names(order_rows(rows, key, history, Order.LONGEST)) != names(rows)
    for order in (Order.MANIFEST, "manifest"):
        out = order_rows(rows, key, history, order)
        assert out == rows and out is not rows


# ---------------------------------------------------------------------- learning


def test_few_samples_are_blended_with_the_prior():
    history = RunTimeHistory()
    history.observe(KF2V, "720P", 5, 400.0)  # one sample: 1/5 of its own rate
    prior_rate = 180.0 / 5
    assert history.predict(KF2V, "720P", 5) == pytest.approx((0.2 * 80 + 0.8 * prior_rate) * 5)
    observe_n(history, KF2V, "720P", 5, 400.0, n=4)  # five: its own rate alone
    assert history.predict(KF2V, "720P", 5) == pytest.approx(400.0)


def test_median_ignores_one_outlier():
    history = RunTimeHistory()
    for secs in (100.0, 110.0, 120.0, 130.0, 50_000.0):
        history.observe(KF2V, "720P", 5, secs)
    assert history.predict(KF2V, "720P", 5) == pytest.approx(120.0)


def test_dated_variant_falls_back_to_its_family_then_learns_its_own():
    history = RunTimeHistory()
    assert history.predict(WAN27_DATED, "720P", 5) == pytest.approx(180.0)  # the prior
    observe_n(history, WAN27, "720P", 5, 50.0)
    assert history.predict(WAN27_DATED, "720P", 5) == pytest.approx(50.0)  # family data
    assert history.predict(KF2V, "720P", 5) == pytest.approx(180.0)  # another family: prior

    observe_n(history, WAN27_DATED, "720P", 5, 100.0)
    assert history.predict(WAN27_DATED, "720P", 5) == pytest.approx(100.0)
    assert history.predict(WAN27, "720P", 5) == pytest.approx(50.0)  # learned under its name
    assert len(history.samples(WAN27_DATED, "720P")) == 5


def test_unseen_resolution_scales_the_models_other_resolutions():
    history = RunTimeHistory()
    observe_n(history, KF2V, "480P", 5, 60.0)  # 12 s/s at 480P (factor 0.6)
    assert history.predict(KF2V, "720P", 5) == pytest.approx(60.0 / 0.6)
    assert history.predict(KF2V, "1080P", 5) == pytest.approx(60.0 / 0.6 * 1.6)


def test_invalid_observations_are_dropped():
    history = RunTimeHistory()
    assert not history.observe(KF2V, "720P", 5, 0.0)
    assert not history.observe(KF2V, "720P", 5, -3.0)
    assert not history.observe(KF2V, "720P", 0, 30.0)
    assert not history.observe(KF2V, "720P", 5, float("nan"))
    assert len(history) == 0
    assert history.predict(KF2V, "720P", 5) == pytest.approx(180.0)


def test_samples_are_bounded_to_the_newest():
    history = RunTimeHistory()
    for i in range(MAX_SAMPLES + 50):
        history.observe(KF2V, "720P", 5, 100.0 + i)
    kept = history.samples(KF2V, "720P")
    assert len(kept) == MAX_SAMPLES
    assert kept[0].run_seconds == 150.0 and kept[-1].run_seconds == 100.0 + MAX_SAMPLES + 49


# ---------------------------------------------------------------------- the file


async def test_save_load_round_trip(tmp_path):
    out = str(tmp_path)
    empty = await RunTimeHistory.load(out)
    assert len(empty) == 0
    history = RunTimeHistory()
    observe_n(history, KF2V, "720P", 5, 400.0)
    history.observe(WAN27, "1080P", 10, 250.0)
    await history.save(out)

    path = tmp_path / ".kf2v" / "runtimes.json"
    assert history_path(out) == str(path)
    doc = json.loads(path.read_text())
    assert doc["version"] == 1
    assert doc["samples"][KF2V]["720P"] == [[5.0, 400.0]] * 5
    assert doc["samples"][WAN27]["1080P"] == [[10.0, 250.0]]

    loaded = await RunTimeHistory.load(out)
    assert len(loaded) == 6
    for model, res, dur in ((KF2V, "720P", 5), (WAN27, "1080P", 10), (WAN27, "720P", 3)):
        assert loaded.predict(model, res, dur) == pytest.approx(history.predict(model, res, dur))


async def test_round_trip_on_an_fsspec_memory_url():
    out = f"memory://runtimes-{uuid.uuid4().hex}/out"
    history = RunTimeHistory()
    observe_n(history, WAN27, "720P", 5, 60.0)
    await history.save(out)
    assert history_path(out) == f"{out}/.kf2v/runtimes.json"
    loaded = await RunTimeHistory.load(out)
    assert loaded.predict(WAN27, "720P", 10) == pytest.approx(120.0)


async def test_save_merges_with_a_file_written_meanwhile(tmp_path):
    out = str(tmp_path)
    mine = await RunTimeHistory.load(out)
    theirs = await RunTimeHistory.load(out)
    observe_n(theirs, WAN27, "720P", 5, 60.0, n=3)
    await theirs.save(out)  # another run saves after this one loaded

    observe_n(mine, KF2V, "720P", 5, 400.0, n=2)
    mine.observe(WAN27, "720P", 5, 70.0)
    await mine.save(out)
    await mine.save(out)  # saving again adds nothing twice

    doc = json.loads((tmp_path / ".kf2v" / "runtimes.json").read_text())
    assert doc["samples"][KF2V]["720P"] == [[5.0, 400.0]] * 2
    assert doc["samples"][WAN27]["720P"] == [[5.0, 60.0]] * 3 + [[5.0, 70.0]]
    assert len(mine) == 6  # and this history now knows the other run's samples
    assert len(await RunTimeHistory.load(out)) == 6


async def test_merged_file_keeps_the_newest_samples_per_pair(tmp_path):
    out = str(tmp_path)
    theirs = RunTimeHistory()
    for i in range(150):
        theirs.observe(KF2V, "720P", 5, 1000.0 + i)
    await theirs.save(out)
    mine = RunTimeHistory()
    for i in range(100):
        mine.observe(KF2V, "720P", 5, 2000.0 + i)
    await mine.save(out)

    rows = json.loads((tmp_path / ".kf2v" / "runtimes.json").read_text())["samples"][KF2V]["720P"]
    assert len(rows) == MAX_SAMPLES
    assert rows[0] == [5.0, 1050.0] and rows[-1] == [5.0, 2099.0]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe\x00", b'{"version": 99, "samples": {}}', b'{"samples": [1, 2]}'],
)
async def test_corrupt_file_gives_an_empty_history_and_a_warning(tmp_path, caplog, content):
    out = str(tmp_path)
    path = tmp_path / ".kf2v" / "runtimes.json"
    path.parent.mkdir()
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="kf2v_tasks.batch.runtimes"):
        history = await RunTimeHistory.load(out)
    assert len(history) == 0
    assert any("runtimes.json" in r.getMessage() for r in caplog.records)
    assert path.read_bytes() == content  # loading never rewrites the file

    history.observe(KF2V, "720P", 5, 400.0)
    await history.save(out)  # an explicit save replaces it with a valid document
    assert json.loads(path.read_text())["samples"][KF2V]["720P"] == [[5.0, 400.0]]


# ---------------------------------------------------------------------- finished tasks


def state(status: TaskStatus, scheduled: datetime | None, end: datetime | None) -> TaskState:
    submit = scheduled - timedelta(seconds=30) if scheduled else None
    return TaskState(
        task_id="t", status=status, submit_time=submit, scheduled_time=scheduled, end_time=end
    )


def test_run_seconds_of_a_finished_task():
    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert run_seconds_of(state(TaskStatus.SUCCEEDED, t0, t0 + timedelta(seconds=42.5))) == 42.5
    assert run_seconds_of(state(TaskStatus.FAILED, t0, t0 + timedelta(seconds=42.5))) is None
    assert run_seconds_of(state(TaskStatus.RUNNING, t0, None)) is None
    assert run_seconds_of(state(TaskStatus.SUCCEEDED, None, t0)) is None
    assert run_seconds_of(state(TaskStatus.SUCCEEDED, t0, None)) is None
    assert run_seconds_of(state(TaskStatus.SUCCEEDED, t0, t0 - timedelta(seconds=1))) is None
