"""POST video-synthesis: validate the body and the frames, fingerprint the work, start a task.

Two create paths, one per protocol of the models table (:mod:`kf2v_tasks.dashscope.catalog`):
``image2video`` takes ``first_frame_url``/``last_frame_url`` (kf2v models), and
``video-generation`` takes an ``input.media`` list (``wan2.7-i2v``: ``first_frame``,
``last_frame``, ``driving_audio``, ``first_clip``, in the combinations of §16). A model on
the other protocol's path, or one protocol's inputs on the other's path, is refused, as a
strict server does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Optional

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from kf2v_tasks.dashscope.catalog import ModelSpec, Protocol, active_catalog
from kf2v_tasks.dashscope.models import (
    SEED_MAX,
    GenerationOptions,
    Resolution,
)
from kf2v_tasks.simulator.clips import check_clip
from kf2v_tasks.simulator.frames import check_image, fetch_image
from kf2v_tasks.simulator.gate import BAD_PARAMETER, authenticate, inject, rate_limit
from kf2v_tasks.simulator.soundtrack import probe_audio
from kf2v_tasks.simulator.state import Account, SimState
from kf2v_tasks.simulator.wire import ApiError, connection_reset, dashscope_json


def fingerprint(
    options: GenerationOptions,
    prompt: str | None,
    negative_prompt: str | None,
    first_sha256: str,
    last_sha256: str,
    audio_sha256: str | None = None,
    clip_sha256: str | None = None,
) -> str:
    """The work fingerprint (document version 1), computed on the server's side.

    A copy of the documented hash, not the client's function: the simulator must catch
    a client that hashes the wrong thing, not share its mistake. The driving audio's and
    the first_clip's sha256 enter the document only when there is one; a clip's work has
    ``"first": ""`` (and ``"last": ""`` without a last frame).
    """
    doc = {
        "v": 1,
        "model": options.model,
        "parameters": options.parameters(),
        "prompt": prompt or "",
        "negative_prompt": negative_prompt or "",
        "first": first_sha256,
        "last": last_sha256,
    }
    if audio_sha256:
        doc["audio"] = audio_sha256
    if clip_sha256:
        doc["clip"] = clip_sha256
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass
class CreateSpec:
    """A validated create request (frames still unresolved)."""

    options: GenerationOptions
    prompt: Optional[str]
    negative_prompt: Optional[str]
    first_url: Optional[str]  # None: the work continues clip_url
    last_url: Optional[str]
    spec: ModelSpec
    audio_url: Optional[str] = None
    clip_url: Optional[str] = None


def _optional(params: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = params.get(name, default)
    if value is None:
        return default
    # bool is an int subclass: reject True as a seed and 1 as a flag alike.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format(name))
    return value


_MEDIA_TYPES = ("first_frame", "last_frame", "driving_audio", "first_clip")
#: The media combinations the service accepts (§16); any other is an error.
_COMBINATIONS = {
    frozenset(c)
    for c in (
        ("first_frame",),
        ("first_frame", "driving_audio"),
        ("first_frame", "last_frame"),
        ("first_frame", "last_frame", "driving_audio"),
        ("first_clip",),
        ("first_clip", "last_frame"),
    )
}
_WRONG_PATH = "url error, please check url!"


def parse_create(body: Any, protocol: Protocol = Protocol.KF2V) -> CreateSpec:
    """Validate the JSON body sent to ``protocol``'s path.

    Unknown keys (the SDK's ``extend_prompt``, ``function``...) pass; the other
    protocol's inputs do not.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest.IllegalInput", "The input parameter requires json format.")
    model_name = body.get("model")
    if not model_name or not isinstance(model_name, str):
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format("model"))
    spec = active_catalog().find(model_name)
    if spec is None:
        raise ApiError(400, "InvalidParameter", "Model not exist.")
    if spec.protocol is not protocol:
        raise ApiError(400, "InvalidParameter", _WRONG_PATH)
    inp = body.get("input")
    if not isinstance(inp, dict):
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format("input"))
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format("parameters"))

    res_name = _optional(params, "resolution", str, spec.resolution)
    try:
        resolution = Resolution(res_name.upper())
    except ValueError:
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format("resolution")) from None
    if resolution.value not in spec.resolutions:
        allowed = ", ".join(sorted(spec.resolutions))
        raise ApiError(
            400,
            "InvalidParameter",
            f"The resolution {res_name} is not supported by model {model_name} "
            f"(supported: {allowed}).",
        )
    seed = _optional(params, "seed", int, None)
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise ApiError(400, "InvalidParameter", f"The seed must be in [0, {SEED_MAX}].")
    duration = _optional(params, "duration", int, spec.default_duration)
    if not spec.allows_duration(duration):
        if spec.duration_min == spec.duration_max:
            text = f"The duration of {model_name} videos is fixed at {spec.duration_min} seconds."
        else:
            text = (
                f"The duration must be in [{spec.duration_min}, {spec.duration_max}] seconds "
                f"for model {model_name}."
            )
        raise ApiError(400, "InvalidParameter", text)
    prompt_extend = _optional(params, "prompt_extend", bool, True)
    watermark = _optional(params, "watermark", bool, False)

    prompt = _optional(inp, "prompt", str, None)
    negative = _optional(inp, "negative_prompt", str, None)
    clip = None
    if protocol is Protocol.MEDIA:
        first, last, audio, clip = _media_inputs(inp, spec)
    else:
        first, last, audio = _kf2v_inputs(inp)
    options = GenerationOptions(
        model=model_name,
        resolution=resolution,
        seed=seed,
        prompt_extend=prompt_extend,
        watermark=watermark,
        duration=duration,
    )
    return CreateSpec(options, prompt, negative, first, last, spec, audio, clip)


