"""Temporary-upload flow: getPolicy, OSS PostObject multipart, oss:// resolution."""

from __future__ import annotations

import httpx

from .simkit import FIRST, HEADERS, LAST, body, create
from fake_clock import manual_sim_clock


def policy(sim, model: str = "wan2.2-kf2v-flash") -> dict:
    resp = httpx.get(
        f"{sim.base_url}/uploads", params={"action": "getPolicy", "model": model}, headers=HEADERS
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def upload(data: dict, name: str, content: bytes, **overrides: str) -> httpx.Response:
    """POST the form exactly as the SDK does (field order included)."""
    form = {
        "OSSAccessKeyId": data["oss_access_key_id"],
        "Signature": data["signature"],
        "policy": data["policy"],
        "key": f"{data['upload_dir']}/{name}",
        "x-oss-object-acl": data["x_oss_object_acl"],
        "x-oss-forbid-overwrite": data["x_oss_forbid_overwrite"],
        "success_action_status": "200",
        "x-oss-content-type": "image/png",
    }
    form.update(overrides)
    return httpx.post(data["upload_host"], data=form, files={"file": (name, content, "image/png")})


def test_policy_shape(sim):
    data = policy(sim)
    assert set(data) == {
        "policy",
        "signature",
        "upload_dir",
        "upload_host",
        "expire_in_seconds",
        "max_file_size_mb",
        "capacity_limit_mb",
        "oss_access_key_id",
        "x_oss_object_acl",
        "x_oss_forbid_overwrite",
    }
    assert data["upload_host"] == sim.base_url.replace("/api/v1", "/_oss/upload")
    assert data["upload_dir"].startswith("dashscope-instant/")
    resp = httpx.get(f"{sim.base_url}/uploads", params={"action": "getPolicy"}, headers=HEADERS)
    assert resp.status_code == 400
    assert (
        httpx.get(
            f"{sim.base_url}/uploads", params={"action": "getPolicy", "model": "m"}
        ).status_code
        == 401
    )


def test_upload_and_oss_resolution(sim):
    urls = []
    for name, content in (("first.png", FIRST), ("last.png", LAST)):
        data = policy(sim)
        resp = upload(data, name, content)
        assert resp.status_code == 200, resp.text
        urls.append(f"oss://{data['upload_dir']}/{name}")
        # x-oss-forbid-overwrite: a second upload to the same key is refused.
        assert upload(data, name, content).status_code == 409
    payload = body(input={"first_frame_url": urls[0], "last_frame_url": urls[1]})
    resp = create(sim, payload)
    assert resp.status_code == 400 and "OssResourceResolve" in resp.json()["message"]
    resp = create(sim, payload, headers={**HEADERS, "X-DashScope-OssResourceResolve": "enable"})
    assert resp.status_code == 200, resp.text
    stats = sim.stats()
    assert stats["uploads"] == 4 and stats["policies"] == 2
    # Temp files are bound to the model named in getPolicy.
    wrong = body(
        model="wanx2.1-kf2v-plus",
        parameters={"resolution": "720P"},
        input={"first_frame_url": urls[0], "last_frame_url": urls[1]},
    )
    resp = create(sim, wrong, headers={**HEADERS, "X-DashScope-OssResourceResolve": "enable"})
    assert resp.status_code == 400
    missing = body(input={"first_frame_url": urls[0] + "x", "last_frame_url": urls[1]})
    resp = create(sim, missing, headers={**HEADERS, "X-DashScope-OssResourceResolve": "enable"})
    assert resp.status_code == 400


def test_upload_rejections(make_sim):
    # 1500 service seconds = 1.5 real seconds at speed 1000, on the simulator's stopped
    # clock: the first checks cannot outlive the policy, and its expiry needs no wait.
    sim = make_sim(policy_ttl=1500.0)
    clock = manual_sim_clock(sim)
    data = policy(sim)
    bad_sig = upload(data, "a.png", FIRST, Signature="AAAA")
    assert bad_sig.status_code == 403 and b"SignatureDoesNotMatch" in bad_sig.content
    bad_key = upload(data, "a.png", FIRST, key="dashscope-instant/elsewhere/a.png")
    assert bad_key.status_code == 403 and b"starts-with" in bad_key.content
    bad_id = upload(data, "a.png", FIRST, OSSAccessKeyId="nope")
    assert bad_id.status_code == 403
    clock.advance(1.6)
    expired = upload(data, "a.png", FIRST)
    assert expired.status_code == 403 and b"Policy expired" in expired.content
