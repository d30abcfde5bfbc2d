"""The Starlette app: DashScope's kf2v HTTP API, an OSS-like upload/result host, admin.

Routes:
    ``/api/v1/...``  the DashScope endpoints (create on the kf2v and media paths, task
                     query/cancel/list, getPolicy)
    ``/_oss/...``    temporary-upload host and signed, expiring result downloads
    ``/_sim/...``    admin: stats, task timelines, reset, fault reconfiguration
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kf2v_tasks.dashscope.catalog import active_catalog
from kf2v_tasks.dashscope.models import CREATE_PATH, MEDIA_PATH
from kf2v_tasks.simulator.create import create_media_task, create_task
from kf2v_tasks.simulator.downloads import VideoCache, download
from kf2v_tasks.simulator.faults import FaultConfig, FaultInjector
from kf2v_tasks.simulator.queries import cancel_task, get_task, list_tasks
from kf2v_tasks.simulator.state import SimState
from kf2v_tasks.simulator.uploads import get_policy, oss_upload
from kf2v_tasks.simulator.wire import ApiError, dashscope_error

API = "/api/v1"


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
        Route(API + MEDIA_PATH, create_media_task, methods=["POST"]),
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
    active_catalog()  # read the models table (and any models file) now, not in a request
    return app
