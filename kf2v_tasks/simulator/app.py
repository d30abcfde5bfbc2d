"""The Starlette app: DashScope's kf2v HTTP API, an OSS-like upload/result host, admin.

Routes:
    ``/api/v1/...``  the DashScope endpoints (create, task query/cancel/list, getPolicy)
    ``/_oss/...``    temporary-upload host and signed, expiring result downloads
    ``/_sim/...``    admin: stats, task timelines, reset, fault reconfiguration
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import ipaddress
import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Optional
from urllib.parse import urlsplit

import anyio.to_thread
import httpx
from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kf2v_tasks.dashscope.models import (
    CREATE_PATH,
    MODEL_RESOLUTIONS,
    NEGATIVE_PROMPT_MAX_CHARS,
    PROMPT_MAX_CHARS,
    SEED_MAX,
    SERVICE_TZ,
    VIDEO_DURATION_SECONDS,
    GenerationOptions,
    Kf2vModel,
    Resolution,
    format_service_time,
)
from kf2v_tasks.simulator.faults import FaultConfig, FaultInjector, Injection
from kf2v_tasks.simulator.render import filler_chunks, render_video
from kf2v_tasks.simulator.state import Account, Policy, SimState, SimTask, Upload
from kf2v_tasks.simulator.wire import (
    ApiError,
    StreamResponse,
    connection_reset,
    dashscope_error,
    dashscope_json,
    oss_error,
)


def fingerprint(
    options: GenerationOptions,
    prompt: str | None,
    negative_prompt: str | None,
    first_sha256: str,
    last_sha256: str,
) -> str:
    """The work fingerprint (document version 1), computed on the server's side.

    A copy of the documented hash, not the client's function: the simulator must catch
    a client that hashes the wrong thing, not share its mistake.
    """
    doc = {
        "v": 1,
        "model": options.model.value,
        "parameters": options.parameters(),
        "prompt": prompt or "",
        "negative_prompt": negative_prompt or "",
        "first": first_sha256,
        "last": last_sha256,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


API = "/api/v1"
OSS_ACCESS_KEY_ID = "LTAI5tSimulatorAccessKey"
IMAGE_FORMATS = {"JPEG", "PNG", "BMP", "WEBP"}
EXTEND_SUFFIX = " (prompt extended by the simulator: cinematic lighting, smooth camera motion)"
BAD_PARAMETER = "Required parameter({}) missing or invalid, please check the request parameters."


def _sign(secret: bytes, text: str) -> str:
    digest = hmac.new(secret, text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


# --- request gate: auth, faults, rate limits -------------------------------------------


def authenticate(request: Request, state: SimState) -> Account:
    """The caller's account, or 401 InvalidApiKey as DashScope words it."""
    header = request.headers.get("authorization", "").strip()
    if not header:
        raise ApiError(401, "InvalidApiKey", "No API-key provided.")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "InvalidApiKey", "Invalid API-key provided.")
    if state.config.api_key is not None and key != state.config.api_key:
        raise ApiError(401, "InvalidApiKey", "Invalid API-key provided.")
    return state.account(key)


async def inject(state: SimState, endpoint: str) -> Injection:
    """Draw this request's faults, sleep for ``slow``, raise the HTTP-status ones."""
    injection = state.faults.draw(endpoint)
    if injection.delay:
        await asyncio.sleep(injection.delay)
    if injection.kind == "throttle":
        raise ApiError(429, "Throttling.RateQuota")
    if injection.kind == "error500":
        raise ApiError(500, "InternalError")
    if injection.kind == "error503":
        raise ApiError(503, "ModelUnavailable" if endpoint == "create" else "ServiceUnavailable")
    return injection


def rate_limit(
    state: SimState, acct: Account, endpoint: str, bucket: str, per_second: float
) -> None:
    """429 Throttling.RateQuota when the account's bucket is empty."""
    if not state.allow(acct, bucket, per_second):
        state.throttle(endpoint)
        raise ApiError(429, "Throttling.RateQuota")


# --- create ------------------------------------------------------------------------------


@dataclass
class CreateSpec:
    """A validated create request (frames still unresolved)."""

    options: GenerationOptions
    prompt: Optional[str]
    negative_prompt: Optional[str]
    first_url: str
    last_url: str


