"""Async HTTP client for the DashScope kf2v API (create, query, cancel, list, upload).

Creates go to the path of the model's protocol (kf2v or media, see
:mod:`kf2v_tasks.dashscope.catalog`); everything after is the same task API. The HTTP
plumbing (and how the API key stays out of every repr, log line and error) is
:mod:`kf2v_tasks.dashscope.session`; answers become typed errors through
:mod:`kf2v_tasks.dashscope.error_table`. The client's :class:`~kf2v_tasks.retry.RetryPolicy`
is the only retry layer (Prefect tasks do not retry on top of it): ``retry.max_attempts``
attempts in total, the first included (8 by default). A create is resent only when it
certainly created no task (429, 503, connection never established); anything that leaves
its outcome open raises :class:`~kf2v_tasks.errors.AmbiguousCreateError` at once.
"""

from __future__ import annotations

import json
import mimetypes
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import Enum
from typing import Any, Optional, Union
from urllib.parse import quote

import httpx

from kf2v_tasks.dashscope.error_table import create_retryable
from kf2v_tasks.dashscope.models import Kf2vModel, Kf2vRequest, TaskStatus
from kf2v_tasks.dashscope.responses import (
    bad_body_error,
    create_error,
    error_from_oss_response,
    error_from_response,
    json_object,
    unusable_create_answer,
)
from kf2v_tasks.dashscope.session import DashScopeSession
from kf2v_tasks.dashscope.task_state import SERVICE_TZ, TaskState

__all__ = ["Kf2vClient"]

_TASKS_PATH = "/tasks"
_UPLOADS_PATH = "/uploads"


