"""Helpers for the simulator tests: test images, request bodies and HTTP shortcuts."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import numpy as np
from PIL import Image

from kf2v_tasks.dashscope.models import CREATE_PATH, MEDIA_PATH
from kf2v_tasks.simulator import RuntimeDistribution, Simulator, SimulatorConfig

KEY = "sk-sim-test-key"
HEADERS = {"Authorization": f"Bearer {KEY}", "X-DashScope-Async": "enable"}


def gradient_png(width: int, height: int, hue: int = 0) -> bytes:
    """A smooth colour gradient (compresses well, survives H.264 with high PSNR)."""
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    r = (255 * x * np.ones_like(y) + hue) % 256
    g = 255 * y * np.ones_like(x)
    b = 255 * (1 - (x + y) / 2)
    arr = np.stack([r, g, b], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


FIRST = gradient_png(320, 240)
LAST = gradient_png(300, 400, hue=90)


def body(**overrides: Any) -> dict[str, Any]:
    """A valid create body; ``input``/``parameters`` overrides merge into the defaults."""
    doc: dict[str, Any] = {
        "model": "wan2.2-kf2v-flash",
        "input": {
            "first_frame_url": data_uri(FIRST),
            "last_frame_url": data_uri(LAST),
            "prompt": "a slow dolly shot",
        },
        "parameters": {"resolution": "480P"},
    }
    for key, value in overrides.items():
        if key in ("input", "parameters") and isinstance(value, dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return doc


#: Frames the media models accept (their sides start at 360 px).
MEDIA_FIRST = gradient_png(480, 400)
MEDIA_LAST = gradient_png(400, 480, hue=90)


def media_body(
    *, model: str = "wan2.7-i2v", audio: bytes | None = None, **parameters: Any
) -> dict[str, Any]:
    """A valid media-protocol (wan2.7-i2v) create body; ``parameters`` merge into 720P."""
    media = [
        {"type": "first_frame", "url": data_uri(MEDIA_FIRST)},
        {"type": "last_frame", "url": data_uri(MEDIA_LAST)},
    ]
    if audio is not None:
        media.append({"type": "driving_audio", "url": data_uri(audio, "audio/mpeg")})
    return {
        "model": model,
        "input": {"prompt": "a gradient turning", "media": media},
        "parameters": {"resolution": "720P", **parameters},
    }


def create(sim: Simulator, payload: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
    """POST the create endpoint (the media path for a media body)."""
    headers = kwargs.pop("headers", HEADERS)
    payload = payload or body()
    inp = payload.get("input")
    path = kwargs.pop(
        "path", MEDIA_PATH if isinstance(inp, dict) and "media" in inp else CREATE_PATH
    )
    return httpx.post(sim.base_url + path, json=payload, headers=headers, timeout=30, **kwargs)


def query(sim: Simulator, task_id: str, headers: dict[str, str] = HEADERS) -> dict[str, Any]:
    """GET /tasks/{id} (must answer 200)."""
    resp = httpx.get(f"{sim.base_url}/tasks/{task_id}", headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_status(
    sim: Simulator, task_id: str, statuses: set[str], timeout: float = 20.0
) -> dict[str, Any]:
    """Poll until the task reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        doc = query(sim, task_id)
        if doc["output"]["task_status"] in statuses:
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.01)


def fast_config(**kwargs: Any) -> SimulatorConfig:
    """Fast defaults: high speed, 60-service-second runs, tiny videos."""
    defaults: dict[str, Any] = {
        "speed": 1000.0,
        "render": "tiny",
        "runtime": RuntimeDistribution(kind="fixed", low=60.0),
        "submits_per_second": 1000.0,
        "queries_per_second": 1000.0,
    }
    defaults.update(kwargs)
    return SimulatorConfig(**defaults)