def _optional(params: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = params.get(name, default)
    if value is None:
        return default
    # bool is an int subclass: reject True as a seed and 1 as a flag alike.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format(name))
    return value


def parse_create(body: Any) -> CreateSpec:
    """Validate the JSON body; unknown keys (the SDK's ``extend_prompt``, ``function``...) pass."""
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest.IllegalInput", "The input parameter requires json format.")
    model_name = body.get("model")
    if not model_name or not isinstance(model_name, str):
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format("model"))
    try:
        model = Kf2vModel(model_name)
    except ValueError:
        raise ApiError(400, "InvalidParameter", "Model not exist.") from None
    inp = body.get("input")
    if not isinstance(inp, dict):
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format("input"))
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format("parameters"))

    res_name = _optional(params, "resolution", str, Resolution.P720.value)
    try:
        resolution = Resolution(res_name.upper())
    except ValueError:
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format("resolution")) from None
    if resolution not in MODEL_RESOLUTIONS[model]:
        allowed = ", ".join(sorted(r.value for r in MODEL_RESOLUTIONS[model]))
        raise ApiError(
            400,
            "InvalidParameter",
            f"The resolution {res_name} is not supported by model {model.value} (supported: {allowed}).",
        )
    seed = _optional(params, "seed", int, None)
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise ApiError(400, "InvalidParameter", f"The seed must be in [0, {SEED_MAX}].")
    duration = _optional(params, "duration", int, VIDEO_DURATION_SECONDS)
    if duration != VIDEO_DURATION_SECONDS:
        raise ApiError(
            400, "InvalidParameter", "The duration of kf2v videos is fixed at 5 seconds."
        )
    prompt_extend = _optional(params, "prompt_extend", bool, True)
    watermark = _optional(params, "watermark", bool, False)

    prompt = _optional(inp, "prompt", str, None)
    negative = _optional(inp, "negative_prompt", str, None)
    urls = []
    for name in ("first_frame_url", "last_frame_url"):
        url = inp.get(name)
        if not isinstance(url, str) or not url.strip():
            raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format(f"input.{name}"))
        urls.append(url.strip())
    options = GenerationOptions(
        model=model,
        resolution=resolution,
        seed=seed,
        prompt_extend=prompt_extend,
        watermark=watermark,
        duration=5,
    )
    return CreateSpec(options, prompt, negative, urls[0], urls[1])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def fetch_image(
    request: Request, state: SimState, acct: Account, url: str, field: str, model: str
) -> bytes:
    """Resolve a frame URL (data URI, oss:// temp upload or http(s)) to its bytes."""
    cfg = state.config
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise ApiError(
                400, "InvalidParameter", f"The {field} data URI must be data:<mime>;base64,<data>."
            )
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            raise ApiError(
                400, "InvalidParameter", f"The {field} data URI is not valid base64."
            ) from None
    if url.startswith("oss://"):
        if request.headers.get("x-dashscope-ossresourceresolve", "").lower() != "enable":
            raise ApiError(
                400,
                "InvalidParameter",
                f"The {field} is an oss:// url; set header X-DashScope-OssResourceResolve: enable.",
            )
        upload = state.uploads.get(url[len("oss://") :])
        now = state.clock.now()
        if (
            upload is None
            or upload.account != acct.account_id
            or now - upload.created > cfg.real(cfg.upload_ttl)
        ):
            raise ApiError(
                400, "InvalidParameter", f"The {field} oss:// file does not exist or has expired."
            )
        if upload.model != model:
            raise ApiError(
                400,
                "InvalidParameter",
                f"The {field} was uploaded for model {upload.model}, not {model}.",
            )
        return upload.data
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ApiError(
            400,
            "InvalidParameter",
            f"The {field} scheme {parts.scheme or '?'}:// is not supported.",
        )
    if not cfg.allow_remote_fetch and not _is_loopback(parts.hostname or ""):
        raise ApiError(
            400,
            "InvalidParameter.DataInspection",
            "Unable to download the media resource during the data inspection process.",
        )
    try:
        async with httpx.AsyncClient(timeout=20.0, follow_redirects=True) as client:
            resp = await client.get(url)
    except httpx.HTTPError:
        raise ApiError(400, "InvalidURL", "Invalid URL provided in your request.") from None
    if resp.status_code != 200:
        raise ApiError(
            400, "BadRequest.InputDownloadFailed", f"Failed to download the input file: {url}."
        )
    return resp.content


