"""Create / query / cancel / list behaviour of the simulated DashScope API."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import httpx
import pytest

from kf2v_tasks.dashscope.models import GenerationOptions, Resolution
from kf2v_tasks.generation.fingerprint import fingerprint
from kf2v_tasks.simulator import RuntimeDistribution

from .simkit import FIRST, HEADERS, LAST, body, create, data_uri, query, wait_status
from fake_clock import manual_sim_clock


def test_auth_errors(make_sim):
    sim = make_sim(api_key="sk-right")
    resp = create(sim, headers={"X-DashScope-Async": "enable"})
    assert resp.status_code == 401
    doc = resp.json()
    assert doc["code"] == "InvalidApiKey" and doc["message"] == "No API-key provided."
    assert resp.headers["X-Request-ID"] == doc["request_id"]
    resp = create(sim, headers={**HEADERS, "Authorization": "Bearer sk-wrong"})
    assert (resp.status_code, resp.json()["message"]) == (401, "Invalid API-key provided.")
    resp = httpx.get(f"{sim.base_url}/tasks/x", headers={"Authorization": "Bearer sk-wrong"})
    assert resp.status_code == 401
    ok = create(sim, headers={**HEADERS, "Authorization": "Bearer sk-right"})
    assert ok.status_code == 200


def test_async_header_required(sim):
    resp = create(sim, headers={"Authorization": HEADERS["Authorization"]})
    assert resp.status_code == 403
    assert resp.json()["code"] == "AccessDenied"
    assert resp.json()["message"] == "current user api does not support synchronous calls."


@pytest.mark.parametrize(
    "payload",
    [
        body(model="wan9-kf2v"),
        body(model=None),
        body(model="wanx2.1-kf2v-plus", parameters={"resolution": "480P"}),
        body(parameters={"resolution": "4K"}),
        body(parameters={"seed": -1}),
        body(parameters={"seed": 2**31}),
        body(parameters={"seed": True}),
        body(parameters={"duration": 10}),
        body(parameters={"prompt_extend": "yes"}),
        body(input={"first_frame_url": None}),
        body(input={"last_frame_url": ""}),
        body(input={"first_frame_url": data_uri(b"not an image")}),
        body(input={"last_frame_url": "file:///tmp/x.png"}),
        body(input={"last_frame_url": "https://example.com/x.png"}),  # remote fetch disabled
    ],
)
def test_invalid_parameters(sim, payload):
    resp = create(sim, payload)
    assert resp.status_code == 400, resp.text
    doc = resp.json()
    assert doc["code"].startswith("InvalidParameter")
    assert set(doc) == {"request_id", "code", "message"}
    assert sim.stats()["creates"] == 0


def test_wrong_endpoint_and_not_json(sim):
    resp = httpx.post(
        sim.base_url + "/services/aigc/video-generation/video-synthesis",
        json=body(),
        headers=HEADERS,
    )
    assert (resp.status_code, resp.json()["message"]) == (400, "url error, please check url!")
    resp = httpx.post(
        sim.base_url + "/services/aigc/image2video/video-synthesis", content=b"{", headers=HEADERS
    )
    assert (resp.status_code, resp.json()["code"]) == (400, "BadRequest.IllegalInput")


def test_sdk_extra_fields_and_truncation(sim):
    long_prompt, long_negative = "p" * 900, "n" * 600
    payload = body(
        input={
            "prompt": long_prompt,
            "negative_prompt": long_negative,
            "extend_prompt": True,
            "function": "video-synthesis",
        },
        parameters={"seed": 7, "size": "1280*720", "whatever": 1},
    )
    resp = create(sim, payload)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["output"]["task_status"] == "PENDING" and "usage" not in doc
    done = wait_status(sim, doc["output"]["task_id"], {"SUCCEEDED"})
    assert done["output"]["orig_prompt"] == "p" * 800
    assert done["output"]["actual_prompt"].startswith("p" * 800)
    # The fingerprint uses the prompts as sent and the documented parameter defaults.
    opts = GenerationOptions(resolution=Resolution.P480, seed=7)
    expected = fingerprint(
        opts,
        long_prompt,
        long_negative,
        hashlib.sha256(FIRST).hexdigest(),
        hashlib.sha256(LAST).hexdigest(),
    )
    assert sim.stats()["creates_by_fingerprint"] == {expected: 1}
    assert sim.tasks()[0]["fingerprint"] == expected

    # "prompt": null (template-style SDK body) is accepted too; no actual_prompt without extend.
    resp = create(sim, body(input={"prompt": None}, parameters={"prompt_extend": False}))
    assert resp.status_code == 200, resp.text
    done = wait_status(sim, resp.json()["output"]["task_id"], {"SUCCEEDED"})
    assert "actual_prompt" not in done["output"]


def test_lifecycle_and_usage_shapes(make_sim):
    # 600 service seconds = 0.6 s real: long enough that a loaded machine still sees RUNNING
    # (r22 is 480P: 1000 drawn x 0.6; r21 is 720P and runs the drawn 1000).
    sim = make_sim(runtime=RuntimeDistribution(kind="fixed", low=1000.0))
    r22 = create(sim).json()["output"]["task_id"]
    r21 = create(sim, body(model="wanx2.1-kf2v-plus", parameters={"resolution": "720P"}))
    r21 = r21.json()["output"]["task_id"]
    first = query(sim, r22)["output"]
    assert first["task_status"] in {"PENDING", "RUNNING"}
    assert len(first["submit_time"]) == len("2025-04-18 10:36:58.394")
    done = wait_status(sim, r22, {"SUCCEEDED"})
    out = done["output"]
    assert {"scheduled_time", "end_time", "video_url"} <= set(out)
    assert out["submit_time"] <= out["scheduled_time"] <= out["end_time"]
    assert done["usage"] == {"video_duration": 5, "video_count": 1, "SR": 480}
    done21 = wait_status(sim, r21, {"SUCCEEDED"})
    assert done21["usage"] == {"video_count": 1, "video_duration": 5, "video_ratio": "standard"}
    rows = {row["task_id"]: row for row in sim.tasks()}
    assert rows[r22]["run_seconds"] == 600.0
    assert rows[r22]["ended"] - rows[r22]["started"] == pytest.approx(0.6, abs=1e-6)


def test_queueing_respects_max_concurrent(make_sim):
    # Speed 100: tasks of 0.4-1.2 real s outlast a create on a loaded machine, so the queue fills.
    sim = make_sim(
        max_concurrent=2,
        speed=100.0,
        runtime=RuntimeDistribution(kind="uniform", low=40.0, high=120.0),
    )
    ids = [create(sim).json()["output"]["task_id"] for _ in range(7)]
    for task_id in ids:
        wait_status(sim, task_id, {"SUCCEEDED"})
    rows = sorted(sim.tasks(), key=lambda r: r["started"])
    assert sim.stats()["peak_concurrency"] == 2
    events = sorted([(r["started"], 1) for r in rows] + [(r["ended"], -1) for r in rows])
    running = peak = 0
    for _, delta in events:  # ends sort before starts at the same instant
        running += delta
        peak = max(peak, running)
    assert peak == 2
    # Queued tasks start exactly when a slot frees: each start is its creation or an end.
    ends = {r["ended"] for r in rows}
    for row in rows:
        assert row["started"] == row["created"] or row["started"] in ends


def test_reject_mode_throttles_at_concurrency(make_sim):
    sim = make_sim(max_concurrent=1, concurrency_mode="reject", speed=100.0)
    assert create(sim).status_code == 200
    resp = create(sim)
    assert (resp.status_code, resp.json()["code"]) == (429, "Throttling")
    assert sim.stats()["throttled_by_endpoint"] == {"create": 1}


def test_reject_mode_holds_for_creates_that_arrive_together(make_sim):
    """Creates checked at once (frames fetched in between) cannot slip past the limit."""
    from concurrent.futures import ThreadPoolExecutor

    sim = make_sim(
        max_concurrent=2,
        concurrency_mode="reject",
        submits_per_second=1000,
        runtime=RuntimeDistribution(kind="fixed", low=6000.0),
    )
    with ThreadPoolExecutor(8) as pool:
        codes = sorted(r.status_code for r in pool.map(lambda _: create(sim), range(8)))
    assert codes == [200, 200] + [429] * 6
    assert sim.stats()["pending"] + sim.stats()["running"] == 2


def test_unknown_and_expired_ids(make_sim):
    sim = make_sim(task_ttl=200.0)
    # The simulator's own clock, stopped: under load a real 0.2 s could pass between two
    # queries and expire the task before it was ever seen SUCCEEDED.
    clock = manual_sim_clock(sim)
    doc = query(sim, "no-such-task")
    assert doc["output"] == {"task_id": "no-such-task", "task_status": "UNKNOWN"}
    task_id = create(sim).json()["output"]["task_id"]
    other = {**HEADERS, "Authorization": "Bearer sk-another-account"}
    assert query(sim, task_id, other)["output"]["task_status"] == "UNKNOWN"
    clock.advance(0.061)  # past the 60 service-second run
    assert query(sim, task_id)["output"]["task_status"] == "SUCCEEDED"
    clock.advance(0.25)  # 250 service seconds > task_ttl
    assert query(sim, task_id)["output"]["task_status"] == "UNKNOWN"


def test_cancel_pending_only(make_sim):
    sim = make_sim(max_concurrent=1, runtime=RuntimeDistribution(kind="fixed", low=5000.0))
    running = create(sim).json()["output"]["task_id"]
    pending = create(sim).json()["output"]["task_id"]
    assert query(sim, pending)["output"]["task_status"] == "PENDING"
    resp = httpx.post(f"{sim.base_url}/tasks/{pending}/cancel", headers=HEADERS)
    assert resp.status_code == 200 and set(resp.json()) == {"request_id"}
    assert query(sim, pending)["output"]["task_status"] == "CANCELED"
    resp = httpx.post(f"{sim.base_url}/tasks/{running}/cancel", headers=HEADERS)
    assert resp.status_code == 400
    assert resp.json()["code"] == "UnsupportedOperation"
    assert resp.json()["message"] == (
        "Failed to cancel the task, please confirm if the task is in PENDING status."
    )
    assert sim.stats()["tasks_by_status"] == {"RUNNING": 1, "CANCELED": 1}


def test_list_tasks(make_sim):
    sim = make_sim(max_concurrent=1, runtime=RuntimeDistribution(kind="fixed", low=5000.0))
    ids = [create(sim).json()["output"]["task_id"] for _ in range(3)]
    resp = httpx.get(f"{sim.base_url}/tasks", params={"page_size": 2}, headers=HEADERS)
    doc = resp.json()
    assert resp.status_code == 200
    assert (doc["total"], doc["total_page"], doc["page_no"], doc["page_size"]) == (3, 2, 1, 2)
    assert [row["task_id"] for row in doc["data"]] == ids[::-1][:2]
    assert isinstance(doc["data"][0]["gmt_create"], int)
    params = {"status": "RUNNING", "model_name": "wan2.2-kf2v-flash"}
    doc = httpx.get(f"{sim.base_url}/tasks", params=params, headers=HEADERS).json()
    assert [row["task_id"] for row in doc["data"]] == [ids[0]]
    params = {"start_time": "20990101000000"}
    assert httpx.get(f"{sim.base_url}/tasks", params=params, headers=HEADERS).json()["total"] == 0
    bad = httpx.get(f"{sim.base_url}/tasks", params={"page_no": "x"}, headers=HEADERS)
    assert bad.status_code == 400
    assert sim.stats()["lists"] == 4


def test_reset_clears_everything(sim):
    task_id = create(sim).json()["output"]["task_id"]
    sim.reset()
    stats = sim.stats()
    assert stats["creates"] == 0 and stats["queries"] == 0
    assert query(sim, task_id)["output"]["task_status"] == "UNKNOWN"


def test_loopback_http_frames(sim, tmp_path):
    (tmp_path / "first.png").write_bytes(FIRST)
    (tmp_path / "last.png").write_bytes(LAST)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        ok = create(
            sim,
            body(
                input={"first_frame_url": f"{base}/first.png", "last_frame_url": f"{base}/last.png"}
            ),
        )
        assert ok.status_code == 200, ok.text
        missing = create(sim, body(input={"first_frame_url": f"{base}/nope.png"}))
        assert missing.status_code == 400
        assert missing.json()["code"] == "BadRequest.InputDownloadFailed"
    finally:
        server.shutdown()
        server.server_close()