def _kf2v_inputs(inp: dict[str, Any]) -> tuple[str, str, None]:
    if "media" in inp:
        raise ApiError(400, "InvalidParameter", "input.media is not supported by this model.")
    urls = []
    for name in ("first_frame_url", "last_frame_url"):
        url = inp.get(name)
        if not isinstance(url, str) or not url.strip():
            raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format(f"input.{name}"))
        urls.append(url.strip())
    return urls[0], urls[1], None


def _media_inputs(
    inp: dict[str, Any], spec: ModelSpec
) -> tuple[Optional[str], Optional[str], Optional[str], Optional[str]]:
    """(first_frame, last_frame, driving_audio, first_clip) in an accepted combination.

    Without a last_frame the first frame is held; a clip alone is continued freely.
    """
    for name in ("first_frame_url", "last_frame_url", "img_url"):
        if name in inp:
            raise ApiError(
                400,
                "InvalidParameter",
                f"input.{name} is not supported by model {spec.name}; send input.media.",
            )
    media = inp.get("media")
    if not isinstance(media, list) or not media:
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format("input.media"))
    urls: dict[str, str] = {}
    for item in media:
        kind = item.get("type") if isinstance(item, dict) else None
        url = item.get("url") if isinstance(item, dict) else None
        if kind not in _MEDIA_TYPES:
            raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format("input.media.type"))
        if not isinstance(url, str) or not url.strip():
            raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format("input.media.url"))
        if kind in urls:
            raise ApiError(400, "InvalidParameter", f"input.media has more than one {kind} item.")
        urls[kind] = url.strip()
    if "first_frame" not in urls and "first_clip" not in urls:
        raise ApiError(400, "InvalidParameter", BAD_PARAMETER.format("input.media.first_frame"))
    if frozenset(urls) not in _COMBINATIONS:
        raise ApiError(
            400,
            "InvalidParameter",
            f"input.media combination {'+'.join(sorted(urls))} is not supported.",
        )
    for kind, takes in (("driving_audio", spec.audio), ("first_clip", spec.clip)):
        if kind in urls and not takes:
            raise ApiError(
                400, "InvalidParameter", f"{kind} is not supported by model {spec.name}."
            )
    first = urls.get("first_frame")
    last = urls.get("last_frame", first)
    return first, last, urls.get("driving_audio"), urls.get("first_clip")


async def create_task(request: Request) -> Response:
    """POST /services/aigc/image2video/video-synthesis (kf2v models)."""
    return await _create(request, Protocol.KF2V)


async def create_media_task(request: Request) -> Response:
    """POST /services/aigc/video-generation/video-synthesis (media models: wan2.7-i2v)."""
    return await _create(request, Protocol.MEDIA)


