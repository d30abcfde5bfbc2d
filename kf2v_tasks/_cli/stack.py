"""A local Prefect server, process workers and the DashScope simulator, on loopback.

:class:`LocalStack` starts ``prefect server start`` with SQLite under its home folder,
creates the work pool, the account's global concurrency limit and the block types,
starts the simulator and ``prefect worker start`` processes, and stops everything it
started (by process id). ``kf2v stack`` (:mod:`kf2v_tasks._cli.stack_command`) and the
deployment integration test are built on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from kf2v_tasks._cli.processes import (
    StackProcess,
    free_port,
    port_is_free,
    prefect_bin,
    prefect_env,
    spawn,
    stop_process,
    stop_processes,
    tail,
    wait_for_health,
)

# The process helpers are re-exported: tests and benchmarks import them from here.
__all__ = [
    "DEFAULT_POOL",
    "LocalStack",
    "SIMULATOR_API_KEY",
    "SIMULATOR_BLOCK",
    "StackProcess",
    "free_port",
    "port_is_free",
    "prefect_bin",
    "prefect_env",
    "spawn",
    "stop_process",
    "stop_processes",
    "tail",
    "wait_for_health",
]

#: Name of the credentials block the stack saves for the simulator.
SIMULATOR_BLOCK = "kf2v-simulator"
#: API key the stack's simulator block and workers use (the simulator accepts any key).
SIMULATOR_API_KEY = "sk-kf2v-simulator"
DEFAULT_POOL = "kf2v-process"


@dataclass
class LocalStack:
    """A Prefect server, workers and a simulator on loopback; ``close()`` stops them all."""

    home: Path | str
    prefect_port: int = 4200
    host: str = "127.0.0.1"
    ui: bool = True
    processes: list[StackProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.home = Path(self.home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs = self.home / "logs"
        self.logs.mkdir(exist_ok=True)

    # ------------------------------------------------------------------ addresses

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a Prefect client process talking to this stack's server."""
        return prefect_env(self.home, self.api_url, **extra)

    # ------------------------------------------------------------------ processes

    def start_server(self, timeout: float = 180.0) -> StackProcess:
        """``prefect server start`` on loopback with SQLite under ``home``; waits for health."""
        if not port_is_free(self.prefect_port, self.host):
            raise RuntimeError(f"port {self.prefect_port} on {self.host} is already in use")
        env = prefect_env(
            self.home,
            None,
            PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.home / 'prefect.db'}",
            PREFECT_SERVER_API_HOST=self.host,
            PREFECT_SERVER_API_PORT=str(self.prefect_port),
            PREFECT_SERVER_UI_ENABLED="true" if self.ui else "false",
            PREFECT_UI_API_URL=self.api_url,
        )
        cmd = [
            prefect_bin(),
            "server",
            "start",
            "--host",
            self.host,
            "--port",
            str(self.prefect_port),
        ]
        if not self.ui:
            cmd.append("--no-ui")
        server = spawn("prefect-server", cmd, env, self.logs / "server.log", cwd=self.home)
        self.processes.append(server)
        wait_for_health(self.api_url, timeout=timeout, process=server)
        return server

    def start_worker(
        self,
        pool: str = DEFAULT_POOL,
        *,
        name: Optional[str] = None,
        limit: Optional[int] = None,
        env: Optional[dict[str, str]] = None,
        cwd: Optional[Path | str] = None,
        query_seconds: float = 2.0,
    ) -> StackProcess:
        """``prefect worker start --pool <pool> --type process`` for this server."""
        name = name or f"kf2v-worker-{len(self.workers) + 1}"
        cmd = [prefect_bin(), "worker", "start", "--pool", pool, "--type", "process"]
        cmd += ["--name", name, "--install-policy", "never"]
        if limit:
            cmd += ["--limit", str(limit)]
        worker_env = self.env(
            PREFECT_WORKER_QUERY_SECONDS=str(query_seconds),
            PREFECT_WORKER_PREFETCH_SECONDS="5",
            PREFECT_WORKER_HEARTBEAT_SECONDS="10",
            **(env or {}),
        )
        worker = spawn(name, cmd, worker_env, self.logs / f"{name}.log", cwd=cwd)
        self.processes.append(worker)
        return worker

    def start_simulator(self, port: int, speed: float, *extra_args: str) -> StackProcess:
        """The DashScope simulator as a subprocess (``python -m kf2v_tasks.simulator``)."""
        if not port_is_free(port, self.host):
            raise RuntimeError(f"port {port} on {self.host} is already in use")
        cmd = [sys.executable, "-m", "kf2v_tasks.simulator", "--host", self.host]
        cmd += ["--port", str(port), "--speed", f"{speed:g}", *extra_args]
        sim = spawn("simulator", cmd, dict(os.environ), self.logs / "simulator.log")
        self.processes.append(sim)
        import httpx

        deadline = time.monotonic() + 30
        while True:
            if not sim.alive():
                raise RuntimeError(f"the simulator exited:\n{tail(sim.log)}")
            try:
                httpx.get(f"http://{self.host}:{port}/", timeout=2.0)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the simulator did not start:\n{tail(sim.log)}") from None
                time.sleep(0.2)
        return sim

    @property
    def workers(self) -> list[StackProcess]:
        return [p for p in self.processes if "worker" in p.name]

    def check_alive(self) -> None:
        """Raise if a process of the stack has exited."""
        for p in self.processes:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited with code {p.proc.returncode}:\n{tail(p.log)}")

    def close(self, timeout: float = 15.0) -> None:
        """Stop every process the stack started, by process id: workers first, then the rest."""
        workers = [p.proc for p in self.workers]
        others = [p.proc for p in reversed(self.processes) if p.proc not in workers]
        for group in (workers, others):
            stop_processes(group, timeout=timeout)
        self.processes.clear()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ server objects

    def cli(self, *args: str, timeout: float = 180.0, cwd: Optional[Path | str] = None) -> str:
        """Run a CLI command against this server; raise with its output if it fails."""
        result = subprocess.run(
            list(args),
            env=self.env(),
            cwd=str(cwd) if cwd else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def prepare(self, pool: str = DEFAULT_POOL) -> str:
        """Work pool and block types (each step is idempotent; each lane creates its own
        global concurrency limit when it first opens).

        Returns the output of ``prefect block register -m kf2v_tasks``.
        """
        run(ensure_work_pool(self.api_url, pool))
        return self.cli(prefect_bin(), "block", "register", "-m", "kf2v_tasks")

    def deploy(
        self, project_dir: Path | str, prefect_file: str = "deployments/prefect.yaml"
    ) -> str:
        """``prefect deploy --all --prefect-file <file>`` from the project folder."""
        try:
            return self._deploy(project_dir, prefect_file)
        except RuntimeError as exc:
            if "workers/filter" in str(exc) and "422" in str(exc):
                raise RuntimeError(
                    f"{exc}\n\nThe Prefect server rejected a null limit/offset: FastAPI >= 0.151 "
                    "validates explicit nulls in embedded bodies, which Prefect 3.8.8's own "
                    "client sends. Install fastapi>=0.139,<0.151."
                ) from None
            raise

    def _deploy(self, project_dir: Path | str, prefect_file: str) -> str:
        return self.cli(
            prefect_bin(),
            "deploy",
            "--all",
            "--no-prompt",
            "--prefect-file",
            prefect_file,
            cwd=project_dir,
            timeout=300,
        )


def run(coro: Any) -> Any:
    """Run ``coro`` to completion from synchronous code (in a thread if a loop is running)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@contextlib.contextmanager
def api(api_url: str) -> Iterator[None]:
    """Point this process's Prefect client at ``api_url`` for the ``with`` block."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        yield


async def ensure_work_pool(api_url: str, pool: str, pool_type: str = "process") -> bool:
    """Create the work pool unless it exists; True if it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with api(api_url):
        async with get_client() as client:
            try:
                await client.read_work_pool(pool)
                return False
            except ObjectNotFound:
                pass
            from prefect.workers.process import ProcessWorker

            template = ProcessWorker.get_default_base_job_template()
            await client.create_work_pool(
                WorkPoolCreate(name=pool, type=pool_type, base_job_template=template)
            )
            return True
