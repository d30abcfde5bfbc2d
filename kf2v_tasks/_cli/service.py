"""Which DashScope a command talks to, and how much of Prefect's chatter reaches the terminal.

The CLI writes nothing to ``os.environ`` but two telemetry defaults (Prefect's telemetry
off, :func:`kf2v_tasks._cli.main._telemetry_off`): the simulator's address and key travel
to the flow as a :class:`~kf2v_tasks.credentials.DashScopeCredentials` block instance, the
time scale through :func:`kf2v_tasks.clock.set_time_scale`, and Prefect options through
``temporary_settings``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any, Optional, TextIO, Union

from kf2v_tasks import clock
from kf2v_tasks._cli.errors import UsageError

#: The key the built-in simulator is called with (it accepts any key; nothing is billed).
SIMULATOR_API_KEY = "sk-simulator"


@contextlib.contextmanager
def dashscope_service(
    credentials_block: Union[str, list[str], None],
    *,
    simulator_speed: float,
    time_scale: Optional[float] = None,
    out: Optional[TextIO] = None,
) -> Iterator[Any]:
    """What a flow gets as ``credentials_block`` for the ``with`` body.

    * ``credentials_block`` given: that saved block's name (several: the list, a pool);
    * else a key configured (``DASHSCOPE_API_KEY``, or the Prefect setting
      ``PREFECT_INTEGRATIONS_KF2V_API_KEY``): ``None``, the flow reads it itself;
    * else a built-in simulator runs for the body, and this yields a
      ``DashScopeCredentials`` instance pointing at it (said in one line on ``out``).

    The time scale is ``time_scale`` if given, else the simulator's speed when it runs.

    Raises:
        UsageError: no key, no block, and the ``simulator`` extra is not installed.

    Example:
        ```python
        from kf2v_tasks._cli.service import dashscope_service
        with dashscope_service(None, simulator_speed=60) as credentials:
            ...  # generate_batch(..., credentials_block=credentials)
        ```
    """
    out = out or sys.stderr
    scaled = time_scale is not None
    if scaled:
        clock.set_time_scale(time_scale)
    if isinstance(credentials_block, list):
        for name in credentials_block:
            _check_block(name)  # a missing block is said before anything starts or is paid
        credentials_block = (
            credentials_block[0] if len(credentials_block) == 1 else credentials_block or None
        )
    try:
        if credentials_block:
            yield credentials_block
        elif _key_configured():
            yield None
        else:
            with _simulator(simulator_speed, out) as credentials:
                if not scaled:  # the client's waits must run at the simulator's speed
                    clock.set_time_scale(simulator_speed)
                    scaled = True
                yield credentials
    finally:
        if scaled:
            clock.set_time_scale(None)


def _check_block(name: str) -> None:
    """``name`` is a saved DashScopeCredentials block, else UsageError (exit 2) naming it."""
    from kf2v_tasks._cli.errors import UsageError
    from kf2v_tasks.credentials import DashScopeCredentials

    try:
        DashScopeCredentials.load(name, _sync=True)
    except Exception as exc:  # not saved, another block type, or no server to ask
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(
            f"argument --credentials-block: {name!r} cannot be loaded ({reason[:200]})"
        ) from None


def _key_configured() -> bool:
    # The same settings DashScopeCredentials.from_env reads: environment, .env, profile.
    from kf2v_tasks.settings import get_settings

    return get_settings().api_key is not None


@contextlib.contextmanager
def _simulator(speed: float, out: TextIO) -> Iterator[Any]:
    from kf2v_tasks.simulator import INSTALL_HINT, missing_dependencies

    if missing_dependencies():
        raise UsageError(
            "no DASHSCOPE_API_KEY set and the built-in simulator is not installed: set "
            f"DASHSCOPE_API_KEY (or --credentials-block), or {INSTALL_HINT}"
        )
    from pydantic import SecretStr

    from kf2v_tasks.credentials import DashScopeCredentials
    from kf2v_tasks.generation.pricing import configured_region
    from kf2v_tasks.simulator import SimulatorConfig, run_simulator

    with run_simulator(SimulatorConfig(speed=speed)) as sim:
        print(
            f"No DASHSCOPE_API_KEY set: using the built-in DashScope simulator at "
            f"{sim.base_url} ({speed:g}x speed, nothing is billed). "
            "Set DASHSCOPE_API_KEY to use the real service.",
            file=out,
            flush=True,
        )
        # The configured region (KF2V_REGION): the estimate is what the service would charge.
        region = configured_region()
        yield DashScopeCredentials(
            api_key=SecretStr(SIMULATOR_API_KEY), base_url=sim.base_url, region=region
        )


@contextlib.contextmanager
def quiet_prefect(verbose: bool) -> Iterator[None]:
    """Prefect settings for a CLI command; unless ``verbose``, Prefect prints nothing.

    Run logs still go to the Prefect API at their usual level (the UI shows them); only
    the console handlers are silenced, so a failure is reported by the CLI in one line
    instead of an engine traceback. They stay silent for the rest of the process: the
    ephemeral server says goodbye at exit, after the command is done.

    Example:
        ```python
        from kf2v_tasks._cli.service import quiet_prefect
        with quiet_prefect(verbose=False):
            ...  # run a flow
        ```
    """
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    updates: dict[Any, Any] = {}
    if "PREFECT_SERVER_ANALYTICS_ENABLED" not in os.environ:
        # An ephemeral server must not phone home from a CLI command.
        updates[PREFECT_SERVER_ANALYTICS_ENABLED] = False
    with temporary_settings(updates=updates):
        if verbose:
            yield
            return
        with _console_silenced():
            yield


@contextlib.contextmanager
def _console_silenced() -> Iterator[None]:
    # Prefect configures logging when `prefect.main` is first imported; import it now so
    # the console handlers exist, then keep every record away from them. A filter, not a
    # level: an incremental logging set-up later resets handler levels, not filters.
    import prefect.main  # noqa: F401
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    handlers = {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}
    for h in handlers:
        h.addFilter(_drop_all)
    yield


def _drop_all(record: logging.LogRecord) -> bool:
    return False


@contextlib.contextmanager
def flow_service(args: Any) -> Iterator[Any]:
    """The DashScope service a command's flow talks to (credentials), with Prefect kept quiet.

    Example:
        ```python
        with flow_service(args) as credentials:
            generate_batch(..., credentials_block=credentials)
        ```
    """
    with (
        dashscope_service(
            args.credentials_block,
            simulator_speed=args.simulator_speed,
            time_scale=args.time_scale,
        ) as credentials,
        quiet_prefect(args.verbose),
    ):
        yield credentials