def check_image(data: bytes, field: str, min_side: int, max_side: int, max_bytes: int) -> None:
    """400 InvalidParameter unless ``data`` is a decodable image of an allowed size."""
    if len(data) > max_bytes:
        raise ApiError(
            400, "InvalidParameter", f"The {field} is larger than {max_bytes // 2**20} MB."
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt, (w, h) = img.format, img.size
    except Exception:
        raise ApiError(
            400, "InvalidParameter", f"The {field} cannot be decoded as an image."
        ) from None
    if fmt not in IMAGE_FORMATS:
        raise ApiError(400, "InvalidParameter", f"The {field} format {fmt} is not supported.")
    if not (min_side <= w <= max_side and min_side <= h <= max_side):
        raise ApiError(
            400,
            "InvalidParameter",
            f"The {field} size {w}x{h} is outside [{min_side}, {max_side}] pixels.",
        )


async def create_task(request: Request) -> Response:
    """POST /services/aigc/image2video/video-synthesis."""
    state: SimState = request.app.state.sim
    acct = authenticate(request, state)
    if request.headers.get("x-dashscope-async", "").lower() != "enable":
        raise ApiError(403, "AccessDenied", "current user api does not support synchronous calls.")
    state.counters["create_requests"] += 1
    injection = await inject(state, "create")
    if injection.kind == "reset":
        return connection_reset()
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    model_key = body.get("model") if isinstance(body, dict) else None
    rate_limit(state, acct, "create", f"submit:{model_key}", state.config.submits_per_second)
    spec = parse_create(body)
    model = spec.options.model.value

    cfg = state.config
    if cfg.concurrency_mode == "reject":
        acct.advance(state.clock.now())
        if acct.busy() >= cfg.max_concurrent:
            state.throttle("create")
            raise ApiError(429, "Throttling")

    images = []
    for field, url in (("first_frame_url", spec.first_url), ("last_frame_url", spec.last_url)):
        data = await fetch_image(request, state, acct, url, field, model)
        await anyio.to_thread.run_sync(
            check_image, data, field, cfg.min_image_side, cfg.max_image_side, cfg.max_image_bytes
        )
        images.append(data)

    # Fingerprint over the prompts as sent, so it matches what a client computes locally.
    fp = fingerprint(
        spec.options,
        spec.prompt,
        spec.negative_prompt,
        hashlib.sha256(images[0]).hexdigest(),
        hashlib.sha256(images[1]).hexdigest(),
    )
    task = state.add_task(
        acct,
        fingerprint=fp,
        model=model,
        resolution=spec.options.resolution.value,
        prompt=spec.prompt[:PROMPT_MAX_CHARS] if spec.prompt is not None else None,
        negative_prompt=(
            spec.negative_prompt[:NEGATIVE_PROMPT_MAX_CHARS] if spec.negative_prompt else None
        ),
        prompt_extend=spec.options.prompt_extend,
        watermark=spec.options.watermark,
        seed=spec.options.seed,
        first_image=images[0],
        last_image=images[1],
    )
    if injection.kind == "ambiguous":
        raise ApiError(500, "InternalError")  # the task exists, but the caller can't know
    return dashscope_json({"output": {"task_status": "PENDING", "task_id": task.task_id}})


async def wrong_endpoint(request: Request) -> Response:
    """kf2v on the t2v/i2v path: what old SDKs hit."""
    authenticate(request, request.app.state.sim)
    raise ApiError(400, "InvalidParameter", "url error, please check url!")


# --- task query / cancel / list ------------------------------------------------------------


def video_url(request: Request, state: SimState, task: SimTask) -> str:
    """Signed result URL, valid ``url_ttl`` service seconds from the task's end."""
    assert task.ended is not None
    expires = int(state.clock.unix(task.ended) + state.config.real(state.config.url_ttl)) + 1
    sig = _sign(state.secret, f"{task.task_id}:{expires}")
    base = str(request.base_url).rstrip("/")
    return f"{base}/_oss/results/{task.task_id}.mp4?Expires={expires}&Signature={sig}"


def task_output(request: Request, state: SimState, task: SimTask) -> dict[str, Any]:
    """The ``GET /tasks/{id}`` body of a known task."""
    fmt = lambda t: format_service_time(state.clock.service_time(t))  # noqa: E731
    status = task.status()
    out: dict[str, Any] = {"task_id": task.task_id, "task_status": status}
    out["submit_time"] = fmt(task.created)
    if task.started is not None:
        out["scheduled_time"] = fmt(task.started)
    end = task.ended if task.ended is not None else task.canceled
    if end is not None:
        out["end_time"] = fmt(end)
    body: dict[str, Any] = {"output": out}
    if status == "SUCCEEDED":
        out["video_url"] = video_url(request, state, task)
        if task.prompt is not None:
            out["orig_prompt"] = task.prompt
        if task.prompt_extend:
            out["actual_prompt"] = (task.prompt or "") + EXTEND_SUFFIX
        if task.model == Kf2vModel.WAN22_FLASH.value:
            sr = int(task.resolution.rstrip("P"))
            body["usage"] = {"video_duration": 5, "video_count": 1, "SR": sr}
        else:
            body["usage"] = {"video_count": 1, "video_duration": 5, "video_ratio": "standard"}
    elif status == "FAILED":
        if task.outcome == "fail_moderation":
            out["code"] = "DataInspectionFailed"
            out["message"] = "Output data may contain inappropriate content."
        else:
            out["code"] = "InternalError.Algo"
            out["message"] = "An internal error has occured during algorithm execution."
    return body


async def get_task(request: Request) -> Response:
    """GET /tasks/{task_id}: HTTP 200 for every task-level state, UNKNOWN included."""
    state: SimState = request.app.state.sim
    acct = authenticate(request, state)
    state.counters["queries"] += 1
    if (await inject(state, "query")).kind == "reset":
        return connection_reset()
    rate_limit(state, acct, "query", "query", state.config.queries_per_second)
    task_id = request.path_params["task_id"]
    task = state.lookup(task_id, acct)
    if task is None:
        return dashscope_json({"output": {"task_id": task_id, "task_status": "UNKNOWN"}})
    if task.status() == "SUCCEEDED":
        request.app.state.videos.prefetch(task)
    return dashscope_json(task_output(request, state, task))


async def cancel_task(request: Request) -> Response:
    """POST /tasks/{task_id}/cancel: only PENDING tasks can be canceled."""
    state: SimState = request.app.state.sim
    acct = authenticate(request, state)
    state.counters["cancels"] += 1
    if (await inject(state, "cancel")).kind == "reset":
        return connection_reset()
    task = state.lookup(request.path_params["task_id"], acct)
    if task is None or not state.accounts[acct.account_id].cancel(task, state.clock.now()):
        raise ApiError(
            400,
            "UnsupportedOperation",
            "Failed to cancel the task, please confirm if the task is in PENDING status.",
        )
    return dashscope_json({})


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format(name)) from None
    if not low <= value <= high:
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format(name))
    return value


