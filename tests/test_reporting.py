"""Reporting as one observer: escaping, the results table, registration, and the artifacts."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from kf2v_tasks.batch.observer import BatchObserver, ObserverGroup, observing, run_observer
from kf2v_tasks.batch.reporting_markdown import ERROR_CELL_CHARS, results_table, summary_markdown
from kf2v_tasks.batch.results import BatchSummary, RowResult, RowStatus
from kf2v_tasks.batch.runner import BatchRunner
from kf2v_tasks.errors import BatchFailedError
from kf2v_tasks.redaction import md_escape

from helpers import make_pairs, manifest_text

HOSTILE = "<img src=x onerror=alert(1)> [click](javascript:alert(1)) *bold* `code` | pipe"


def _results() -> list[RowResult]:
    return [
        RowResult(
            row=2,
            id="ok_1",
            status=RowStatus.SUCCEEDED,
            output="/data/out/ok_1 (final).mp4",
            task_id="t-1",
            cost=0.5,
            sha256="a" * 64,
            bytes=10,
        ),
        RowResult(
            row=3,
            id="bad",
            status=RowStatus.INVALID,
            error_code="InvalidRow",
            error_message="row 3, column 'seed': " + HOSTILE + " x" * 200,
        ),
        RowResult(row=4, id="dup", status=RowStatus.FAILED, possible_duplicate=True),
    ]


def test_md_escape_neutralises_html_and_markdown():
    text = md_escape(HOSTILE + "\n# heading")
    assert "<" not in text and ">" not in text
    assert "&lt;img" in text
    # Every markdown character is backslash-escaped: no link, emphasis, code or table cell.
    for escaped in ("\\[click\\]\\(javascript", "\\*bold\\*", "\\`code\\`", "\\| pipe"):
        assert escaped in text
    assert "\n" not in text  # one line: a newline could start a heading or a list
    signed = md_escape("https://b.oss.test/m.csv?Expires=1&Signature=zzz")
    assert "Signature" not in signed and "zzz" not in signed  # artifacts are widely visible


def test_results_table_shows_the_columns_that_matter_and_escapes_text():
    table = results_table(_results(), "/data/out")
    # What a person reads first comes first; the long task id after the error.
    assert [list(r) for r in table] == [
        ["row", "id", "status", "video", "cost", "error", "task_id", "possible_duplicate"]
    ] * 3
    ok, bad, dup = table
    assert ok["id"] == "ok\\_1" and ok["row"] == 2 and ok["cost"] == 0.5
    assert ok["video"] == "ok\\_1 \\(final\\).mp4"  # relative to the output folder: short
    assert ok["task_id"] == "t-1"
    assert results_table(_results())[0]["video"] == "/data/out/ok\\_1 \\(final\\).mp4"
    assert bad["error"].startswith("InvalidRow: row 3, column 'seed': &lt;img")
    # Short enough not to be clipped; the whole message stays in results.csv.
    assert len(bad["error"]) < ERROR_CELL_CHARS * 1.3 and bad["error"].endswith("…")
    assert "<" not in bad["error"]
    assert dup["possible_duplicate"] is True and dup["error"] == ""


def test_summary_markdown_escapes_ids_paths_and_errors():
    results = _results()
    summary = BatchSummary(
        manifest="s3://bucket/<m>.csv",
        output="/data/out",
        total=3,
        counts=BatchSummary.count(results),
        results=results,
    )
    text = summary_markdown(summary)
    assert "<" not in text
    assert "- Manifest: s3://bucket/&lt;m&gt;.csv" in text
    # A local file is shown as its path, as text: a browser blocks file:// from the UI.
    assert "- ok\\_1: /data/out/ok\\_1 \\(final\\).mp4" in text
    assert "file://" not in text and "](" not in text
    assert "row 3 bad: InvalidRow: row 3, column 'seed': &lt;img" in text
    assert "[click]" not in text and "row 4 dup: failed" in text


def test_summary_says_how_many_rows_max_cost_left_out():
    rows = [
        RowResult(row=2, id="a", status=RowStatus.SUCCEEDED, cost=0.5),
        RowResult(row=3, id="b", status=RowStatus.OVER_BUDGET, error_code="BudgetExceeded"),
    ]
    summary = BatchSummary(
        manifest="m.csv",
        output="out",
        total=2,
        counts=BatchSummary.count(rows),
        max_cost=0.6,
        results=rows,
    )
    assert summary.over_budget == 1 and summary.failed == 0
    assert (
        summary.headline()
        == "2 rows: 1 over_budget, 1 succeeded; 1 not submitted: over max_cost 0.60"
    )
    assert "max\\_cost 0.60: 1 row over budget, not submitted" in summary_markdown(summary)
    assert "1 not submitted: over max_cost 0.60" in str(BatchFailedError(summary))


def test_no_link_for_unknown_schemes():
    r = RowResult(row=2, id="a", status=RowStatus.SUCCEEDED, output="javascript://x/a.mp4")
    text = summary_markdown(BatchSummary(manifest="m", output="o", results=[r]))
    assert "](javascript" not in text and "- a: javascript://x/a.mp4" in text


class _Recorder(BatchObserver):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def on_plan(self, plan, cost, dry_run):
        self.calls.append(("plan", len(plan.runnable), len(plan.invalid), dry_run))

    def on_row(self, result, counts, total):
        self.calls.append(("row", result.row, sum(counts.values()), total))

    async def on_finish(self, summary):
        self.calls.append(("finish", [r.row for r in summary.results]))


class _Broken(BatchObserver):
    async def on_plan(self, plan, cost, dry_run):
        raise RuntimeError("broken on_plan")

    def on_row(self, result, counts, total):
        raise RuntimeError("broken on_row")

    async def on_finish(self, summary):
        raise RuntimeError("broken on_finish")


async def test_a_failing_observer_never_stops_the_others():
    rec = _Recorder()
    group = ObserverGroup([_Broken(), rec])
    result = RowResult(row=2, status=RowStatus.PLANNED)
    group.on_row(result, {"planned": 1}, 1)
    await group.on_finish(BatchSummary(manifest="m", output="o", results=[result]))
    assert rec.calls == [("row", 2, 1, 1), ("finish", [2])]


def test_registration_lasts_for_the_block_only():
    rec = _Recorder()
    with observing(rec):
        assert rec in run_observer().observers
    assert rec not in run_observer().observers


@pytest.mark.usefixtures("prefect_server")
async def test_the_runner_calls_one_observer_in_order(tmp_path: Path):
    folder = tmp_path / "in"
    pairs = make_pairs(folder, 2)
    rows = [{"id": f"r{i}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)]
    rows.append({"id": "bad", "first_frame": pairs[0][0], "last_frame": "missing.png"})
    (folder / "m.csv").write_text(manifest_text(rows))
    rec, registered = _Recorder(), _Recorder()
    with observing(registered):
        summary = await BatchRunner(
            str(folder / "m.csv"), str(tmp_path / "out"), dry_run=True, observer=rec
        ).run()
    assert summary.counts == {"planned": 2, "invalid": 1}
    assert [r.row for r in summary.results] == [2, 3, 4]
    assert rec.calls[0] == ("plan", 2, 1, True)
    assert sorted(c[1] for c in rec.calls[1:-1]) == [2, 3, 4]
    assert [c[2] for c in rec.calls[1:-1]] == [1, 2, 3]  # rows finished so far
    assert rec.calls[-1] == ("finish", [2, 3, 4])
    assert registered.calls == rec.calls  # the CLI's registration sees the same


@pytest.mark.usefixtures("prefect_server")
async def test_artifacts_escape_what_users_wrote(tmp_path: Path):
    from prefect.client.orchestration import get_client

    from kf2v_flows.batch import generate_batch

    folder = tmp_path / "in"
    pairs = make_pairs(folder, 1)
    rows = [
        {"id": "good", "first_frame": pairs[0][0], "last_frame": pairs[0][1]},
        {"id": "evil", "first_frame": pairs[0][0], "last_frame": pairs[0][1], "seed": HOSTILE},
    ]
    (folder / "m.csv").write_text(manifest_text(rows, ["id", "first_frame", "last_frame", "seed"]))
    state = await generate_batch(
        str(folder / "m.csv"), str(tmp_path / "out"), dry_run=True, return_state=True
    )
    error = await state.aresult(raise_on_failure=False)
    assert isinstance(error, BatchFailedError)
    assert error.summary.counts == {"planned": 1, "invalid": 1}
    async with get_client() as client:
        resp = await client._client.post(
            "/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [str(state.state_details.flow_run_id)]}}},
        )
    arts = {a["type"]: a for a in resp.json()}
    assert {"progress", "table", "markdown"} <= set(arts)
    md = arts["markdown"]["data"]
    assert "&lt;img" in md and "<img" not in md and "[click]" not in md
    table = arts["table"]["data"]
    assert "sha256" not in table and "&lt;img" in table and "<img" not in table
    for a in arts.values():
        assert "<" not in (a.get("description") or "")


@pytest.mark.usefixtures("prefect_server")
async def test_s3_outputs_get_presigned_links_posters_and_a_gallery(s3_server):
    import boto3
    import httpx
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    from kf2v_tasks.batch.reporting import PRESIGNED_GALLERY_NAME, PrefectReporter

    bucket = s3_server.new_bucket()
    fs, opts = s3_server.filesystem(), s3_server.storage_options
    root = f"s3://{bucket}/out"
    fs.pipe_file(f"{bucket}/out/a.mp4", b"video-bytes")
    fs.pipe_file(f"{bucket}/out/a.poster.jpg", b"\xff\xd8poster")
    fs.pipe_file(f"{bucket}/out/a.strip.jpg", b"\xff\xd8strip")
    previews = {
        "poster": f"{root}/a.poster.jpg",
        "strip": f"{root}/a.strip.jpg",
        "frames": 5,
        "poster_frame": 2,
        "width": 64,
        "height": 48,
    }
    side = {"sha256": "a" * 64, "prompt": HOSTILE, "actual_prompt": "a dawn", "previews": previews}
    fs.pipe_file(f"{bucket}/out/a.json", json.dumps(side).encode())
    results = [
        RowResult(row=2, id="a", status=RowStatus.SUCCEEDED, output=f"{root}/a.mp4", cost=0.5),
        RowResult(row=3, id="b", status=RowStatus.FAILED, output=f"{root}/b.mp4",
                  error_code="DataInspectionFailed", error_message=HOSTILE),
    ]  # fmt: skip
    fs.pipe_file(f"{bucket}/out/results.csv", b"row,id\n")
    summary = BatchSummary(
        manifest="m.csv", output=root, total=2, counts=BatchSummary.count(results), results=results,
        results_path=f"{root}/results.csv",
    )  # fmt: skip
    reporter = PrefectReporter(storage_options=opts, link_expiry=3600)

    @flow
    async def report() -> str:
        await reporter.on_finish(summary)
        return flow_run.id

    run_id = await report()
    async with get_client() as client:
        resp = await client._client.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}
        )
    arts = resp.json()
    md = next(a["data"] for a in arts if a["key"] == "kf2v-batch-summary")
    images = [a for a in arts if a["type"] == "image"]
    # Link artifacts (markdown links) to the presigned gallery and results.csv.
    links = {a["key"]: a for a in arts if a["key"].endswith(("-gallery", "-results-csv"))}
    gallery_link = links["kf2v-batch-gallery"]["data"]
    assert (
        f"/{bucket}/out/{PRESIGNED_GALLERY_NAME}?" in gallery_link and "Signature=" in gallery_link
    )
    csv_url = re.search(r"\]\((http[^)]+)\)", links["kf2v-batch-results-csv"]["data"]).group(1)
    assert "expires at" in links["kf2v-batch-results-csv"]["description"]
    assert httpx.get(csv_url).content == b"row,id\n"
    assert "s3://" not in md.split("## Videos")[1]  # every video is a link a browser can open
    assert "expire at" in md and "Signature=" in md, md
    assert f"/{bucket}/out/{PRESIGNED_GALLERY_NAME}?" in md
    assert "<img" not in md and "&lt;img" in md  # the hostile error is escaped
    assert len(images) == 1 and images[0]["key"] == "kf2v-batch-poster-row-2"
    assert "expires at" in images[0]["description"]
    poster = httpx.get(images[0]["data"])  # what the UI's <img> fetches
    assert poster.status_code == 200 and poster.content == b"\xff\xd8poster"
    assert poster.headers["content-type"] == "image/jpeg"

    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                      aws_access_key_id=opts["key"], aws_secret_access_key=opts["secret"])  # fmt: skip
    head = s3.head_object(Bucket=bucket, Key="out/index.html")
    assert head["ContentType"].startswith("text/html")  # static hosting shows it, not saves it
    page = fs.cat_file(f"{bucket}/out/index.html").decode()
    assert 'src="a.mp4"' in page and 'poster="a.poster.jpg"' in page and "&lt;img" in page
    shared = fs.cat_file(f"{bucket}/out/{PRESIGNED_GALLERY_NAME}").decode()
    video_url = re.search(r'<source src="([^"]+)"', shared).group(1)
    assert video_url.startswith("http") and "Signature=" in video_url
    got = httpx.get(html.unescape(video_url))
    assert got.status_code == 200 and got.content == b"video-bytes"
    assert got.headers["content-type"] == "video/mp4"
