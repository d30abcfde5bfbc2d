"""The kf2v events, the shipped trigger, link artifacts and assets, on a real Prefect server.

The batch runs on the session's Prefect test server against the simulator over real HTTP;
every event is read back through the server's events API (``POST /api/events/filter``),
never from a mocked emitter. The test server runs Prefect's event persister, reactive
triggers and actions services (they run in ephemeral servers), so the ``retry-failed``
deployment is deployed there from deployments/prefect.yaml with ``prefect deploy`` (a
subprocess) and its automation fires on the batch's own ``kf2v.batch.finished`` event.
The simulator is told which rows to refuse by their prompt: ``REFUSE`` fails the first
task of that work at moderation, ``AMBIGUOUS`` answers the first create with a 500 after
creating the task (the batch retries it once and flags a possible duplicate).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from kf2v_tasks._cli.stack import ensure_work_pool, prefect_bin, prefect_env
from kf2v_tasks.events import asset_key, attempt_from_tags, attempt_tag, is_shard
from kf2v_tasks.simulator import RuntimeDistribution
from kf2v_tasks.simulator.wire import ApiError

from conftest import TEST_API_KEY
from helpers import fast_service, make_frame, manifest_text, pointed_at

ROOT = Path(__file__).resolve().parents[1]
PRICE_480 = 0.5  # 5 s at 0.10 (built-in price table)
MAX_COST = 1.6  # ok, bad and dup fit (1.5); big (1080P, 2.4) does not
COLUMNS = ["id", "first_frame", "last_frame", "resolution", "prompt"]
ROWS = [
    {"id": "ok", "first_frame": "a.png", "last_frame": "b.png", "resolution": "480P"},
    {"id": "bad", "first_frame": "a.png", "last_frame": "b.png", "resolution": "480P",
     "prompt": "REFUSE this"},
    {"id": "dup", "first_frame": "a.png", "last_frame": "b.png", "resolution": "480P",
     "prompt": "AMBIGUOUS create"},
    {"id": "big", "first_frame": "a.png", "last_frame": "b.png", "resolution": "1080P"},
]  # fmt: skip


def test_asset_keys_are_valid_uris_without_queries():
    from prefect.assets import Asset

    cases = {
        "S3://bucket/out/a.mp4?X-Amz-Signature=abc": "s3://bucket/out/a.mp4",
        "/data/out/my clip (1).mp4": "file:///data/out/my_clip_(1).mp4",
        "https://user:pw@h.test/x%20y.png#frag": "https://h.test/x_20y.png",
    }
    for location, key in cases.items():
        assert asset_key(location) == key
        Asset(key=key)  # Prefect accepts it
    assert asset_key("") is None and asset_key("s3://b/" + "k" * 600) is None


def test_attempt_and_shard_tags():
    assert attempt_from_tags(["kf2v", "batch"]) == 1
    assert attempt_from_tags([attempt_tag(2), "kf2v-attempt:x"]) == 2
    assert is_shard(["kf2v-shard:0-of-4"]) and not is_shard(["kf2v"])


@pytest.fixture(scope="module")
def sim():
    with fast_service(RuntimeDistribution(kind="fixed", low=30), seed=23) as s:
        yield s


@pytest.fixture
def refusing(sim, monkeypatch):
    """The simulator refuses work by prompt, the first time only (see the module docstring)."""
    seen: Counter[str] = Counter()
    real = sim.state.add_task

    def add_task(acct, **fields):
        task = real(acct, **fields)
        prompt = fields.get("prompt") or ""
        seen[fields["fingerprint"]] += 1
        if seen[fields["fingerprint"]] == 1:
            if "REFUSE" in prompt:
                task.outcome = "fail_moderation"
            elif "AMBIGUOUS" in prompt:
                raise ApiError(500, "InternalError")  # created, but the caller can't know
        return task

    monkeypatch.setattr(sim.state, "add_task", add_task)
    with pointed_at(sim, monkeypatch):
        yield sim


@pytest.fixture(scope="module")
def retry_deployment(prefect_server, tmp_path_factory):
    """deployments/prefect.yaml's retry-failed deployment (and its automation) on the server."""
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    asyncio.run(ensure_work_pool(api_url, "kf2v-process"))
    env = prefect_env(tmp_path_factory.mktemp("deploy-home"), api_url)
    cmd = [prefect_bin(), "deploy", "--name", "retry-failed", "--no-prompt"]
    cmd += ["--prefect-file", "deployments/prefect.yaml"]
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    yield "kf2v-retry-batch/retry-failed"
    asyncio.run(_remove_deployment("kf2v-retry-batch/retry-failed"))


