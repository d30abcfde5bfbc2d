"""Each injected fault kind, its counting, parsing and seeded replay."""

from __future__ import annotations

import time

import httpx
import pytest

from kf2v_tasks.simulator import FaultConfig
from kf2v_tasks.simulator.faults import FaultInjector

from .simkit import HEADERS, create, query, wait_status


def always(name: str, slow_seconds: float = 0.3) -> FaultConfig:
    return FaultConfig({name: 1.0}, slow_seconds=slow_seconds)


def test_parse_and_validation():
    cfg = FaultConfig.parse("create.throttle=0.05, query.reset=0.03,slow_seconds=1.5")
    assert cfg.rates == {"create.throttle": 0.05, "query.reset": 0.03}
    assert cfg.slow_seconds == 1.5
    assert FaultConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        FaultConfig.parse("query.ambiguous=0.1")
    with pytest.raises(ValueError):
        FaultConfig.parse("query.error500=2")


def test_seeded_replay():
    cfg = FaultConfig.parse("query.error500=0.3,query.reset=0.2,query.slow=0.1")
    injectors = [FaultInjector(cfg, seed=5) for _ in range(2)]
    runs = [[inj.draw("query") for _ in range(200)] for inj in injectors]
    assert runs[0] == runs[1]
    kinds = [i.kind for i in runs[0]]
    assert 30 < kinds.count("error500") < 90 and 15 < kinds.count("reset") < 70


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("create.throttle", 429, "Throttling.RateQuota"),
        ("create.error500", 500, "InternalError"),
        ("create.error503", 503, "ModelUnavailable"),
    ],
)
def test_create_http_faults(make_sim, fault, status, code):
    sim = make_sim(faults=always(fault))
    resp = create(sim)
    assert (resp.status_code, resp.json()["code"]) == (status, code)
    stats = sim.stats()
    assert stats["faults"] == {fault: 1} and stats["creates"] == 0


def test_create_ambiguous_creates_the_task(make_sim):
    sim = make_sim(faults=always("create.ambiguous"))
    resp = create(sim)
    assert resp.status_code == 500 and resp.json()["code"] == "InternalError"
    assert sim.stats()["creates"] == 1 and len(sim.tasks()) == 1


@pytest.mark.parametrize("endpoint", ["create", "query", "list", "policy"])
def test_reset_is_a_transport_error(make_sim, endpoint):
    sim = make_sim(faults=always(f"{endpoint}.reset"))
    with pytest.raises(httpx.TransportError):
        if endpoint == "create":
            create(sim)
        elif endpoint == "query":
            httpx.get(f"{sim.base_url}/tasks/x", headers=HEADERS)
        elif endpoint == "list":
            httpx.get(f"{sim.base_url}/tasks", headers=HEADERS)
        else:
            httpx.get(f"{sim.base_url}/uploads?action=getPolicy&model=m", headers=HEADERS)
    assert sim.stats()["faults"] == {f"{endpoint}.reset": 1}


def test_query_faults_switched_at_runtime(sim):
    task_id = create(sim).json()["output"]["task_id"]
    sim.set_faults(always("query.error503"))
    resp = httpx.get(f"{sim.base_url}/tasks/{task_id}", headers=HEADERS)
    assert (resp.status_code, resp.json()["code"]) == (503, "ServiceUnavailable")
    sim.set_faults(always("query.slow", slow_seconds=0.3))
    started = time.monotonic()
    query(sim, task_id)
    assert time.monotonic() - started >= 0.3
    sim.set_faults(always("cancel.error500"))
    resp = httpx.post(f"{sim.base_url}/tasks/{task_id}/cancel", headers=HEADERS)
    assert resp.status_code == 500
    sim.set_faults(FaultConfig())
    assert sim.stats()["faults"] == {"query.error503": 1, "query.slow": 1, "cancel.error500": 1}


@pytest.mark.parametrize(
    ("fault", "code", "message"),
    [
        (
            "task.fail_moderation",
            "DataInspectionFailed",
            "Output data may contain inappropriate content.",
        ),
        ("task.fail_internal", "InternalError.Algo", None),
    ],
)
def test_task_failures(make_sim, fault, code, message):
    sim = make_sim(faults=always(fault))
    task_id = create(sim).json()["output"]["task_id"]
    doc = wait_status(sim, task_id, {"FAILED", "SUCCEEDED"})
    out = doc["output"]
    assert out["task_status"] == "FAILED" and out["code"] == code and "usage" not in doc
    assert message is None or out["message"] == message
    assert "video_url" not in out


def test_download_cut_and_expired(make_sim):
    sim = make_sim(video_bytes=2 * 2**20)
    task_id = create(sim).json()["output"]["task_id"]
    url = wait_status(sim, task_id, {"SUCCEEDED"})["output"]["video_url"]
    sim.set_faults(always("download.cut"))
    received = 0
    with pytest.raises(httpx.TransportError):
        with httpx.stream("GET", url) as resp:
            assert resp.status_code == 200
            for chunk in resp.iter_raw():
                received += len(chunk)
    assert 0 < received < 2 * 2**20
    sim.set_faults(always("download.expired"))
    resp = httpx.get(url)
    assert resp.status_code == 403 and b"Request has expired." in resp.content
    sim.set_faults(FaultConfig())
    assert len(httpx.get(url).content) == 2 * 2**20
    assert sim.stats()["faults"] == {"download.cut": 1, "download.expired": 1}
