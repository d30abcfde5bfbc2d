"""Processes the local stack starts: spawn in their own session, wait for health, stop by id.

Every process is started with ``start_new_session=True`` so it can be stopped with its
children by signalling its process group, by process id, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


def prefect_bin() -> str:
    """The ``prefect`` executable next to this Python (the same virtualenv)."""
    here = Path(sys.executable).parent / "prefect"
    return str(here) if here.exists() else (shutil.which("prefect") or "prefect")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``host:port``."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on ``host`` (free now; bind it soon)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tail(path: Path | str, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file ('' if missing)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a process we started, by its id: SIGTERM to its process group, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def stop_processes(procs: list[subprocess.Popen], timeout: float = 15.0) -> None:
    """Stop several processes at once: SIGTERM to every group, wait, then SIGKILL stragglers."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)


def prefect_env(home: Path | str, api_url: Optional[str] = None, **extra: str) -> dict[str, str]:
    """The environment of a Prefect process of the stack (server, worker or CLI call)."""
    env = dict(os.environ)
    # A profile's settings must not leak in: this stack is self-contained.
    env.pop("PREFECT_PROFILE", None)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_CLI_PROMPT="false",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:
        env.pop("PREFECT_API_URL", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class StackProcess:
    """One process the stack started, with its log file."""

    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None


def spawn(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    log: Path,
    cwd: Optional[Path | str] = None,
    *,
    tethered: bool = False,
) -> StackProcess:
    """Start ``cmd`` in its own session (so it can be stopped with its children).

    ``tethered``: it also ends when this process ends, even by SIGKILL (``tether.py``),
    so a killed ``kf2v run`` leaves no server behind.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    keep: tuple[int, ...] = ()
    if tethered:
        # Only this process holds the write end (os.pipe is not inherited): its death is EOF.
        read, _write = os.pipe()
        cmd = [sys.executable, str(Path(__file__).with_name("tether.py")), str(read), "--", *cmd]
        keep = (read,)
    try:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(cwd) if cwd else None,
                start_new_session=True,
                pass_fds=keep,
            )
    finally:
        for fd in keep:
            os.close(fd)
    return StackProcess(name, proc, log)


def wait_for_health(
    api_url: str, timeout: float = 120.0, process: Optional[StackProcess] = None
) -> None:
    """Wait until ``<api_url>/health`` answers 200 (fail early if ``process`` exits)."""
    import httpx

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(
                f"{process.name} exited with code {process.proc.returncode}:\n{tail(process.log)}"
            )
        try:
            response = httpx.get(f"{api_url}/health", timeout=3.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.3)
    log = f":\n{tail(process.log)}" if process is not None else ""
    raise RuntimeError(f"{api_url} not healthy after {timeout:.0f}s ({last}){log}")