async def _remove_deployment(name: str) -> None:
    """Other tests on this server must not trigger re-runs: the automation goes too."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        deployment = await client.read_deployment_by_name(name)
        await client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
        await client.delete_deployment(deployment.id)


async def _events_of(flow_run_id: str, want: str, timeout: float = 60.0) -> list:
    """Every kf2v and asset event related to the flow run, once ``want`` has arrived
    and nothing more arrives for a moment (the persister writes in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    related = EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"])
    names = EventNameFilter(prefix=["kf2v.", "prefect.asset."])
    deadline = time.monotonic() + timeout
    last = -1
    async with get_client() as client:
        while True:
            page = await client.read_events(EventFilter(event=names, related=related), 50)
            events = page.events
            done = any(e.event == want for e in events)
            if done and len(events) == last:
                return events
            if time.monotonic() > deadline:
                raise AssertionError(f"no {want} in {[e.event for e in events]}")
            last = len(events) if done else -1
            await asyncio.sleep(2.0)


def _inputs(folder: Path) -> Path:
    make_frame(folder / "a.png", (320, 240))
    make_frame(folder / "b.png", (320, 240), (20, 160, 90))
    path = folder / "m.csv"
    path.write_text(manifest_text(ROWS, COLUMNS))
    return path


@pytest.mark.usefixtures("prefect_server")
async def test_a_batch_emits_its_events_and_the_shipped_trigger_retries_it(
    refusing, retry_deployment, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    from kf2v_flows.batch import generate_batch
    from kf2v_flows.retry import retry_batch
    from kf2v_tasks.batch.config import ConcurrencySettings
    from kf2v_tasks.errors import BatchFailedError

    started = time.monotonic()
    manifest = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    fast = ConcurrencySettings(max_in_flight=4, submits_per_second=20, queries_per_second=200)
    creates = refusing.stats()["creates"]
    state = await generate_batch(
        str(manifest), str(out), concurrency=fast, max_cost=MAX_COST, return_state=True
    )
    error = await state.aresult(raise_on_failure=False)
    assert isinstance(error, BatchFailedError), error
    summary = error.summary
    assert {r.id: r.status.value for r in summary.results} == {
        "ok": "succeeded", "bad": "failed", "dup": "succeeded", "big": "over_budget",
    }  # fmt: skip
    assert refusing.stats()["creates"] - creates == 4  # dup was created twice
    run_id = str(state.state_details.flow_run_id)

    events = await _events_of(run_id, "kf2v.batch.finished")
    names = Counter(e.event for e in events)
    assert names == {
        "kf2v.video.persisted": 2,
        "kf2v.video.failed": 1,
        "kf2v.video.possible-duplicate": 1,
        "kf2v.budget.exceeded": 1,
        "kf2v.batch.finished": 1,
        "prefect.asset.materialization.succeeded": 2,
        "prefect.asset.referenced": 4,  # each video's two frames, as @materialize does
    }, names
    by = {e.event: e for e in events}
    text = json.dumps([e.model_dump(mode="json") for e in events])
    assert TEST_API_KEY not in text and "Signature" not in text and "Expires=" not in text

    failed = by["kf2v.video.failed"]
    assert failed.resource["kf2v.row.id"] == "bad"
    assert failed.resource["kf2v.model"] == "wan2.2-kf2v-flash"
    assert failed.resource["kf2v.output"] == str(out / "bad.mp4")
    assert failed.payload["error_code"] == "DataInspectionFailed"
    assert failed.payload["billed"] is False and failed.payload["status"] == "failed"
    roles = {r.role: r.id for r in failed.related}
    assert roles["flow-run"] == f"prefect.flow-run.{run_id}"
    assert roles["model"] == "kf2v.model.wan2.2-kf2v-flash"
    assert roles["batch"] == f"kf2v.batch.{run_id}"

    dup = by["kf2v.video.possible-duplicate"]
    assert dup.resource["kf2v.row.id"] == "dup" and dup.payload["status"] == "succeeded"

    budget = by["kf2v.budget.exceeded"]
    assert budget.payload["row_ids"] == ["big"] and budget.payload["max_cost"] == MAX_COST

    finished = by["kf2v.batch.finished"]
    assert finished.resource.id == f"kf2v.batch.{run_id}"
    assert finished.resource["kf2v.batch.state"] == "Failed"
    assert finished.resource["kf2v.batch.retryable"] == "true"
    assert finished.resource["kf2v.batch.attempt"] == "1"
    p = finished.payload
    assert p["counts"] == {"succeeded": 2, "failed": 1, "over_budget": 1}
    assert (p["spent"], p["estimated_cost"]) == (2 * PRICE_480, pytest.approx(3.9))  # all rows
    assert p["failed_rows"] == ["bad"] and p["flow_run_id"] == run_id
    assert p["results_csv"] == str(out / "results.csv") and p["output"] == str(out)
    assert p["models"] == ["wan2.2-kf2v-flash"]

    # Each kept video is an asset made from its two frames (file:// keys, local output).
    assets = [e for e in events if e.event == "prefect.asset.materialization.succeeded"]
    assert {e.resource.id for e in assets} == {
        asset_key(str(out / f"{i}.mp4")) for i in ("ok", "dup")
    }
    for e in assets:
        ups = {r.id for r in e.related if r.role == "asset"}
        assert ups == {asset_key(str(tmp_path / "in" / f)) for f in ("a.png", "b.png")}

    # Links to the gallery and results.csv beside the table and the summary.
    async with get_client() as client:
        resp = await client._client.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}
        )
    links = {a["key"]: a["data"] for a in resp.json() if a["key"]}  # links are markdown
    assert (out / "index.html").as_uri() in links["kf2v-batch-gallery"]
    assert (out / "results.csv").as_uri() in links["kf2v-batch-results-csv"]

    # The shipped trigger: one flow run of retry-failed, with this batch's run and spend.
    deployment_only = DeploymentFilter(name=DeploymentFilterName(any_=["retry-failed"]))
    deadline = time.monotonic() + 60
    async with get_client() as client:
        while True:
            runs = await client.read_flow_runs(deployment_filter=deployment_only)
            if runs or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
    assert len(runs) == 1, runs
    assert runs[0].parameters == {"flow_run_id": run_id, "spent": 2 * PRICE_480}

    # What a worker would run: only the failed row is created again; the retry's own event
    # (attempt 2) does not trigger another.
    retry = await retry_batch(**runs[0].parameters, return_state=True)
    again = (await retry.aresult(raise_on_failure=False)).summary
    assert {r.id: r.status.value for r in again.results} == {
        "ok": "skipped", "bad": "succeeded", "dup": "skipped", "big": "over_budget",
    }  # fmt: skip
    assert refusing.stats()["creates"] - creates == 5
    assert again.max_cost == pytest.approx(MAX_COST - 2 * PRICE_480)
    (sub,) = [r for r in await _children(retry.state_details.flow_run_id)]
    assert attempt_tag(2) in sub.tags
    second = await _events_of(str(sub.id), "kf2v.batch.finished")
    fin = next(e for e in second if e.event == "kf2v.batch.finished")
    assert (
        fin.resource["kf2v.batch.attempt"] == "2" and fin.resource["kf2v.batch.state"] == "Failed"
    )
    await asyncio.sleep(5.0)
    async with get_client() as client:
        assert len(await client.read_flow_runs(deployment_filter=deployment_only)) == 1
    print(f"\nbatch, events, trigger and retry: {time.monotonic() - started:.1f}s")


