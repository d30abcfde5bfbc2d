"""Helpers shared by the benchmarks: simulator and S3 processes, side runners, RSS sampling."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import httpx
import psutil

from kf2v_tasks._cli.stack import free_port, stop_process
from kf2v_testing.moto_server import MotoS3Server

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
API_KEY_OURS = "sk-bench-ours-0123456789"
API_KEY_PEER = "sk-bench-peer-0123456789"
API_KEY_FLOOR = "sk-bench-floor-0123456789"


def log(msg: str) -> None:
    """Progress line on stderr with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> Optional[float]:
    """The q-quantile (0..1) by linear interpolation; None for no values."""
    if not values:
        return None
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def mean(values: list[float]) -> Optional[float]:
    return statistics.fmean(values) if values else None


def _child_env(extra: Optional[dict] = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


class SimProcess:
    """An instrumented simulator (bench.simproc) in a subprocess."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.simproc", json.dumps(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_child_env(),
            cwd=ROOT,
            start_new_session=True,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            stop_process(self.proc)
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.port = int(line.split()[1])
        self.origin = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.origin}/api/v1"

    def _get(self, path: str) -> Any:
        r = httpx.get(f"{self.origin}{path}", timeout=60.0)
        r.raise_for_status()
        return r.json()

    def stats(self) -> dict:
        return self._get("/_sim/stats")

    def tasks(self) -> list[dict]:
        return self._get("/_sim/tasks")

    def seen(self) -> dict:
        return self._get("/_bench/seen")

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class PeakSampler:
    """Samples the RSS (and CPU) of a process tree every ``interval`` s in a thread."""

    def __init__(self, pid: int, interval: float = 0.05, tree: bool = False) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.tree = tree
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        procs = [self.proc] + (self.proc.children(recursive=True) if self.tree else [])
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self._rss()
            except psutil.Error:
                break
            self.peak = max(self.peak, rss)
            self.samples.append((time.monotonic(), rss))
            self._stop.wait(self.interval)

    def start(self) -> PeakSampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak


@dataclass
class SideRun:
    """A running ``python -m bench.side ...`` process."""

    name: str
    proc: subprocess.Popen
    sampler: PeakSampler
    out_path: Path
    started: float = field(default_factory=time.monotonic)

    def wait(self, timeout: float = 1800.0) -> dict:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.sampler.stop()
            stop_process(self.proc)
        if self.proc.returncode != 0 or not self.out_path.exists():
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(
                f"side {self.name} failed (rc={self.proc.returncode}):\n{err[-4000:]}"
            )
        result = json.loads(self.out_path.read_text())
        result["sampled_peak_rss_mb"] = round(self.sampler.peak / 2**20, 1)
        return result


def start_side(name: str, args: dict, env: Optional[dict] = None) -> SideRun:
    """Start one client side (ours / peer / floor / raw...) in its own process."""
    out = Path(tempfile.mkdtemp(prefix=f"kf2v-bench-{name}-")) / "result.json"
    args = dict(args, result_path=str(out))
    proc = subprocess.Popen(
        [PY, "-m", "bench.side", json.dumps(args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_child_env(env),
        cwd=ROOT,
        start_new_session=True,
        text=True,
    )
    # Drain stderr in a thread so a chatty child never blocks on a full pipe.
    buf: list[str] = []

    def drain() -> None:
        for line in proc.stderr:
            buf.append(line)
            if line.startswith("[bench]"):
                print(f"    {name}: {line[8:].rstrip()}", file=sys.stderr, flush=True)

    t = threading.Thread(target=drain, daemon=True)
    t.start()

    class _Err:
        def read(self_inner) -> str:
            t.join(timeout=5)
            return "".join(buf)

    run = SideRun(name, proc, PeakSampler(proc.pid).start(), out)
    run.proc.stderr = _Err()  # type: ignore[assignment]
    return run


# --- Prefect server shared by every "ours" run --------------------------------------------


class PrefectServer:
    """One Prefect API server (temporary SQLite) for the whole benchmark run."""

    def __init__(self) -> None:
        self.home = tempfile.mkdtemp(prefix="kf2v-bench-prefect-")
        self.port = free_port()
        env = _child_env(
            {
                "PREFECT_HOME": self.home,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.home}/prefect.db",
                "PREFECT_UI_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "WARNING",
                # what Prefect's own ephemeral server sets (SubprocessASGIServer)
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                # A request answered 503 (SQLite busy, say) is logged with its exception.
                "PREFECT_API_LOG_RETRYABLE_ERRORS": "true",
            }
        )
        self.log_path = Path(self.home) / "server.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "uvicorn",
                "--app-dir",
                str(ROOT),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Prefect server did not start")
            time.sleep(0.2)
        # A user's server has served requests before: its first API calls (routes, the
        # database) are slow once, ~0.3 s, which no side should pay for the server.
        httpx.get(f"{self.api_url}/admin/version", timeout=30).raise_for_status()
        httpx.post(f"{self.api_url}/flow_runs/filter", json={"limit": 1}, timeout=30)

    def env(self) -> dict:
        return {"PREFECT_API_URL": self.api_url, "PREFECT_HOME": self.home}

    def cpu_seconds(self) -> float:
        try:
            p = psutil.Process(self.proc.pid)
            total = 0.0
            for q in [p] + p.children(recursive=True):
                t = q.cpu_times()
                total += t.user + t.system
            return total
        except psutil.Error:
            return 0.0

    def wait_idle(self, quiet: float = 0.05, timeout: float = 120.0) -> None:
        """Wait until the server spends < ``quiet`` CPU seconds per 0.5 s (done with events)."""
        deadline = time.monotonic() + timeout
        last = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.cpu_seconds()
            if now - last < quiet:
                return
            last = now

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def retryable_errors(log_path: Path, since: int = 0) -> list[str]:
    """The last line of each ``Encountered retryable exception`` traceback in a server log."""
    try:
        with open(log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    out = []
    for block in text.split("Encountered retryable exception in request")[1:]:
        lines = [ln for ln in block.splitlines() if ln.strip()]
        last = next((ln for ln in lines if ln.startswith(("sqlite3.", "sqlalchemy."))), None)
        out.append((last or (lines[-1] if lines else "?")).strip()[:200])
    return out


def writes_before_503s(home: Path, since: int = 0, window: float = 0.5) -> list[dict]:
    """What the Prefect server itself wrote in the ``window`` s before each 503 it logged.

    ``home`` is the bench server's PREFECT_HOME (``server.log`` and ``prefect.db``); the log
    is read from offset ``since``. For each retryable error: the task-run rows the server
    inserted (its task-run recorder, from the state events clients send over the websocket)
    and the events it recorded, by type, in the window before it. The server logs local
    time and stores UTC: the bench machine runs in UTC.
    """
    import sqlite3
    from datetime import datetime, timedelta

    try:
        with open(home / "server.log", "rb") as f:
            f.seek(since)
            lines = f.read().decode(errors="replace").splitlines()
        db = sqlite3.connect(f"file:{home / 'prefect.db'}?mode=ro", uri=True)
    except (OSError, sqlite3.Error):
        return []
    out = []
    try:
        day = db.execute("SELECT substr(max(received), 1, 10) FROM events").fetchone()[0]
        for line in lines:
            if "Encountered retryable exception" not in line or not day:
                continue
            at = datetime.fromisoformat(f"{day} {line.split(' |')[0].strip()}")
            lo = (at - timedelta(seconds=window)).isoformat(sep=" ")
            hi = at.isoformat(sep=" ")
            runs = [
                r[0]
                for r in db.execute(
                    "SELECT name FROM task_run WHERE created BETWEEN ? AND ? ORDER BY created",
                    (lo, hi),
                )
            ]
            events = dict(
                db.execute(
                    "SELECT event, count(*) FROM events WHERE received BETWEEN ? AND ? "
                    "GROUP BY event ORDER BY count(*) DESC",
                    (lo, hi),
                ).fetchall()
            )
            out.append(
                dict(at=hi[11:23], task_runs_inserted=runs, events_recorded=events, window_s=window)
            )
    except sqlite3.Error:
        pass
    finally:
        db.close()
    return out


# --- S3 (moto server) --------------------------------------------------------------------


#: A moto S3 server subprocess on loopback (the same helper the tests use).
MotoS3 = MotoS3Server


def make_inputs(folder: Path, rows: int, tag: str, resolution: str = "480P") -> Path:
    """Two small frames and a manifest of ``rows`` distinct rows (distinct prompts)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in (("first.png", (200, 80, 40)), ("last.png", (30, 160, 200))):
        img = Image.new("RGB", (320, 240), colour)
        d = ImageDraw.Draw(img)
        d.ellipse([80, 60, 240, 180], fill=(255 - colour[0], colour[1], 200))
        img.save(folder / name)
    lines = ["id,first_frame,last_frame,prompt,resolution"]
    for i in range(rows):
        lines.append(f"r{i:05d},first.png,last.png,{tag} clip number {i},{resolution}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
