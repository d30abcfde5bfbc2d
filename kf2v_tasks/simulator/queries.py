"""GET /tasks/{id}, POST /tasks/{id}/cancel and GET /tasks: what a client sees of its tasks."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from starlette.requests import Request
from starlette.responses import Response

from kf2v_tasks.dashscope.models import Kf2vModel
from kf2v_tasks.dashscope.task_state import SERVICE_TZ, format_service_time
from kf2v_tasks.simulator.downloads import video_url
from kf2v_tasks.simulator.gate import BAD_PARAMETER, authenticate, inject, rate_limit
from kf2v_tasks.simulator.state import SimState, SimTask
from kf2v_tasks.simulator.wire import ApiError, connection_reset, dashscope_json

EXTEND_SUFFIX = " (prompt extended by the simulator: cinematic lighting, smooth camera motion)"


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
        if task.protocol == "media":  # billed by the seconds asked (third-party docs)
            sr = int(task.resolution.rstrip("P"))
            body["usage"] = {"video_duration": task.duration, "video_count": 1, "SR": sr}
        elif task.model == Kf2vModel.WAN22_FLASH.value:
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
            "user_api_unique_key": (
                f"apikey:v1:aigc:{'video-generation' if t.protocol == 'media' else 'image2video'}:"
                f"video-synthesis:{t.model}"
            ),
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