async def _children(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )


@pytest.mark.usefixtures("prefect_server")
async def test_standalone_tasks_emit_the_same_per_video_events(refusing, tmp_path):
    from prefect import flow
    from prefect.runtime import flow_run

    from kf2v_tasks import apersist_video, apoll_until_done, asubmit_kf2v, avalidate_frames
    from kf2v_tasks.errors import TaskFailedError

    _inputs(tmp_path)
    ledger, out = str(tmp_path / "ledger"), tmp_path / "out" / "dup.mp4"

    @flow
    async def pipeline() -> str:
        pair = await avalidate_frames(str(tmp_path / "a.png"), str(tmp_path / "b.png"))
        sub = await asubmit_kf2v(pair, "AMBIGUOUS alone", ledger_root=ledger)
        state = await apoll_until_done(sub, ledger_root=ledger)
        await apersist_video(state, str(out), submission=sub, ledger_root=ledger, frames=pair)
        bad = await asubmit_kf2v(pair, "REFUSE alone", ledger_root=ledger)
        with pytest.raises(TaskFailedError):
            await apoll_until_done(bad, ledger_root=ledger)
        return flow_run.id

    run_id = await pipeline()
    events = await _events_of(run_id, "kf2v.video.failed")
    assert Counter(e.event for e in events) == {
        "kf2v.video.possible-duplicate": 1,
        "kf2v.video.persisted": 1,
        "kf2v.video.failed": 1,
        "prefect.asset.materialization.succeeded": 1,
        "prefect.asset.referenced": 2,
    }
    by = {e.event: e for e in events}
    assert by["kf2v.video.failed"].payload["error_code"] == "DataInspectionFailed"
    assert by["kf2v.video.failed"].resource["kf2v.model"] == "wan2.2-kf2v-flash"
    assert by["kf2v.video.persisted"].resource["kf2v.output"] == str(out)
    made = by["prefect.asset.materialization.succeeded"]
    assert made.resource.id == asset_key(str(out))
    assert {r.id for r in made.related if r.role == "asset"} == {
        asset_key(str(tmp_path / f)) for f in ("a.png", "b.png")
    }


