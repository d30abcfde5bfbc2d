"""POST video-synthesis: validate the body and the frames, fingerprint the work, start a task."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Optional

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from kf2v_tasks.dashscope.models import (
    MODEL_RESOLUTIONS,
    NEGATIVE_PROMPT_MAX_CHARS,
    PROMPT_MAX_CHARS,
    SEED_MAX,
    VIDEO_DURATION_SECONDS,
    GenerationOptions,
    Kf2vModel,
    Resolution,
)
from kf2v_tasks.simulator.frames import check_image, fetch_image
from kf2v_tasks.simulator.gate import BAD_PARAMETER, authenticate, inject, rate_limit
from kf2v_tasks.simulator.state import SimState
from kf2v_tasks.simulator.wire import ApiError, connection_reset, dashscope_json


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