async def _create(request: Request, protocol: Protocol) -> Response:
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
    # Per (account, model) at the model's own rate, checked before the body is validated.
    rate = state.model_limits(model_key if isinstance(model_key, str) else "")[1]
    rate_limit(state, acct, "create", f"submit:{model_key}", rate)
    spec = parse_create(body, protocol)
    model = spec.options.model

    cfg = state.config
    if cfg.concurrency_mode == "reject":
        _reject_when_lane_full(state, acct, model)

    images = []
    fields = ("first_frame_url", "last_frame_url")
    limits = (cfg.min_image_side, cfg.max_image_side, cfg.max_image_bytes, None)
    if protocol is Protocol.MEDIA:  # the model's own bounds (§16: 240..8000, 1:8..8:1, 20 MB)
        fields = ("first_frame", "last_frame")
        s = spec.spec
        limits = (s.min_side, s.max_side, s.max_frame_bytes, s.max_aspect)
    hashes = []  # of the frames as sent; a frame not sent hashes as ""
    clip = clip_end = None
    if spec.clip_url is not None:
        clip = await fetch_image(request, state, acct, spec.clip_url, "first_clip", model)
        clip_end = await anyio.to_thread.run_sync(check_clip, clip)
    for field, url in zip(fields, (spec.first_url, spec.last_url), strict=True):
        if url is None:  # a clip's work: it starts (or, alone, ends too) on the clip's end
            images.append(clip_end)
            hashes.append("")
            continue
        data = await fetch_image(request, state, acct, url, field, model)
        await anyio.to_thread.run_sync(check_image, data, field, *limits)
        images.append(data)
        hashes.append(hashlib.sha256(data).hexdigest())
    audio = None
    if spec.audio_url is not None:
        audio = await fetch_image(request, state, acct, spec.audio_url, "driving_audio", model)
        await anyio.to_thread.run_sync(_check_audio, audio, spec.spec)

    # Fingerprint over the prompts as sent, so it matches what a client computes locally.
    fp = fingerprint(
        spec.options,
        spec.prompt,
        spec.negative_prompt,
        *hashes,
        hashlib.sha256(audio).hexdigest() if audio is not None else None,
        hashlib.sha256(clip).hexdigest() if clip is not None else None,
    )
    if cfg.concurrency_mode == "reject":
        # Checked again with no await before the task is added: two creates that passed
        # the first check together (while their frames were fetched) cannot both get in.
        _reject_when_lane_full(state, acct, model)
    task = state.add_task(
        acct,
        fingerprint=fp,
        model=model,
        resolution=spec.options.resolution.value,
        prompt=spec.prompt[: spec.spec.prompt_max_chars] if spec.prompt is not None else None,
        negative_prompt=(
            spec.negative_prompt[: spec.spec.negative_prompt_max_chars]
            if spec.negative_prompt
            else None
        ),
        prompt_extend=spec.options.prompt_extend,
        watermark=spec.options.watermark,
        seed=spec.options.seed,
        first_image=images[0],
        last_image=images[1],
        protocol=protocol.value,
        duration=spec.options.duration,
        sound=spec.spec.audio,
        audio=audio,
    )
    if injection.kind == "ambiguous":
        raise ApiError(500, "InternalError")  # the task exists, but the caller can't know
    return dashscope_json({"output": {"task_status": "PENDING", "task_id": task.task_id}})


def _reject_when_lane_full(state: SimState, acct: Account, model: str) -> None:
    """429 Throttling when ``model``'s lane on this account has no free slot (reject mode)."""
    acct.advance(state.clock.now())
    lane = acct.lane(model)
    if lane.busy() >= lane.limit:
        state.throttle("create")
        raise ApiError(429, "Throttling")


def _check_audio(data: bytes, spec: ModelSpec) -> None:
    """400 unless ``data`` is an accepted audio format of an accepted length."""
    if len(data) > spec.audio_max_bytes:
        raise ApiError(400, "InvalidParameter", "The driving_audio is too large.")
    _fmt, seconds = probe_audio(data, "driving_audio", spec.audio_formats)
    lo, hi = spec.audio_min_seconds, spec.audio_max_seconds
    if not lo - 0.05 <= seconds <= hi + 0.05:
        raise ApiError(
            400,
            "InvalidParameter",
            f"The driving_audio must be {lo:g} to {hi:g} seconds long, not {seconds:.1f}.",
        )
