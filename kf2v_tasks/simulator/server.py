"""Serve the simulator with uvicorn: in a background thread (tests) or blocking (CLI)."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import httpx
import uvicorn

from kf2v_tasks.simulator.app import build_app
from kf2v_tasks.simulator.config import SimulatorConfig
from kf2v_tasks.simulator.faults import FaultConfig
from kf2v_tasks.simulator.state import SimState


class _DropOnPurpose(logging.Filter):
    """Hide uvicorn's complaint about responses the simulator cuts short deliberately."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


logging.getLogger("uvicorn.error").addFilter(_DropOnPurpose())


class Simulator:
    """A DashScope kf2v simulator bound to a loopback port.

    Example:
        ```python
        from kf2v_tasks.simulator import Simulator, SimulatorConfig
        sim = Simulator(SimulatorConfig(speed=600, render="tiny"))
        sim.start()
        try:
            print(sim.base_url, sim.stats())
        finally:
            sim.stop()
        ```
    """

    def __init__(self, config: Optional[SimulatorConfig] = None) -> None:
        self.config = config or SimulatorConfig()
        self.state = SimState(self.config)
        self.app = build_app(self.state)
        # proto=IPPROTO_TCP, not 0: asyncio only turns Nagle off (TCP_NODELAY) on accepted
        # sockets whose proto says TCP; with 0 every keep-alive answer sent in two writes
        # waited ~40 ms for the client's delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Binding here (not in uvicorn) makes the port known and race-free before start.
        self._sock.bind((self.config.host, self.config.port))
        self.host, self.port = self._sock.getsockname()[:2]
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                log_config=None,  # leave the embedding process's logging alone
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=2,
            )
        )
        self._thread: Optional[threading.Thread] = None

    @property
    def origin(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What clients use as ``DASHSCOPE_HTTP_BASE_URL``."""
        return f"{self.origin}/api/v1"

    @property
    def admin_url(self) -> str:
        """Base of the admin endpoints."""
        return f"{self.origin}/_sim"

    def start(self, timeout: float = 15.0) -> Simulator:
        """Serve in a daemon thread; return once the port accepts requests."""
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name="kf2v-simulator",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        """Serve until Ctrl-C / SIGTERM, then shut down cleanly (call from the main thread)."""
        stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda *_: stop.set())
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self.start()
            while not stop.wait(0.5):
                if self._thread is None or not self._thread.is_alive():
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.should_exit = True
        self._server.force_exit = True  # no wait for clients' idle keep-alive connections
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._sock.close()

    def __enter__(self) -> Simulator:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _admin(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = httpx.request(method, f"{self.admin_url}/{path}", timeout=30.0, **kwargs)
        resp.raise_for_status()
        return resp.json()

    def stats(self) -> dict[str, Any]:
        """Counters: creates (by fingerprint), queries, throttles, faults, concurrency..."""
        return self._admin("GET", "stats")

    def tasks(self) -> list[dict[str, Any]]:
        """Every task's timeline (real seconds since start) and status."""
        return self._admin("GET", "tasks")

    def reset(self) -> None:
        """Forget all tasks, uploads and counters."""
        self._admin("POST", "reset")

    def set_faults(self, faults: FaultConfig) -> None:
        """Replace the fault probabilities while running."""
        self._admin("POST", "faults", json=faults.to_dict())


@contextmanager
def run_simulator(config: Optional[SimulatorConfig] = None) -> Iterator[Simulator]:
    """Run a simulator on a free loopback port for the duration of a ``with`` block.

    Example:
        ```python
        from kf2v_tasks.simulator import SimulatorConfig, run_simulator
        with run_simulator(SimulatorConfig(speed=1000, render="tiny")) as sim:
            print(sim.base_url)  # http://127.0.0.1:PORT/api/v1
        ```
    """
    sim = Simulator(config)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
