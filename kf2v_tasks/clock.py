"""Service time: the one knob (the time scale) that compresses every wait the client makes.

All durations in this package are written in *service seconds* (what the real DashScope
would take). A time scale of 60 makes one service minute pass in one real second, so a
rehearsal against the simulator running at ``--speed 60`` behaves like the real run, only
faster. Poll intervals, backoff, deadlines and the windows of our rate limiters all go
through :func:`sleep` / :func:`now`, never through ``asyncio.sleep``/``time.monotonic``
directly.

The scale comes from :class:`kf2v_tasks.settings.Kf2vSettings` (``KF2V_TIME_SCALE`` or
``PREFECT_INTEGRATIONS_KF2V_TIME_SCALE``), read once and cached, since :func:`now` runs
on every poll; :func:`set_time_scale` overrides it for this process only (it does not
touch the environment: pass the variable to child processes explicitly).
"""

from __future__ import annotations

import asyncio
import math
import os
import time

#: The variable users set; ``PREFECT_INTEGRATIONS_KF2V_TIME_SCALE`` works too.
ENV_VAR = "KF2V_TIME_SCALE"
SETTINGS_ENV_VAR = "PREFECT_INTEGRATIONS_KF2V_TIME_SCALE"

#: The real monotonic clock :func:`now` reads; tests swap in an event loop's virtual time.
monotonic = time.monotonic

_override: float | None = None  # set_time_scale(): wins over the settings
_cached: float | None = None  # the settings' value, read on first use


def time_scale() -> float:
    """The current compression factor (> 1 means faster than real time; default 1).

    The process override if :func:`set_time_scale` set one, else the settings' value,
    read on the first call and cached (call ``set_time_scale(None)`` to read it again).

    Raises:
        ValueError: the configured value is not a number > 0; names the variable.
    """
    global _cached
    if _override is not None:
        return _override
    if _cached is None:
        _cached = _read_setting()
    return _cached


def _read_setting() -> float:
    # Imported here: loading Prefect's settings machinery takes about a second, and
    # most users of the clock (the simulator, plain scripts) never need it.
    from pydantic import ValidationError

    from kf2v_tasks.settings import get_settings

    try:
        return get_settings().time_scale
    except ValidationError as exc:
        for error in exc.errors():
            if error.get("loc", ())[:1] == ("time_scale",):
                name = _variable_set()
                raise ValueError(
                    f"{name}={error.get('input')!r} is not valid: the time scale must be a "
                    "number > 0 (e.g. 60 for one service minute per real second)"
                ) from None
        raise


def _variable_set() -> str:
    """Which of the two variables holds the time scale (the namespaced one wins)."""
    names = {key.upper() for key in os.environ}
    return SETTINGS_ENV_VAR if SETTINGS_ENV_VAR in names else ENV_VAR


def set_time_scale(value: float | None) -> None:
    """Override the scale for this process; ``None`` drops the override and the cache.

    The environment is left alone: child processes (Prefect workers, subprocess
    flows) need the variable passed to them explicitly.

    Raises:
        ValueError: ``value`` is not a finite number > 0.
    """
    global _override, _cached
    if value is None:
        _override = None
        _cached = None
        return
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"time scale must be a number > 0, got {value!r}") from None
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"time scale must be a finite number > 0, got {value!r}")
    _override = scale


def now() -> float:
    """Monotonic clock in service seconds."""
    return monotonic() * time_scale()


def real_seconds(service_seconds: float) -> float:
    """How long ``service_seconds`` take in real time at the current scale."""
    return max(0.0, service_seconds) / time_scale()


async def sleep(service_seconds: float) -> None:
    """``asyncio.sleep`` for a duration given in service seconds."""
    await asyncio.sleep(real_seconds(service_seconds))