@pytest.mark.usefixtures("prefect_server")
async def test_a_batch_that_never_runs_its_rows_still_finishes_failed(tmp_path):
    """An unusable manifest: no row ran, yet pipelines hear the batch end (Failed)."""
    from kf2v_flows.batch import generate_batch

    (tmp_path / "m.csv").write_text("id,prompt\nr1,no frames here\n")
    state = await generate_batch(str(tmp_path / "m.csv"), str(tmp_path / "out"), return_state=True)
    assert state.is_failed()
    events = await _events_of(str(state.state_details.flow_run_id), "kf2v.batch.finished")
    (finished,) = [e for e in events if e.event == "kf2v.batch.finished"]
    assert finished.resource["kf2v.batch.state"] == "Failed"
    assert finished.payload["stopped"].startswith("ManifestFileError")


@pytest.mark.slow  # a real kf2v process, interrupted
async def test_an_interrupted_batch_says_so_before_it_exits(tmp_path, monkeypatch):
    """Ctrl-C, SIGTERM or a cancellation mid-run: results.csv and kf2v.batch.finished."""
    from kf2v_tasks.batch.reporting import BatchObserver
    from kf2v_tasks.batch.runner import BatchRunner

    heard = []

    class Hears(BatchObserver):
        async def on_stopped(self, summary):
            heard.append(summary)

    async def interrupted(self, plan, rows):
        raise KeyboardInterrupt  # as Prefect raises a signal wherever the run is

    monkeypatch.setattr(BatchRunner, "_execute", interrupted)
    manifest = _inputs(tmp_path)
    runner = BatchRunner(str(manifest), str(tmp_path / "out"), observer=Hears())
    with pytest.raises(KeyboardInterrupt):
        await runner.run()
    (summary,) = heard
    assert summary.stopped == "KeyboardInterrupt" and summary.counts.get("not_run") == 4
    assert "interrupted before it was submitted" in (tmp_path / "out" / "results.csv").read_text()
