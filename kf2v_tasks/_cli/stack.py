"""``kf2v stack``: a local Prefect server, process workers and the DashScope simulator.

For trying the deployments in ``deployments/prefect.yaml`` on one machine: it starts
``prefect server start`` on loopback, creates the ``process`` work pool, the account's
global concurrency limit (``kf2v limits apply``) and the block types, starts the
simulator and N ``prefect worker start`` processes, saves a ``DashScopeCredentials``
block called ``kf2v-simulator`` that points at the simulator, prints what to do next,
and stops everything it started (by process id) on Ctrl-C or SIGTERM.

The building blocks (:class:`LocalStack`, :func:`start_server`, :func:`start_worker` …)
are also what the deployment integration test uses.

Example:
    ```python
    from kf2v_tasks._cli.stack import LocalStack

    with LocalStack(home="/tmp/kf2v-stack", prefect_port=4200) as stack:
        stack.start_server()
        stack.prepare(pool="kf2v-process", max_in_flight=2)
        stack.start_worker("kf2v-process", name="worker-1")
        ...
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

#: Name of the credentials block the stack saves for the simulator.
SIMULATOR_BLOCK = "kf2v-simulator"
#: API key the stack's simulator block and workers use (the simulator accepts any key).
SIMULATOR_API_KEY = "sk-kf2v-simulator"
DEFAULT_POOL = "kf2v-process"


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
    """A free TCP port on ``host``."""
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
        return self.proc.poll() is None


def spawn(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    log: Path,
    cwd: Optional[Path | str] = None,
) -> StackProcess:
    """Start ``cmd`` in its own session (so it can be stopped with its children)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
        )
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

    def prepare(self, pool: str = DEFAULT_POOL, max_in_flight: int = 2) -> str:
        """Work pool, account limit and block types (each step is idempotent).

        Returns the output of ``prefect block register -m kf2v_tasks``.
        """
        run(ensure_work_pool(self.api_url, pool))
        kf2v = str(Path(sys.executable).parent / "kf2v")
        if not Path(kf2v).exists():
            kf2v = shutil.which("kf2v") or "kf2v"
        self.cli(kf2v, "limits", "apply", "--max-in-flight", str(max_in_flight))
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


async def save_simulator_credentials(
    api_url: str, base_url: str, name: str = SIMULATOR_BLOCK, api_key: str = SIMULATOR_API_KEY
) -> None:
    """Save a DashScopeCredentials block ``name`` that points at a simulator."""
    from pydantic import SecretStr

    from kf2v_tasks.credentials import DashScopeCredentials

    with api(api_url):
        await DashScopeCredentials(api_key=SecretStr(api_key), base_url=base_url).asave(
            name, overwrite=True
        )


def project_dir() -> Path:
    """The repository root when run from a checkout (where deployments/prefect.yaml is)."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (base / "deployments" / "prefect.yaml").exists():
            return base
    return Path.cwd()


def next_steps(stack: LocalStack, pool: str, sim_url: str) -> str:
    """What to type next, printed once the stack is up."""
    root = project_dir()
    return f"""
kf2v stack is up (Ctrl-C stops everything):
  Prefect UI         {stack.ui_url}
  Prefect API        {stack.api_url}
  simulator          {sim_url}   (block "{SIMULATOR_BLOCK}"; the workers also use it by default)
  work pool          {pool}  ({len(stack.workers)} process worker(s))
  logs               {stack.logs}

In another shell, from {root}:
  export PREFECT_API_URL={stack.api_url}
  prefect deploy --all --prefect-file deployments/prefect.yaml
  prefect deployment run kf2v-generate-batch/batch --watch \\
      --param manifest={root / "examples" / "manifest.csv"} \\
      --param output={root / "out" / "stack-example"} --param shards=2
(the workers' environment points at the simulator; to use the block instead add
 --param credentials_block={SIMULATOR_BLOCK}).
Or open the UI, Deployments -> batch -> Run -> Custom run, and fill in the form.
"""


def run_stack(args: Any) -> int:
    """Entry point of ``kf2v stack`` (args: prefect_port, simulator_port, speed, pool, workers)."""
    home_env = os.environ.get("KF2V_STACK_HOME")
    home = Path(home_env) if home_env else Path(tempfile.mkdtemp(prefix="kf2v-stack-"))
    pool = getattr(args, "pool", None) or DEFAULT_POOL
    speed = float(getattr(args, "speed", 60.0) or 60.0)
    workers = max(1, int(getattr(args, "workers", 1) or 1))
    stop = {"signal": None}

    def _on_signal(signum, _frame):
        stop["signal"] = signum
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _on_signal)
    stack = LocalStack(home=home, prefect_port=int(args.prefect_port))
    code = 0
    try:
        print(f"Starting Prefect server on {stack.ui_url} (PREFECT_HOME={home}) ...", flush=True)
        stack.start_server()
        stack.start_simulator(int(args.simulator_port), speed)
        sim_url = f"http://{stack.host}:{args.simulator_port}/api/v1"
        stack.prepare(pool=pool)
        run(save_simulator_credentials(stack.api_url, sim_url))
        worker_env = {
            "KF2V_TIME_SCALE": f"{speed:g}",
            "DASHSCOPE_API_KEY": SIMULATOR_API_KEY,
            "DASHSCOPE_HTTP_BASE_URL": sim_url,
        }
        for i in range(workers):
            stack.start_worker(pool, name=f"kf2v-worker-{i + 1}", limit=4, env=worker_env)
        print(next_steps(stack, pool, sim_url), flush=True)
        while True:
            time.sleep(1.0)
            stack.check_alive()
    except KeyboardInterrupt:
        print("\nStopping the kf2v stack ...", flush=True)
    except Exception as exc:  # a process died or a step failed: say what, then clean up
        print(f"kf2v stack failed: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        stack.close()
        signal.signal(signal.SIGTERM, previous)
        if not home_env:
            shutil.rmtree(home, ignore_errors=True)
    return code
