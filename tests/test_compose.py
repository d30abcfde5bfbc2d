"""The tasks composed into users' own flows: sync and async, inline, .submit and .map.

Everything runs on a real Prefect server against the simulator over real HTTP.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
from prefect import flow, unmapped
from prefect.client.orchestration import get_client

from kf2v_tasks import (
    FramePair,
    PersistedVideo,
    apersist_video,
    apoll_until_done,
    asubmit_kf2v,
    avalidate_frames,
    clock,
    persist_video,
    poll_until_done,
    submit_kf2v,
    validate_frames,
)
from kf2v_tasks.credentials import DashScopeCredentials
from kf2v_tasks.lanes.names import DEFAULT_QUEUE_AHEAD
from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator

from conftest import TEST_API_KEY
from helpers import make_frame, make_pairs

SPEED = 600.0
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("prefect_server")


@contextmanager
def simulator(**config):
    config.setdefault("render", "tiny")
    config.setdefault("runtime", RuntimeDistribution(kind="uniform", low=60, high=90))
    with run_simulator(SimulatorConfig(speed=SPEED, **config)) as s:
        yield s, DashScopeCredentials(api_key=TEST_API_KEY, base_url=s.base_url)


@pytest.fixture(autouse=True)
def _time_scale():
    clock.set_time_scale(SPEED)
    yield
    clock.set_time_scale(None)


def max_in_flight_at_service(rows: list[dict]) -> int:
    """Most tasks created and not yet ended at the same moment, from the simulator's timelines."""
    edges = []
    for r in rows:
        edges.append((r["created"], 1))
        edges.append((r["ended"] if r["ended"] is not None else float("inf"), -1))
    level = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        level += step
        peak = max(peak, level)
    return peak


# ------------------------------------------------------------------ README's own-flow examples