class Kf2vClient(DashScopeSession):
    """Async client for DashScope's Wan kf2v (first-and-last-frame to video) API.

    Args:
        api_key: DashScope API key (``sk-...``); sent only as ``Authorization: Bearer``.
        base_url: API base ending in ``/api/v1`` (a region, workspace or simulator URL).
        workspace: workspace id, sent as ``X-DashScope-WorkSpace``.
        limits: the account quota shared by every caller; creates wait on their model's
            ``create_limiter`` and task queries on its ``query_limiter``.
        retry: the one retry budget of every request (default :class:`RetryPolicy()`: at
            most 8 attempts in total, the first included, with waits of 1, 2, 4, 8, 16, 32
            and 60 service seconds between them, at most 123 s in all unless the server's
            ``Retry-After`` asks for longer). Each attempt is bounded by ``timeout``.
        timeout: httpx timeouts (default connect 10 s, read 60 s, write 60 s, pool 10 s).
        transport: an httpx transport, e.g. ``httpx.MockTransport`` in tests.
        user_agent: ``User-Agent`` header (default ``kf2v-tasks/<version> httpx/<version>``).

    Example:
        ```python
        import asyncio, base64, os
        from kf2v_tasks import Kf2vClient, Kf2vRequest, TaskStatus

        def inline(path):  # small frames travel as data URIs; public https URLs work too
            return "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()

        async def main():
            key, url = os.environ["DASHSCOPE_API_KEY"], os.environ["DASHSCOPE_HTTP_BASE_URL"]
            async with Kf2vClient(key, base_url=url) as client:
                state = await client.create_task(Kf2vRequest(
                    first_frame_url=inline("first.png"),
                    last_frame_url=inline("last.png"),
                    prompt="a slow dolly shot",
                ))
                while state.status not in (TaskStatus.SUCCEEDED, TaskStatus.FAILED):
                    await asyncio.sleep(5)
                    state = await client.get_task(state.task_id)
                return state

        assert asyncio.run(main()).video_url
        ```
    """

    # ------------------------------------------------------------------ public API

    async def create_task(
        self,
        request: Kf2vRequest,
        *,
        before_send: Optional[Callable[[], Awaitable[None]]] = None,
    ) -> TaskState:
        """Submit a generation: ``POST {base}{request.create_path}``.

        kf2v models go to ``/services/aigc/image2video/video-synthesis``, media-protocol
        ones (``wan2.7-i2v``) to ``/services/aigc/video-generation/video-synthesis``.

        Only failures that certainly created no task are retried (429, 503, connection never
        established). Anything that leaves the outcome open (500, 502, 504, 408, a timeout or
        reset after sending, an unusable 200) raises after that one POST: it is never resent,
        because the task may exist and be billed. Refusals (4xx) raise at once.

        Args:
            request: the generation to create.
            before_send: awaited right before each POST leaves (after the rate-limit wait), so
                a durable record of "a create may be in flight" is written only when one may be.

        Returns:
            The new task, normally ``PENDING``.

        Raises:
            AmbiguousCreateError: 500/502/504, timeouts or resets after sending, or an
                unusable 200 answer.
            PermanentError: the service refused (bad input, auth, quota, moderation).
            TransientError: retries ran out on throttling / 503 / connect errors.
        """
        body = json.dumps(request.to_payload(), ensure_ascii=False).encode("utf-8")
        headers = {"X-DashScope-Async": "enable", "Content-Type": "application/json"}
        if request.uses_oss:
            headers["X-DashScope-OssResourceResolve"] = "enable"
        limiter = self.limits.create_limiter(request.options.model) if self.limits else None
        path = request.create_path

        def announce(response: httpx.Response) -> None:
            state = _parse_state(response) if response.is_success else None
            if state is not None and state.task_id:
                if self.limits is not None:
                    self.limits.note_task(state.task_id, request.options.model)
                for hook in self.created_hooks:
                    hook(state)

        async def attempt() -> TaskState:
            response = await self._send(
                "POST",
                path,
                limiter=limiter,
                headers=headers,
                content=body,
                create=True,
                before_send=before_send,
                on_answer=announce,
            )
            if not response.is_success:
                raise create_error(response, secrets=self._secrets) from None
            state = _parse_state(response)
            if state is None or not state.task_id:
                raise unusable_create_answer(response, secrets=self._secrets) from None
            return state

        return await self._with_retries(
            attempt, "POST", path, limiter=limiter, is_retryable=create_retryable
        )

    async def get_task(self, task_id: str) -> TaskState:
        """Query a task: ``GET {base}/tasks/{task_id}``.

        Any HTTP 200 body becomes a :class:`TaskState`, including ``FAILED``, ``CANCELED`` and
        ``UNKNOWN`` (no such task, or expired): interpreting them is the caller's job. Transient
        errors (429, 5xx, transport failures, an unreadable 200) are retried; others raise at once.
        """
        path = f"{_TASKS_PATH}/{_quote_id(task_id)}"
        limiter = self.limits.query_limiter if self.limits else None

        async def attempt() -> TaskState:
            response = await self._send("GET", path, limiter=limiter)
            if not response.is_success:
                raise error_from_response(response, secrets=self._secrets) from None
            state = _parse_state(response)
            if state is None:
                raise bad_body_error(response, secrets=self._secrets) from None
            if not state.task_id:
                state.task_id = task_id
            return state

        return await self._with_retries(attempt, "GET", path, limiter=limiter)

    async def cancel_task(self, task_id: str) -> None:
        """Cancel a PENDING task: ``POST {base}/tasks/{task_id}/cancel``; transient errors are
        retried (resending a cancel is harmless).

        Raises:
            UnsupportedOperationError: the task is no longer PENDING (or a retried attempt
                already cancelled it: query the task to know).
        """
        path = f"{_TASKS_PATH}/{_quote_id(task_id)}/cancel"
        limiter = self.limits.query_limiter if self.limits else None

        async def attempt() -> None:
            response = await self._send("POST", path, limiter=limiter, content=b"")
            if not response.is_success:
                raise error_from_response(response, secrets=self._secrets) from None

        await self._with_retries(attempt, "POST", path, limiter=limiter)

    async def list_tasks(
        self,
        *,
        status: Union[TaskStatus, str, None] = None,
        model_name: Union[Kf2vModel, str, None] = None,
        start_time: Union[datetime, str, None] = None,
        end_time: Union[datetime, str, None] = None,
        page_no: int = 1,
        page_size: int = 10,
    ) -> dict[str, Any]:
        """List tasks: ``GET {base}/tasks``; returns the service's flat JSON as is.

        ``start_time``/``end_time`` are ``YYYYMMDDhhmmss`` strings or datetimes (naive ones are
        service time, UTC+8). The answer is ``{"total", "data": [...], "total_page", "page_no",
        "page_size", "request_id"}`` with epoch-millisecond times. Transient errors are retried.
        """
        params: dict[str, Any] = {"page_no": page_no, "page_size": page_size}
        if start_time is not None:
            params["start_time"] = _list_time(start_time)
        if end_time is not None:
            params["end_time"] = _list_time(end_time)
        if model_name:
            params["model_name"] = _enum_value(model_name)
        if status is not None:
            params["status"] = _enum_value(status)
        limiter = self.limits.query_limiter if self.limits else None

        async def attempt() -> dict[str, Any]:
            response = await self._send("GET", _TASKS_PATH, limiter=limiter, params=params)
            if not response.is_success:
                raise error_from_response(response, secrets=self._secrets) from None
            body = json_object(response)
            if body is None:
                raise bad_body_error(response, secrets=self._secrets) from None
            return body

        return await self._with_retries(attempt, "GET", _TASKS_PATH, limiter=limiter)

    async def upload_file(self, data: bytes, filename: str, model: Union[Kf2vModel, str]) -> str:
        """Upload a local file to DashScope's temporary storage; returns its ``oss://`` URL.

        Gets an upload policy (``GET {base}/uploads?action=getPolicy&model=...``), then posts the
        file to the policy's OSS host *without* DashScope credentials. The URL is valid for 48 h,
        for ``model`` only, and needs ``X-DashScope-OssResourceResolve: enable`` on create
        (``create_task`` adds it). A transient failure of either step retries the pair with a
        fresh policy (so a fresh object key): up to ``retry.max_attempts`` pairs.
        """
        name = os.path.basename(filename.replace("\\", "/"))
        if not name:
            raise ValueError(f"filename {filename!r} has no base name")
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        params = {"action": "getPolicy", "model": _enum_value(model)}

        async def attempt() -> str:
            response = await self._send("GET", _UPLOADS_PATH, params=params)
            if not response.is_success:
                raise error_from_response(response, secrets=self._secrets) from None
            body = json_object(response)
            policy = body.get("data") if body else None
            if not isinstance(policy, dict) or not policy.get("upload_host"):
                raise bad_body_error(response, secrets=self._secrets) from None
            key = f"{policy.get('upload_dir', '').rstrip('/')}/{name}".lstrip("/")
            fields = {  # order as the official SDK sends them
                "OSSAccessKeyId": str(policy.get("oss_access_key_id", "")),
                "Signature": str(policy.get("signature", "")),
                "policy": str(policy.get("policy", "")),
                "key": key,
                "x-oss-object-acl": str(policy.get("x_oss_object_acl", "private")),
                "x-oss-forbid-overwrite": str(policy.get("x_oss_forbid_overwrite", "true")),
                "success_action_status": "200",
                "x-oss-content-type": content_type,
            }
            upload = await self._send(
                "POST",
                str(policy["upload_host"]),
                dashscope=False,
                data=fields,
                files={"file": (name, data, content_type)},
            )
            if upload.status_code != 200:
                raise error_from_oss_response(upload, secrets=self._secrets) from None
            return f"oss://{key}"

        return await self._with_retries(attempt, "upload", name)


# ---------------------------------------------------------------------- small helpers


def _parse_state(response: httpx.Response) -> Optional[TaskState]:
    body = json_object(response)
    if body is None or not isinstance(body.get("output"), dict):
        return None
    try:
        return TaskState.from_response(body)
    except ValueError:  # pydantic.ValidationError is a ValueError
        return None


def _enum_value(value: Union[Enum, str]) -> str:
    # str() of a str-Enum member is "Class.NAME" on Python 3.11+, not its value.
    return str(value.value) if isinstance(value, Enum) else str(value)


def _quote_id(task_id: str) -> str:
    if not task_id or not task_id.strip():
        raise ValueError("task_id must be a non-empty string")
    return quote(task_id, safe="")


def _list_time(value: Union[datetime, str]) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(SERVICE_TZ)
        return value.strftime("%Y%m%d%H%M%S")
    return value
