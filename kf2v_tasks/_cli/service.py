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
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
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
    from kf2v_tasks.settings_env import may_be_set

    if not may_be_set("api_key", "dashscope_api_key"):  # no key anywhere: no Prefect import
        return False
    from kf2v_tasks.settings import get_settings

    return get_settings().api_key is not None


def _simulator_installed() -> None:
    from kf2v_tasks.simulator import INSTALL_HINT, missing_dependencies

    if missing_dependencies():
        raise UsageError(
            "no DASHSCOPE_API_KEY set and the built-in simulator is not installed: set "
            f"DASHSCOPE_API_KEY (or --credentials-block), or {INSTALL_HINT}"
        )


@contextlib.contextmanager
def _simulator(speed: float, out: TextIO) -> Iterator[Any]:
    _simulator_installed()
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
def quiet_prefect(verbose: bool, api_url: Optional[str] = None) -> Iterator[None]:
    """Prefect settings for a CLI command; unless ``verbose``, Prefect prints nothing.
    With ``api_url``, Prefect's client talks to that server.

    Run logs still go to the Prefect API at their usual level (the UI shows them); only
    the console handlers are silenced, so a failure is reported by the CLI in one line
    instead of an engine traceback. They stay silent for the rest of the process: the
    ephemeral server says goodbye at exit, after the command is done.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    updates: dict[Any, Any] = {PREFECT_API_URL: api_url} if api_url else {}
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
def flow_service(args: Any, meanwhile: Optional[Callable[[Any], None]] = None) -> Iterator[Any]:
    """The DashScope service a command's flow talks to (credentials), with Prefect kept quiet.

    With no Prefect server configured, a temporary one starts first and comes up while
    the simulator starts and the flow is imported (see :func:`prefect_api`);
    ``meanwhile(credentials)`` runs while it is still starting.
    """
    if not args.credentials_block and not _key_configured():
        _simulator_installed()  # said before a Prefect server starts for nothing
    with contextlib.ExitStack() as stack:
        ready = stack.enter_context(prefect_api())
        quiet = quiet_prefect(args.verbose, api_url=ready.url)
        if args.credentials_block:  # read from the server, by Prefect's client
            stack.enter_context(quiet)
            ready()
        credentials = stack.enter_context(
            dashscope_service(
                args.credentials_block,
                simulator_speed=args.simulator_speed,
                time_scale=args.time_scale,
            )
        )
        if meanwhile is not None and ready.process is not None:
            meanwhile(credentials)  # before Prefect's engine is imported: a second sooner
        if not args.credentials_block:
            stack.enter_context(quiet)
        ready()
        try:
            yield credentials
        finally:
            if ready.temporary:
                _drain_to_api()  # while the server and Prefect's settings are still there


#: Seconds Prefect itself waits for its temporary server (then fails the run); we say so
#: once and wait on (a new PREFECT_HOME migrates its database first: 10 s on 2 cores).
SLOW_SERVER_SECONDS = 20.0
#: Seconds after which a temporary server that is still not up fails the command.
SERVER_START_SECONDS = 600.0


class _Ready:
    """Waits (once) until the temporary server answers; ``url`` is known from the start."""

    def __init__(self, url: Optional[str], process: Any = None, out: Optional[TextIO] = None):
        self.url, self.process, self.out = url, process, out or sys.stderr
        self.temporary = process is not None
        self.started = time.monotonic()

    def __call__(self) -> None:
        from kf2v_tasks._cli.processes import wait_for_health

        if self.process is None:
            return
        try:
            wait_for_health(self.url, timeout=SLOW_SERVER_SECONDS, process=self.process)
        except RuntimeError:
            if not self.process.alive():
                raise
            waited = time.monotonic() - self.started
            print(
                f"The temporary Prefect server is slow to start ({waited:.0f} s so far); "
                "waiting for it. Set PREFECT_API_URL to use a server that is already running.",
                file=self.out,
                flush=True,
            )
            wait_for_health(self.url, timeout=SERVER_START_SECONDS, process=self.process)
        self.process = None


@contextlib.contextmanager
def prefect_api(out: Optional[TextIO] = None) -> Iterator[_Ready]:
    """The Prefect API for the ``with`` body: the configured server, else a temporary one.

    Prefect starts its own temporary server only when a client is first made (after the
    simulator and the flow's imports), and fails the run when it is not up within 20 s.
    This one starts at once, as the same process Prefect runs (``uvicorn`` over
    ``prefect.server.api.server:create_app``, ephemeral services, no UI, the database
    under ``PREFECT_HOME``) and is waited for as long as it needs; it is stopped on the way
    out. Calling the yielded object waits until the server answers.
    """
    if _api_url_configured():
        yield _Ready(None)
        return
    from importlib.util import find_spec

    from kf2v_tasks._cli.processes import free_port, spawn, stop_process
    from kf2v_tasks.lanes.gcl import TEMPORARY_API_URLS

    # Prefect's path only: its imports (seconds) happen in the server process.
    site = Path(find_spec("prefect").origin).parent.parent  # type: ignore[union-attr,arg-type]
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(site)]
    cmd += ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "error", "--lifespan", "on"]
    env = dict(os.environ, PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1")
    env["PREFECT__SERVER_FINAL"] = "1"
    log = Path(tempfile.mkdtemp(prefix="kf2v-prefect-")) / "server.log"
    server = spawn("the temporary Prefect server", cmd, env, log, tethered=True)
    url = f"http://127.0.0.1:{port}/api"
    # Its leases end with it: lanes share through lock files, as in ephemeral mode.
    TEMPORARY_API_URLS.add(url)
    try:
        yield _Ready(url, server, out)
    finally:
        stop_process(server.proc, timeout=5.0)
        shutil.rmtree(log.parent, ignore_errors=True)


def _drain_to_api(timeout: float = 5.0) -> None:
    """Send the run's last logs and events while the server is still up: at exit, with
    it gone, Prefect's workers would retry for a minute ("Error logging to API")."""
    if "prefect.logging.handlers" in sys.modules:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=timeout)
    if "prefect.events.worker" in sys.modules:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=timeout)


def _api_url_configured() -> bool:
    """Whether a Prefect server is configured: ``PREFECT_API_URL`` in the environment or in a
    file Prefect reads it from (then Prefect is left to decide, as without kf2v)."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    files = [Path(".env"), Path("prefect.toml"), Path("pyproject.toml"), home / "profiles.toml"]
    if os.environ.get("PREFECT_PROFILES_PATH"):
        files.append(Path(os.environ["PREFECT_PROFILES_PATH"]))
    for path in files:
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace").lower()
            if "api_url" in text and (path.name != "pyproject.toml" or "tool.prefect" in text):
                return True
    return False