def readme_flow_examples() -> dict[str, str]:
    """The python blocks of README's "In your own flows" section, by their flow style."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## In your own flows", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    found = {}
    for code in blocks:
        if "async def my_pipeline" in code:
            found["async"] = code
        elif "def my_pipeline" in code:
            found["sync"] = code
    return found


@pytest.mark.parametrize("style", ["sync", "async"])
def test_readme_own_flow_example_runs_as_written(style, tmp_path, monkeypatch):
    code = readme_flow_examples()[style]
    shutil.copy(ROOT / "examples" / "frames" / "sunrise_first.jpg", tmp_path / "first.jpg")
    shutil.copy(ROOT / "examples" / "frames" / "sunrise_last.jpg", tmp_path / "last.jpg")
    shutil.copytree(ROOT / "examples" / "frames", tmp_path / "frames")
    shutil.copy(ROOT / "examples" / "manifest.csv", tmp_path / "manifest.csv")
    with simulator() as (sim, _):
        # As a user would: the environment, as `kf2v simulator` prints it.
        monkeypatch.setenv("DASHSCOPE_API_KEY", TEST_API_KEY)
        monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", sim.base_url)
        monkeypatch.chdir(tmp_path)
        namespace: dict = {"__name__": "readme_example"}
        exec(compile(code, f"README ({style})", "exec"), namespace)
        creates = sim.stats()["creates"]
    video, summary = namespace["result"]
    assert isinstance(video, PersistedVideo) and Path(video.path).stat().st_size == video.bytes
    assert video.cost is not None and video.resolution and video.duration_seconds == 5
    assert summary.counts == {"succeeded": 4}
    assert len(summary.results) == 4
    assert creates == 5  # the clip and the four manifest rows, each paid once


# ------------------------------------------------------------------ sync twins


def test_sync_flow_gets_values_never_coroutines(tmp_path):
    a = make_frame(tmp_path / "a.png", (320, 240), (200, 60, 30))
    b = make_frame(tmp_path / "b.png", (320, 240), (20, 160, 220))

    @flow
    def checks():
        pair = validate_frames(str(a), str(b))
        bad = validate_frames(str(a), str(tmp_path / "missing.png"), return_state=True)
        return pair, bad

    pair, bad = checks()
    assert isinstance(pair, FramePair)
    assert bad.is_failed() and "missing.png" in bad.message


async def test_async_flow_awaits_the_same_names(tmp_path):
    a = make_frame(tmp_path / "a.png", (320, 240), (200, 60, 30))
    b = make_frame(tmp_path / "b.png", (320, 240), (20, 160, 220))

    @flow
    async def checks():
        call = validate_frames(str(a), str(b))
        assert inspect.isawaitable(call)
        return await call, await avalidate_frames(str(a), str(b))

    twin, direct = await checks()
    assert isinstance(twin, FramePair) and twin == direct


# ------------------------------------------------------------------ .submit and .map


def test_map_in_a_sync_flow_keeps_to_the_accounts_two_tasks(tmp_path):
    folder = tmp_path / "in"
    pairs = make_pairs(folder, 12)
    firsts = [str(folder / a) for a, _ in pairs]
    lasts = [str(folder / b) for _, b in pairs]
    out = tmp_path / "out"
    dests = [str(out / f"clip-{i:02d}.mp4") for i in range(12)]
    # The service itself would run 12 at once: only the kf2v lane keeps it at 2 running
    # plus 1 queued ahead.
    with simulator(max_concurrent=12) as (sim, creds):

        @flow
        def fan_out():
            pairs = validate_frames.map(firsts, lasts)
            subs = submit_kf2v.map(
                pairs,
                unmapped("a slow pan"),
                ledger_root=unmapped(str(out)),
                credentials=unmapped(creds),
            )
            states = poll_until_done.map(subs, credentials=unmapped(creds))
            return persist_video.map(
                states, dests, submission=subs, ledger_root=unmapped(str(out))
            ).result()

        videos = fan_out()
        rows = sim.tasks()
    assert len(videos) == 12 and all(Path(v.path).exists() for v in videos)
    assert len(rows) == 12
    assert max_in_flight_at_service(rows) == 2 + DEFAULT_QUEUE_AHEAD


async def test_submit_and_map_in_an_async_flow(tmp_path):
    folder = tmp_path / "in"
    pairs = make_pairs(folder, 3)
    out = tmp_path / "out"
    with simulator(max_concurrent=8) as (sim, creds):

        @flow
        async def pipeline():
            pair_futures = [
                validate_frames.submit(str(folder / a), str(folder / b)) for a, b in pairs
            ]
            subs = asubmit_kf2v.map(
                pair_futures,
                unmapped("orbit"),
                ledger_root=unmapped(str(out)),
                credentials=unmapped(creds),
            )
            states = apoll_until_done.map(subs, credentials=unmapped(creds))
            dests = [str(out / f"v{i}.mp4") for i in range(len(pairs))]
            videos = apersist_video.map(states, dests, submission=subs)
            return [f.result() for f in videos]

        videos = await pipeline()
        rows = sim.tasks()
    assert sorted(Path(v.path).name for v in videos) == ["v0.mp4", "v1.mp4", "v2.mp4"]
    assert max_in_flight_at_service(rows) <= 2 + DEFAULT_QUEUE_AHEAD


# ------------------------------------------------------------------ what standalone tasks leave


async def test_standalone_tasks_write_sidecar_event_and_artifact(tmp_path):
    a = make_frame(tmp_path / "a.png", (320, 240), (200, 60, 30))
    b = make_frame(tmp_path / "b.png", (320, 240), (20, 160, 220))
    out = tmp_path / "out"
    dest = str(out / "standalone.mp4")
    with simulator() as (sim, creds):

        @flow
        async def one():
            pair = await avalidate_frames(str(a), str(b))
            sub = await asubmit_kf2v(pair, "a red ball", ledger_root=str(out), credentials=creds)
            state = await apoll_until_done(sub, credentials=creds, ledger_root=str(out))
            return await apersist_video(
                state, dest, submission=sub, credentials=creds, ledger_root=str(out)
            )

        state = await one(return_state=True)
    video = await state.aresult()
    side = json.loads((out / "standalone.json").read_text())
    assert side["sha256"] == video.sha256 and side["task_id"] == video.task_id
    assert side["actual_prompt"] and side["prompt"] == "a red ball"
    assert side["cost"] == video.cost and side["currency"] == video.currency
    assert video.actual_prompt == side["actual_prompt"]
    assert video.model == "wan2.2-kf2v-flash" and video.resolution == "720P"
    async with get_client() as client:
        paths: set[str] = set()
        for _ in range(60):  # events reach the server asynchronously
            resp = await client._client.post(
                "/events/filter",
                json={"filter": {"event": {"name": ["kf2v.video.persisted"]}}, "limit": 50},
            )
            paths = {e["payload"]["path"] for e in resp.json()["events"]}
            if dest in paths:
                break
            await asyncio.sleep(0.5)
        assert dest in paths
        resp = await client._client.post(
            "/artifacts/filter",
            json={
                "artifacts": {"flow_run_id": {"any_": [str(state.state_details.flow_run_id)]}},
                "limit": 20,
            },
        )
        markdown = [x["data"] for x in resp.json() if x["type"] == "markdown"]
    assert any("standalone.mp4" in m and video.sha256 in m for m in markdown)


def test_twins_share_one_signature_and_keep_twinning_with_options(tmp_path):
    for sync, aio in [
        (validate_frames, avalidate_frames),
        (submit_kf2v, asubmit_kf2v),
        (poll_until_done, apoll_until_done),
        (persist_video, apersist_video),
    ]:
        assert inspect.signature(sync.fn) == inspect.signature(aio.fn)
        assert not sync.isasync and aio.isasync and sync.aio is aio
        assert aio.name == f"{sync.name} (async)"  # the UI tells the twins apart
        assert sync.fn.__doc__ and "Example" in sync.fn.__doc__
    a = make_frame(tmp_path / "a.png", (320, 240), (200, 60, 30))
    b = make_frame(tmp_path / "b.png", (320, 240), (20, 160, 220))
    renamed = validate_frames.with_options(task_run_name="check-pair")

    @flow
    def sync_parent():
        return renamed(str(a), str(b))

    @flow
    async def async_parent():
        return await renamed(str(a), str(b))

    assert isinstance(sync_parent(), FramePair)
    assert isinstance(asyncio.run(async_parent()), FramePair)
