"""The HTTP under the kf2v client: connection pools, bearer auth, one exchange, the retry loop.

:class:`DashScopeSession` is what :class:`~kf2v_tasks.dashscope.client.Kf2vClient` stands
on: one pooled client for the API, another (without credentials) for downloads, one
exchange whose transport failures become typed errors, and the client's one retry budget.

The API key lives only in the ``Authorization`` header of DashScope requests: not in the
repr, nor in any log line or error made here (server text is scrubbed of it too), and
httpx exceptions, which hold the request and so its headers, are never kept as a cause.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Generator, Mapping
from types import TracebackType
from typing import Any, Optional, Self, TypeVar
from urllib.parse import urlsplit

import httpx

from kf2v_tasks._version import __version__
from kf2v_tasks.background import spawn
from kf2v_tasks.dashscope.limits import AccountLimits, RateLimiter
from kf2v_tasks.dashscope.responses import error_from_transport, request_id_of
from kf2v_tasks.errors import ThrottledError, is_transient
from kf2v_tasks.redaction import redact_url
from kf2v_tasks.retry import RetryPolicy, retry_call

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_HTTP_LIMITS", "DEFAULT_TIMEOUT", "DashScopeSession"]

# One logger for the whole client, under the name users already configure.
logger = logging.getLogger("kf2v_tasks.dashscope.client")

T = TypeVar("T")

DEFAULT_BASE_URL = "https://dashscope-intl.aliyuncs.com/api/v1"
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
#: Enough for a batch polling at the account's 20 queries/s plus submits and uploads.
DEFAULT_HTTP_LIMITS = httpx.Limits(
    max_connections=64, max_keepalive_connections=32, keepalive_expiry=5.0
)

_KEY_RE = re.compile(r"[\x21-\x7e]+")  # visible ASCII only: no whitespace, no CR/LF


class _BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <key>`` to DashScope requests; hides the key in repr."""

    def __init__(self, api_key: str) -> None:
        self._key = api_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key}"
        yield request

    def __repr__(self) -> str:
        return "<BearerAuth [secure]>"