def _time_param(request: Request, name: str) -> Optional[datetime]:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return datetime.strptime(raw, "%Y%m%d%H%M%S").replace(tzinfo=SERVICE_TZ)
    except ValueError:
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format(name)) from None


async def list_tasks(request: Request) -> Response:
    """GET /tasks: the flat, epoch-millisecond list shape."""
    state: SimState = request.app.state.sim
    acct = authenticate(request, state)
    state.counters["lists"] += 1
    if (await inject(state, "list")).kind == "reset":
        return connection_reset()
    rate_limit(state, acct, "list", "query", state.config.queries_per_second)
    page_no = _int_param(request, "page_no", 1, 1, 1_000_000)
    page_size = _int_param(request, "page_size", 10, 1, 100)
    start, end = _time_param(request, "start_time"), _time_param(request, "end_time")
    status = request.query_params.get("status") or None
    model_name = request.query_params.get("model_name") or None
    task_id = request.query_params.get("task_id") or None
    now = state.clock.now()
    acct.advance(now)
    ms = lambda t: int(state.clock.service_time(t).timestamp() * 1000)  # noqa: E731
    rows = []
    for t in sorted(state.tasks.values(), key=lambda t: -t.seq):
        if t.account != acct.account_id or state.expired(t, now):
            continue
        created = state.clock.service_time(t.created)
        if (status and t.status() != status.upper()) or (model_name and t.model != model_name):
            continue
        if (
            (task_id and t.task_id != task_id)
            or (start and created < start)
            or (end and created > end)
        ):
            continue
        row: dict[str, Any] = {
            "api_key_id": acct.account_id,
            "caller_parent_id": acct.account_id,
            "caller_uid": acct.account_id,
            "gmt_create": ms(t.created),
            "model_name": t.model,
            "region": "cn-beijing",
            "request_id": t.task_id,
            "status": t.status(),
            "task_id": t.task_id,
            "user_api_unique_key": f"apikey:v1:aigc:image2video:video-synthesis:{t.model}",
        }
        if t.started is not None:
            row["start_time"] = ms(t.started)
        end_t = t.ended if t.ended is not None else t.canceled
        if end_t is not None:
            row["end_time"] = ms(end_t)
        rows.append(row)
    total = len(rows)
    page = rows[(page_no - 1) * page_size : page_no * page_size]
    return dashscope_json(
        {
            "total": total,
            "data": page,
            "total_page": (total + page_size - 1) // page_size,
            "page_no": page_no,
            "page_size": page_size,
        }
    )


