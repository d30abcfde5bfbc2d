"""What every simulated DashScope endpoint does first: check the key, draw faults, rate-limit."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from kf2v_tasks.simulator.faults import Injection
from kf2v_tasks.simulator.state import Account, SimState
from kf2v_tasks.simulator.wire import ApiError

BAD_PARAMETER = "Required parameter({}) missing or invalid, please check the request parameters."


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
