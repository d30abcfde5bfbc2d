"""An instrumented simulator in its own process: ``python -m bench.simproc '<config json>'``.

It prints ``PORT <n>`` once it accepts requests and serves until SIGTERM. Besides the
simulator's own admin API it answers ``GET /_bench/seen``: per task, how many times it was
queried (``GET /api/v1/tasks/{id}``) and when (simulator seconds) a query first answered
SUCCEEDED — the moment the client *saw* the end, measured the same way for every client.
Running it in its own process keeps its CPU out of the client's measurements.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections import Counter

from starlette.responses import JSONResponse

from kf2v_tasks.simulator import RuntimeDistribution, Simulator, SimulatorConfig

PREFIX = "/api/v1/tasks/"


def build_config(spec: dict) -> SimulatorConfig:
    """A SimulatorConfig from a JSON-able dict (``runtime`` as a dict)."""
    spec = dict(spec)
    runtime = spec.pop("runtime", None)
    if runtime is not None:
        spec["runtime"] = RuntimeDistribution(**runtime)
    return SimulatorConfig(**spec)


class Recorder:
    """ASGI wrapper counting per-task queries and the first time each was seen SUCCEEDED."""

    def __init__(self, app, state) -> None:
        self.app = app
        self.state = state
        self.queries: Counter[str] = Counter()
        self.seen: dict[str, float] = {}
        self.lists = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path == "/_bench/seen":
            body = {"queries": dict(self.queries), "seen": self.seen, "lists": self.lists}
            return await JSONResponse(body)(scope, receive, send)
        if path == "/_bench/reset":
            self.queries.clear()
            self.seen.clear()
            self.lists = 0
            return await JSONResponse({"ok": True})(scope, receive, send)
        await self.app(scope, receive, send)
        if scope["method"] == "GET" and path.startswith(PREFIX):
            task_id = path[len(PREFIX) :]
            if "/" in task_id:
                return
            self.queries[task_id] += 1
            task = self.state.tasks.get(task_id)
            if task is not None and task_id not in self.seen and task.status() == "SUCCEEDED":
                self.seen[task_id] = self.state.clock.now()
        elif scope["method"] == "GET" and path == "/api/v1/tasks":
            self.lists += 1


def main() -> None:
    cfg = build_config(json.loads(sys.argv[1]))
    sim = Simulator(cfg)
    recorder = Recorder(sim.app, sim.state)
    sim._server.config.app = recorder  # uvicorn loads config.app at start
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sim.start()
    print(f"PORT {sim.port}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