# --- temporary uploads ---------------------------------------------------------------------


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


# --- result download -------------------------------------------------------------------------


class VideoCache:
    """Renders each task's video once (in a worker thread) and keeps the bytes."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self._videos: dict[str, asyncio.Future[bytes]] = {}

    def clear(self) -> None:
        """Drop every cached video."""
        self._videos.clear()

    def prefetch(self, task: SimTask) -> None:
        """Start rendering early (first time a client sees SUCCEEDED)."""
        if self.state.config.video_bytes is None:
            self._future(task)

    def _future(self, task: SimTask) -> asyncio.Future[bytes]:
        fut = self._videos.get(task.task_id)
        if fut is None:
            cfg = self.state.config
            self.state.counters["renders"] += 1
            fut = asyncio.ensure_future(
                anyio.to_thread.run_sync(
                    lambda: render_video(
                        task.first_image,
                        task.last_image,
                        task.resolution,
                        tiny=cfg.render == "tiny",
                        fps=cfg.fps,
                        seconds=cfg.video_seconds,
                    )
                )
            )
            self._videos[task.task_id] = fut
        return fut

    async def get(self, task: SimTask) -> bytes:
        """The task's MP4 bytes."""
        return await asyncio.shield(self._future(task))


def parse_range(header: Optional[str], size: int) -> Optional[tuple[int, int]]:
    """``(start, end_inclusive)`` of a single ``bytes=`` range, None for the whole body.

    Raises:
        ValueError: unsatisfiable or malformed range (answered with 416).
    """
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not match or (not match.group(1) and not match.group(2)):
        raise ValueError(header)
    if not match.group(1):  # suffix range: the last N bytes
        n = int(match.group(2))
        if n == 0:
            raise ValueError(header)
        return max(0, size - n), size - 1
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) else size - 1
    if start >= size or end < start:
        raise ValueError(header)
    return start, min(end, size - 1)


