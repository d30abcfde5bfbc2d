"""Temporary uploads: GET /uploads?action=getPolicy, and the OSS-like host it points uploads to."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import uuid
from datetime import UTC, timedelta
from typing import Optional

from starlette.requests import Request
from starlette.responses import Response

from kf2v_tasks.simulator.gate import BAD_PARAMETER, authenticate, inject
from kf2v_tasks.simulator.state import Policy, SimState, Upload
from kf2v_tasks.simulator.wire import ApiError, connection_reset, dashscope_json, oss_error

OSS_ACCESS_KEY_ID = "LTAI5tSimulatorAccessKey"


async def get_policy(request: Request) -> Response:
    """GET /uploads?action=getPolicy&model=M: a credential for this server's upload host."""
    state: SimState = request.app.state.sim
    acct = authenticate(request, state)
    state.counters["policies"] += 1
    if (await inject(state, "policy")).kind == "reset":
        return connection_reset()
    if request.query_params.get("action") != "getPolicy":
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format("action"))
    model = request.query_params.get("model")
    if not model:
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format("model"))
    now = state.clock.now()
    wall = state.clock.service_time(now)
    rid = str(uuid.uuid4())
    upload_dir = f"dashscope-instant/{acct.account_id}/{wall:%Y-%m-%d}/{rid}"
    max_mb = 100
    expiration = wall.astimezone(UTC) + timedelta(seconds=state.config.policy_ttl)
    policy_doc = {
        "expiration": expiration.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "conditions": [
            ["content-length-range", 0, max_mb * 2**20],
            ["starts-with", "$key", upload_dir],
            {"bucket": "dashscope-file-mgr"},
            {"x-oss-object-acl": "private"},
            {"x-oss-forbid-overwrite": "true"},
        ],
    }
    policy = base64.b64encode(json.dumps(policy_doc).encode()).decode()
    expires = now + state.config.real(state.config.policy_ttl)
    state.policies[upload_dir] = Policy(upload_dir, acct.account_id, model, expires)
    base = str(request.base_url).rstrip("/")
    data = {
        "policy": policy,
        "signature": _policy_signature(state.secret, policy),
        "upload_dir": upload_dir,
        "upload_host": f"{base}/_oss/upload",
        "expire_in_seconds": int(state.config.policy_ttl),
        "max_file_size_mb": max_mb,
        "capacity_limit_mb": 999999999,
        "oss_access_key_id": OSS_ACCESS_KEY_ID,
        "x_oss_object_acl": "private",
        "x_oss_forbid_overwrite": "true",
    }
    return dashscope_json({"data": data, "request_id": rid})


def _policy_signature(secret: bytes, policy: str) -> str:
    return base64.b64encode(hmac.new(secret, policy.encode(), hashlib.sha1).digest()).decode()


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[Optional[str], bytes]]:
    """Minimal multipart/form-data parser: ``{name: (filename, data)}``."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match or not content_type.lower().startswith("multipart/form-data"):
        raise ValueError("not multipart/form-data")
    delimiter = b"--" + match.group(1).encode()
    fields: dict[str, tuple[Optional[str], bytes]] = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, sep, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = next(
            (
                line.decode("utf-8", "replace")
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-disposition")
            ),
            "",
        )
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        if name:
            fields[name.group(1)] = (
                filename.group(1) if filename else None,
                data.removesuffix(b"\r\n"),
            )
    return fields


async def oss_upload(request: Request) -> Response:
    """POST /_oss/upload: OSS PostObject, as the SDK sends it (no DashScope auth)."""
    state: SimState = request.app.state.sim
    state.counters["uploads"] += 1
    injection = state.faults.draw("upload")
    if injection.delay:
        await asyncio.sleep(injection.delay)
    if injection.kind == "reset":
        return connection_reset()
    if injection.kind == "throttle":
        return oss_error(503, "SlowDown", "Please reduce your request rate.")
    if injection.kind in ("error500", "error503"):
        status = 500 if injection.kind == "error500" else 503
        return oss_error(
            status, "InternalError", "We encountered an internal error. Please try again."
        )
    try:
        form = parse_multipart(request.headers.get("content-type", ""), await request.body())
    except ValueError:
        return oss_error(400, "InvalidArgument", "The request must be multipart/form-data.")
    text = lambda name: form.get(name, (None, b""))[1].decode("utf-8", "replace")  # noqa: E731
    if text("OSSAccessKeyId") != OSS_ACCESS_KEY_ID:
        return oss_error(
            403,
            "InvalidAccessKeyId",
            "The OSS Access Key Id you provided does not exist in our records.",
        )
    policy = text("policy")
    if not hmac.compare_digest(text("Signature"), _policy_signature(state.secret, policy)):
        return oss_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    try:
        conditions = json.loads(base64.b64decode(policy))["conditions"]
        prefix = next(
            c[2] for c in conditions if isinstance(c, list) and c[:2] == ["starts-with", "$key"]
        )
    except (ValueError, KeyError, StopIteration, TypeError):
        return oss_error(400, "InvalidPolicyDocument", "Invalid Policy: Invalid Simple-Condition.")
    grant = state.policies.get(prefix)
    now = state.clock.now()
    if grant is None or now > grant.expires:
        return oss_error(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
    key = text("key")
    if not key.startswith(prefix + "/") or len(key) <= len(prefix) + 1:
        return oss_error(
            403,
            "AccessDenied",
            f'Invalid according to Policy: Policy Condition failed: ["starts-with", "$key", "{prefix}"]',
        )
    if "file" not in form:
        return oss_error(400, "InvalidArgument", "The file field is missing.")
    data = form["file"][1]
    if len(data) > 100 * 2**20:
        return oss_error(
            400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size."
        )
    if text("x-oss-forbid-overwrite") == "true" and key in state.uploads:
        return oss_error(
            409,
            "FileAlreadyExists",
            "The object you specified already exists and can not be overwritten.",
        )
    state.uploads[key] = Upload(data, grant.account, grant.model, now)
    status = 200 if text("success_action_status") == "200" else 204
    return Response(b"", status_code=status, headers={"x-oss-request-id": grant.upload_dir[-24:]})
