"""Service time: the one knob (``KF2V_TIME_SCALE``) that compresses every wait the client makes.

All durations in this package are written in *service seconds* (what the real DashScope
would take). ``KF2V_TIME_SCALE=60`` makes one service minute pass in one real second, so a
rehearsal against the simulator running at ``--speed 60`` behaves like the real run, only
faster. Poll intervals, backoff, deadlines and the windows of our rate limiters all go
through :func:`sleep` / :func:`now`, never through ``asyncio.sleep``/``time.monotonic``
directly.
"""

from __future__ import annotations

import asyncio
import os
import time

ENV_VAR = "KF2V_TIME_SCALE"

_override: float | None = None


def time_scale() -> float:
    """The current compression factor (≥ 1 means faster than real time; default 1).

    Example:
        ```python
        import os
        from kf2v_tasks import clock
        os.environ["KF2V_TIME_SCALE"] = "60"
        assert clock.time_scale() == 60.0
        ```
    """
    if _override is not None:
        return _override
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_VAR}={raw!r} is not a number") from None
    if not value > 0:
        raise ValueError(f"{ENV_VAR} must be > 0, got {raw!r}")
    return value


def set_time_scale(value: float | None) -> None:
    """Set the scale for this process (``None`` goes back to the environment variable).

    The environment variable is set too, so child processes and Prefect workers started
    from here see the same scale.
    """
    global _override
    if value is None:
        _override = None
        os.environ.pop(ENV_VAR, None)
        return
    if not value > 0:
        raise ValueError(f"time scale must be > 0, got {value!r}")
    _override = float(value)
    os.environ[ENV_VAR] = repr(float(value))


def now() -> float:
    """Monotonic clock in service seconds."""
    return time.monotonic() * time_scale()


def real_seconds(service_seconds: float) -> float:
    """How long ``service_seconds`` take in real time at the current scale."""
    return max(0.0, service_seconds) / time_scale()


async def sleep(service_seconds: float) -> None:
    """``asyncio.sleep`` for a duration given in service seconds."""
    await asyncio.sleep(real_seconds(service_seconds))