class DashScopeSession:
    """The HTTP plumbing of :class:`~kf2v_tasks.dashscope.client.Kf2vClient` (whose docstring
    lists these arguments): connection pools, credentials, the retry budget; no endpoints.
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        workspace: Optional[str] = None,
        limits: Optional[AccountLimits] = None,
        retry: Optional[RetryPolicy] = None,
        timeout: Optional[httpx.Timeout] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        user_agent: Optional[str] = None,
    ) -> None:
        if not isinstance(api_key, str) or not _KEY_RE.fullmatch(api_key):
            # Never echo the value: it is (almost) a secret.
            raise ValueError("api_key must be a non-empty string of visible ASCII characters")
        if not base_url or urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.workspace = workspace or None
        self.limits = limits
        self.retry = retry or RetryPolicy()
        self._auth = _BearerAuth(api_key)
        self._http = httpx.AsyncClient(
            auth=self._auth,
            headers={
                "User-Agent": user_agent or f"kf2v-tasks/{__version__} httpx/{httpx.__version__}",
                "Accept": "application/json",
            },
            timeout=timeout or DEFAULT_TIMEOUT,
            limits=DEFAULT_HTTP_LIMITS,
            transport=transport,
            follow_redirects=False,
        )
        self._transport = transport
        self._downloads: Optional[httpx.AsyncClient] = None
        #: Called with each new task the moment its create answer arrives, before the
        #: caller sees it: a run stopped in between still knows what it has queued.
        self.created_hooks: list[Callable[[Any], None]] = []
        # Creates on the wire: they finish even if their caller is cancelled (settle_creates).
        self._creates_sent: set[asyncio.Future[httpx.Response]] = set()

    @property
    def download_http(self) -> httpx.AsyncClient:
        """A pooled client for result downloads: no credentials, redirects followed.

        Signed OSS URLs must never see the API key, so downloads have their own pool (shared,
        closed with the client): a client per download costs ~36 ms of CPU loading certificates.
        """
        if self._downloads is None:
            self._downloads = httpx.AsyncClient(
                timeout=DEFAULT_TIMEOUT,
                limits=DEFAULT_HTTP_LIMITS,
                transport=self._transport,
                follow_redirects=True,
            )
        return self._downloads

    @property
    def _secrets(self) -> tuple[str]:
        # Blanked out of any server text we keep; a property, so never in vars(client).
        return (self._auth._key,)

    def __repr__(self) -> str:
        return f"Kf2vClient(base_url={self.base_url!r}, workspace={self.workspace!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pools. The client cannot be used afterwards."""
        await self._http.aclose()
        if self._downloads is not None:
            await self._downloads.aclose()

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._http.is_closed

    async def _send(
        self,
        method: str,
        path_or_url: str,
        *,
        limiter: Optional[RateLimiter] = None,
        dashscope: bool = True,
        create: bool = False,
        headers: Optional[Mapping[str, str]] = None,
        before_send: Optional[Callable[[], Awaitable[None]]] = None,
        on_answer: Optional[Callable[[httpx.Response], None]] = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One HTTP exchange; transport failures become our typed errors. ``dashscope=False``:
        an absolute URL with no credentials (the OSS upload). A create that has left is not
        abandoned on cancellation: it may be creating a task, so its answer still goes to
        ``on_answer`` (see :meth:`settle_creates`).
        """
        if limiter is not None:
            await limiter.acquire()
        if before_send is not None:
            await before_send()
        all_headers: dict[str, str] = dict(headers or {})
        if dashscope:
            url = f"{self.base_url}{path_or_url}"
            if self.workspace:
                all_headers["X-DashScope-WorkSpace"] = self.workspace
            shown = path_or_url
        else:
            url = path_or_url
            shown = redact_url(url)
        request = self._http.build_request(method, url, headers=all_headers, **kwargs)
        failure: Optional[Exception] = None
        try:
            if create:
                response = await self._send_create(request, on_answer)
            elif dashscope:
                response = await self._http.send(request)
            else:
                response = await self._http.send(request, auth=None)
        except httpx.HTTPError as exc:
            failure = error_from_transport(
                exc, method=method, shown=shown, create=create, secrets=self._secrets
            )
            logger.debug("%s %s -> %s", method, shown, failure)
        if failure is not None:
            # Raised outside the ``except``: the httpx error (which holds the request
            # and its Authorization header) is neither cause nor context.
            raise failure from None
        logger.debug(
            "%s %s -> %s (request_id=%s)",
            method,
            shown,
            response.status_code,
            request_id_of(response, None),
        )
        return response

    async def _send_create(
        self, request: httpx.Request, on_answer: Optional[Callable[[httpx.Response], None]]
    ) -> httpx.Response:
        async def exchange() -> httpx.Response:
            response = await self._http.send(request)
            if on_answer is not None:
                on_answer(response)
            return response

        # spawn() retrieves its outcome: no "never retrieved" when the caller went away.
        sent = spawn(exchange(), name="kf2v-create")
        self._creates_sent.add(sent)
        sent.add_done_callback(self._creates_sent.discard)
        return await asyncio.shield(sent)

    async def settle_creates(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout`` s) for the creates already sent to answer.

        A run stopping early calls this after cancelling its rows: each answer names a new task
        (``created_hooks``) the run can then cancel instead of leaving it queued and billed.
        """
        if self._creates_sent:
            await asyncio.wait(set(self._creates_sent), timeout=timeout)

    async def _with_retries(
        self,
        attempt: Callable[[], Awaitable[T]],
        method: str,
        shown: str,
        *,
        limiter: Optional[RateLimiter] = None,
        is_retryable: Callable[[BaseException], bool] = is_transient,
    ) -> T:
        def on_retry(n: int, error: BaseException, delay: float) -> None:
            if limiter is not None and isinstance(error, ThrottledError):
                limiter.penalize(delay)  # everyone sharing the quota backs off too
            logger.info(
                "%s %s failed (%s); retry %d/%d in %.2f service seconds",
                method,
                shown,
                error,
                n,
                self.retry.max_attempts - 1,
                delay,
            )

        stop = limiter.stop_retry if limiter is not None else None

        def retryable(error: BaseException) -> bool:
            return is_retryable(error) and not (stop is not None and stop(error))

        return await retry_call(attempt, self.retry, is_retryable=retryable, on_retry=on_retry)