async def download(request: Request) -> Response:
    """GET /_oss/results/{task_id}.mp4: signed, expiring, resumable with Range."""
    state: SimState = request.app.state.sim
    state.counters["downloads"] += 1
    injection = state.faults.draw("download")
    if injection.delay:
        await asyncio.sleep(injection.delay)
    kind = injection.kind
    if kind == "reset":
        return connection_reset()
    if kind == "throttle":
        return oss_error(503, "SlowDown", "Please reduce your request rate.")
    if kind in ("error500", "error503"):
        status = 500 if kind == "error500" else 503
        return oss_error(
            status, "InternalError", "We encountered an internal error. Please try again."
        )
    task_id = request.path_params["task_id"]
    expires = request.query_params.get("Expires", "")
    signature = request.query_params.get("Signature", "")
    if not expires.isdigit() or not hmac.compare_digest(
        signature, _sign(state.secret, f"{task_id}:{expires}")
    ):
        return oss_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    if kind == "expired" or time.time() > int(expires):
        return oss_error(403, "AccessDenied", "Request has expired.")
    task = state.tasks.get(task_id)
    if task is None or task.status() != "SUCCEEDED":
        return oss_error(404, "NoSuchKey", "The specified key does not exist.")

    cfg = state.config
    if cfg.video_bytes is not None:
        size = cfg.video_bytes
        data: Optional[bytes] = None
    else:
        data = await request.app.state.videos.get(task)
        size = len(data)
    try:
        span = parse_range(request.headers.get("range"), size)
    except ValueError:
        return Response(b"", status_code=416, headers={"Content-Range": f"bytes */{size}"})
    start, end = span if span is not None else (0, size - 1)
    length = end - start + 1 if size else 0
    headers = {
        "Content-Type": "video/mp4",
        "Content-Length": str(length),
        "Accept-Ranges": "bytes",
        "ETag": f'"{hashlib.md5(task_id.encode()).hexdigest().upper()}"',
        "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT",
    }
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if data is not None:
        chunks: Any = (data[i : min(i + 2**20, end + 1)] for i in range(start, end + 1, 2**20))
    else:
        chunks = _bounded(filler_chunks(task_id, end + 1, start), length)
    return StreamResponse(
        chunks,
        status_code=206 if span is not None else 200,
        headers=headers,
        cut_after=max(1, length // 2) if kind == "cut" else None,
        on_bytes=lambda n: state.counters.update(download_bytes=n),
    )


def _bounded(chunks: Any, length: int) -> Any:
    sent = 0
    for chunk in chunks:
        if sent >= length:
            return
        chunk = chunk[: length - sent]
        sent += len(chunk)
        yield chunk


# --- admin ---------------------------------------------------------------------------------


async def admin_stats(request: Request) -> Response:
    """GET /_sim/stats."""
    return JSONResponse(request.app.state.sim.stats())


async def admin_tasks(request: Request) -> Response:
    """GET /_sim/tasks."""
    return JSONResponse(request.app.state.sim.task_rows())


async def admin_reset(request: Request) -> Response:
    """POST /_sim/reset: forget tasks, uploads, counters; reseed."""
    request.app.state.sim.reset()
    request.app.state.videos.clear()
    return JSONResponse({"ok": True})


async def admin_faults(request: Request) -> Response:
    """GET or POST /_sim/faults (JSON FaultConfig)."""
    state: SimState = request.app.state.sim
    if request.method == "POST":
        try:
            config = FaultConfig.from_dict(await request.json())
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        state.set_faults(FaultInjector(config, state.config.seed))
    return JSONResponse(state.config.faults.to_dict())


async def admin_health(request: Request) -> Response:
    """GET /_sim/health."""
    return JSONResponse({"ok": True})


# --- app -------------------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return dashscope_error(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = "NotFound" if exc.status_code == 404 else "MethodNotAllowed"
    return dashscope_error(ApiError(exc.status_code, code, f"{exc.detail}: {request.url.path}"))


def build_app(state: SimState) -> Starlette:
    """The ASGI app serving one :class:`SimState`."""
    routes = [
        Route(API + CREATE_PATH, create_task, methods=["POST"]),
        Route(
            API + "/services/aigc/video-generation/video-synthesis",
            wrong_endpoint,
            methods=["POST"],
        ),
        Route(API + "/tasks", list_tasks, methods=["GET"]),
        Route(API + "/tasks/{task_id}", get_task, methods=["GET"]),
        Route(API + "/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
        Route(API + "/uploads", get_policy, methods=["GET"]),
        Route("/_oss/upload", oss_upload, methods=["POST"]),
        Route("/_oss/results/{task_id}.mp4", download, methods=["GET", "HEAD"]),
        Route("/_sim/stats", admin_stats, methods=["GET"]),
        Route("/_sim/tasks", admin_tasks, methods=["GET"]),
        Route("/_sim/reset", admin_reset, methods=["POST"]),
        Route("/_sim/faults", admin_faults, methods=["GET", "POST"]),
        Route("/_sim/health", admin_health, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes, exception_handlers={ApiError: _api_error, HTTPException: _http_error}
    )
    app.state.sim = state
    app.state.videos = VideoCache(state)
    return app
