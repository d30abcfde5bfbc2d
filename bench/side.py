"""One client side of a benchmark, in its own process: ``python -m bench.side '<json args>'``.

Modes:
* ``ours``   — the batch flow ``kf2v_flows.batch.generate_batch`` (what ``kf2v run`` calls);
* ``peer``   — the official dashscope SDK as its docs show it: ``VideoSynthesis.call`` in a
  thread pool sized to the concurrency, then a plain download; its polling sleeps are
  divided by the same time scale as ours;
* ``floor``  — a bare asyncio + httpx loop making the same HTTP calls as ours;
* ``persist``/``raw`` — B3: our ``stream_to_storage`` vs. a raw httpx stream-to-file copy.

Writes a JSON result to ``result_path``; progress lines on stderr start with ``[bench]``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import sys
import time
import types
from pathlib import Path


def _say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _threads_cpu() -> dict[str, float]:
    """CPU seconds of each live thread, by Python name (Linux /proc; {} elsewhere).

    Threads already gone are missing: their CPU is in the total, not here."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), f"native-{tid}")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- ours ----------------------------------------------------------------------------------


def run_ours(a: dict) -> dict:
    os.environ["DASHSCOPE_API_KEY"] = a["api_key"]
    os.environ["DASHSCOPE_HTTP_BASE_URL"] = a["base_url"]
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from kf2v_tasks import clock

    clock.set_time_scale(a["time_scale"])
    from kf2v_flows.batch import generate_batch
    from kf2v_tasks.batch.config import DEFAULT_QUEUE_AHEAD, ConcurrencySettings
    from kf2v_tasks.batch.reporting import BatchObserver, observing
    from kf2v_tasks.batch.steps import TaskRuns

    total = a["rows"]
    step = max(1, total // 10)

    class Progress(BatchObserver):
        def on_row(self, result, counts, n):
            done = sum(counts.values())
            if done % step == 0 or done == n:
                _say(f"{done}/{n} rows")

    rss0 = _rss_mb()
    profiler = None
    if (a.get("profile") or "").endswith(".yappi"):
        # yappi: CPU time of every thread (the executor's and Prefect's too), not only ours.
        import yappi

        yappi.set_clock_type("cpu")
        yappi.start()
        profiler = yappi
    elif (a.get("profile") or "").endswith(".prof"):
        # cProfile: call counts and own times per function (slower, but exact counts),
        # timed by this thread's CPU clock: a wall clock would charge GIL waits to syscalls.
        import cProfile

        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
    elif a.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="disabled", interval=0.002)
        profiler.start()
    # ``concurrency`` None: the flow's own default settings (each model's lane from the
    # models table, B6); a number: every lane at that many running tasks (B1, B4, B5).
    extra: dict = {}
    if a.get("concurrency") is not None:
        extra["concurrency"] = ConcurrencySettings(
            max_in_flight=a["concurrency"],
            queue_ahead=a.get("queue_ahead", DEFAULT_QUEUE_AHEAD),
            submits_per_second=a.get("submits_per_second", 2.0),
            queries_per_second=a.get("queries_per_second", 20.0),
            **({"global_limit": a["global_limit"]} if "global_limit" in a else {}),
        )
    if a.get("order"):
        extra["order"] = a["order"]
    if a.get("api_keys"):
        # An account pool (B7): one unsaved block per key, each key its own account.
        from kf2v_tasks.credentials import DashScopeCredentials

        extra["credentials_block"] = [
            DashScopeCredentials(api_key=k, base_url=a["base_url"]) for k in a["api_keys"]
        ]
    trace = _trace() if a.get("trace") else None
    cpu0, t0, started_unix = _cpu(), time.monotonic(), time.time()
    with observing(Progress()):
        state = asyncio.run(
            generate_batch(
                manifest=a["manifest"],
                output=a["output"],
                **extra,
                task_runs=TaskRuns(a.get("task_runs", "per_step")),
                storage_options=a.get("storage_options"),
                return_state=True,
            )
        )
    wall, cpu = time.monotonic() - t0, _cpu() - cpu0
    if profiler is not None and a["profile"].endswith(".yappi"):
        profiler.stop()
        profiler.get_func_stats().save(a["profile"], type="pstat")
        Path(a["profile"] + ".threads").write_text(
            "\n".join(f"{t.name} {t.ttot:.3f}" for t in profiler.get_thread_stats())
        )
    elif profiler is not None and a["profile"].endswith(".prof"):
        profiler.disable()
        profiler.dump_stats(a["profile"])
    elif profiler is not None:
        profiler.stop()
        Path(a["profile"]).write_text(
            profiler.output_text(unicode=False, color=False, show_all=False)
        )
    summary = state.result(raise_on_failure=False)
    summary = getattr(summary, "summary", summary)  # a failed batch raises BatchFailedError
    counts = getattr(summary, "counts", None)
    return {
        "wall_s": wall,
        "started_unix": started_unix,
        "cpu_s": cpu,
        "rss_before_mb": rss0,
        "maxrss_mb": _maxrss_mb(),
        "counts": counts,
        "threads_cpu_s": _threads_cpu(),
        "state": state.type.value,
        "message": state.message,
        **({"trace": trace} if trace is not None else {}),
    }


def _trace() -> dict:
    """Record, in unix seconds, each global-limit ask of the lanes and each Prefect retry.

    Observation only (B6, B7): ``acquire_slot`` (one lane's ask, the process's ask lock and
    the client's retries included), the client's HTTP call inside it and every Prefect API
    request (the first 400, retries included) are wrapped to time them, and the Prefect
    client's debug line for a retried request (a 503 from a busy SQLite server, say) is
    kept with its time and request. Nothing they do is changed.
    """
    import functools
    import logging

    from prefect.client.orchestration import PrefectClient

    from kf2v_tasks.lanes import slots

    out: dict = {"asks": [], "http": [], "retries": []}
    ask = slots.acquire_slot

    @functools.wraps(ask)
    async def timed_ask(client, name, want=1):
        t = time.time()
        lease, got = await ask(client, name, want)
        out["asks"].append(dict(name=name, want=want, got=got, called=t, granted=time.time()))
        return lease, got

    slots.acquire_slot = timed_ask
    inc = PrefectClient.increment_concurrency_slots_with_lease

    @functools.wraps(inc)
    async def timed_inc(self, *args, **kwargs):
        t = time.time()
        try:
            return await inc(self, *args, **kwargs)
        finally:
            names = kwargs.get("names") or (args[0] if args else [])
            out["http"].append(dict(names=list(names), sent=t, answered=time.time()))

    PrefectClient.increment_concurrency_slots_with_lease = timed_inc
    # Every Prefect API request of the first seconds (each try of a retried one): which
    # writes were on the server when a lane's ask was answered 503.
    import httpx
    from prefect.client.base import PrefectHttpxAsyncClient

    out["requests"] = []
    send = httpx.AsyncClient.send  # what the Prefect client's retry loop sends each try with

    @functools.wraps(send)
    async def timed_send(self, request, *args, **kwargs):
        t = time.time()
        response = await send(self, request, *args, **kwargs)
        if isinstance(self, PrefectHttpxAsyncClient) and len(out["requests"]) < 400:
            out["requests"].append(
                dict(
                    request=f"{request.method} {request.url.path}",
                    sent=t,
                    answered=time.time(),
                    status=response.status_code,
                )
            )
        return response

    httpx.AsyncClient.send = timed_send

    class Retries(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if "retryable" not in msg:
                return
            # The request retried: a local of the client's retry loop, a few frames up.
            frame, path = sys._getframe(), None
            while frame is not None and path is None:
                if frame.f_code.co_name == "_send_with_retry":
                    request = frame.f_locals.get("request")
                    path = f"{request.method} {request.url.path}" if request else None
                frame = frame.f_back
            out["retries"].append(dict(at=record.created, request=path, message=msg[:120]))

    client_log = logging.getLogger("prefect.client")
    client_log.setLevel(logging.DEBUG)
    client_log.addHandler(Retries(logging.DEBUG))
    return out


# --- the official SDK ----------------------------------------------------------------------


def run_peer(a: dict) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import dashscope
    import requests
    from dashscope import VideoSynthesis
    from dashscope.client import base_api

    scale = float(a["time_scale"])
    dashscope.base_http_api_url = a["base_url"]
    # wait() sleeps 1,1,2,2,2,4,4,4,5... real seconds: compress them by the same scale.
    fast_time = types.SimpleNamespace(
        **{n: getattr(time, n) for n in dir(time) if not n.startswith("__")}
    )
    fast_time.sleep = lambda s: time.sleep(s / scale)
    base_api.time = fast_time

    folder = Path(a["manifest"]).parent
    first, last = f"file://{folder / 'first.png'}", f"file://{folder / 'last.png'}"
    out = Path(a["output"])
    out.mkdir(parents=True, exist_ok=True)
    total = a["rows"]
    step = max(1, total // 10)
    done = [0]
    failures: list[str] = []

    retries = [0]

    def call(i: int):
        # ``VideoSynthesis.call`` is ``async_call`` + ``wait``. Neither retries HTTP 429 and
        # ``call`` returns a throttled *query* as a failed response although the task
        # exists (calling again pays twice). So the peer makes the same two calls itself:
        # create (retried on 429 after 1 s, scaled), then wait (waited on again after a
        # throttled query) — the SDK's own polling loop, unchanged.
        while True:
            try:
                created = VideoSynthesis.async_call(
                    api_key=a["api_key"],
                    model="wan2.2-kf2v-flash",
                    prompt=f"{a.get('tag', 'peer')} clip number {i}",
                    first_frame_url=first,
                    last_frame_url=last,
                    resolution="480P",
                )
            except Exception as exc:
                if "429" not in str(exc) and "Throttling" not in str(exc):
                    raise
                created = None
            if created is not None and created.status_code == 200:
                break
            if created is not None and created.status_code != 429:
                return created
            retries[0] += 1
            time.sleep(1.0 / scale)
        while True:
            rsp = VideoSynthesis.wait(created, api_key=a["api_key"])
            if rsp.status_code != 429:
                return rsp
            retries[0] += 1
            time.sleep(1.0 / scale)

    def one(i: int) -> None:
        rsp = call(i)
        if rsp.status_code != 200 or rsp.output.task_status != "SUCCEEDED":
            failures.append(f"{i}: {rsp.status_code} {rsp.code} {rsp.message}")
            return
        with requests.get(rsp.output.video_url, stream=True, timeout=120) as r:
            r.raise_for_status()
            with open(out / f"r{i:05d}.mp4", "wb") as f:
                for chunk in r.iter_content(chunk_size=1 << 20):
                    f.write(chunk)
        done[0] += 1
        if done[0] % step == 0 or done[0] == total:
            _say(f"{done[0]}/{total} rows")

    rss0 = _rss_mb()
    cpu0, t0, started_unix = _cpu(), time.monotonic(), time.time()
    with ThreadPoolExecutor(max_workers=a["concurrency"]) as pool:
        list(pool.map(one, range(total)))
    wall, cpu = time.monotonic() - t0, _cpu() - cpu0
    return {
        "wall_s": wall,
        "started_unix": started_unix,
        "cpu_s": cpu,
        "rss_before_mb": rss0,
        "maxrss_mb": _maxrss_mb(),
        "counts": {"SUCCEEDED": done[0], "FAILED": len(failures)},
        "throttle_retries": retries[0],
        "failures": failures[:5],
    }


# --- the floor: bare asyncio + httpx -------------------------------------------------------


async def _floor(a: dict) -> dict:
    import httpx

    from kf2v_tasks.dashscope.polling import PollSchedule

    scale = float(a["time_scale"])
    sched = PollSchedule()
    folder = Path(a["manifest"]).parent
    frames = [
        "data:image/png;base64," + base64.b64encode((folder / n).read_bytes()).decode()
        for n in ("first.png", "last.png")
    ]
    out = Path(a["output"])
    out.mkdir(parents=True, exist_ok=True)
    sem = asyncio.Semaphore(a["concurrency"])
    headers = {"Authorization": f"Bearer {a['api_key']}"}
    create_url = a["base_url"] + "/services/aigc/image2video/video-synthesis"
    limits = httpx.Limits(max_connections=a["concurrency"] + 8)
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as http:

        async def retrying(method, *args, **kwargs):
            # A reused keep-alive connection can be closed by the server under our feet.
            for attempt in range(5):
                try:
                    return await getattr(http, method)(*args, **kwargs)
                except httpx.TransportError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.01)

        async def row(i: int) -> None:
            async with sem:
                body = {
                    "model": "wan2.2-kf2v-flash",
                    "input": {
                        "first_frame_url": frames[0],
                        "last_frame_url": frames[1],
                        "prompt": f"floor clip number {i}",
                    },
                    "parameters": {"resolution": "480P", "prompt_extend": True},
                }
                while True:
                    r = await retrying(
                        "post", create_url, json=body, headers={"X-DashScope-Async": "enable"}
                    )
                    if r.status_code != 429:
                        break
                    await asyncio.sleep(0.01)
                r.raise_for_status()
                task_id = r.json()["output"]["task_id"]
                await asyncio.sleep(sched.first_poll / scale)
                while True:
                    r = await retrying("get", f"{a['base_url']}/tasks/{task_id}")
                    if r.status_code == 200:
                        o = r.json()["output"]
                        if o["task_status"] == "SUCCEEDED":
                            break
                    await asyncio.sleep(sched.min_interval / scale)
            r = await retrying("get", o["video_url"])
            with open(out / f"r{i:05d}.mp4", "wb") as f:
                f.write(r.content)

        await asyncio.gather(*(row(i) for i in range(a["rows"])))
    return {}


def run_floor(a: dict) -> dict:
    import httpx  # noqa: F401  (import cost outside the timed part, as for ours)

    rss0 = _rss_mb()
    cpu0, t0, started_unix = _cpu(), time.monotonic(), time.time()
    asyncio.run(_floor(a))
    wall, cpu = time.monotonic() - t0, _cpu() - cpu0
    return {
        "wall_s": wall,
        "started_unix": started_unix,
        "cpu_s": cpu,
        "rss_before_mb": rss0,
        "maxrss_mb": _maxrss_mb(),
        "counts": {"SUCCEEDED": a["rows"]},
    }


# --- B3: persistence -----------------------------------------------------------------------


async def _video_url(a: dict) -> str:
    """Create one task and wait for its signed URL (not timed)."""
    from kf2v_tasks.dashscope.client import Kf2vClient
    from kf2v_tasks.dashscope.models import Kf2vRequest, TaskStatus

    folder = Path(a["manifest"]).parent
    data = [
        "data:image/png;base64," + base64.b64encode((folder / n).read_bytes()).decode()
        for n in ("first.png", "last.png")
    ]
    async with Kf2vClient(a["api_key"], base_url=a["base_url"]) as c:
        st = await c.create_task(
            Kf2vRequest(first_frame_url=data[0], last_frame_url=data[1], prompt=a.get("tag", "b3"))
        )
        while True:
            st = await c.get_task(st.task_id)
            if st.status is TaskStatus.SUCCEEDED:
                return st.video_url
            await asyncio.sleep(0.02)


def run_persist(a: dict) -> dict:
    from kf2v_tasks.storage.download import stream_to_storage
    from kf2v_tasks.storage.paths import open_fs

    url = asyncio.run(_video_url(a))
    # Warm-up (not timed): load the fsspec backend (s3fs/botocore load ~40-60 MB of code and
    # service models once per process) and open a session with one tiny write, so the RSS
    # increase measured is the transfer's, not the import's.
    fs, path = open_fs(a["dest"], a.get("storage_options"))
    fs.pipe_file(path + ".warmup", b"x")
    fs.rm_file(path + ".warmup")
    rss0 = _rss_mb()
    cpu0, t0, started_unix = _cpu(), time.monotonic(), time.time()
    res = asyncio.run(stream_to_storage(url, a["dest"], storage_options=a.get("storage_options")))
    wall, cpu = time.monotonic() - t0, _cpu() - cpu0
    return {
        "wall_s": wall,
        "started_unix": started_unix,
        "cpu_s": cpu,
        "bytes": res.bytes,
        "sha256": res.sha256,
        "rss_before_mb": rss0,
        "maxrss_mb": _maxrss_mb(),
    }


def run_raw(a: dict) -> dict:
    """Raw copy: httpx.stream → a local file (or, for S3, a plain fsspec file: no temp
    object, no hash, no commit). ``fsync_s`` is measured after the timed copy (ours fsyncs)."""
    import fsspec
    import httpx

    url = asyncio.run(_video_url(a))
    dest = a["dest"]
    remote = "://" in dest
    if remote:  # same warm-up as run_persist
        fs = fsspec.filesystem(dest.split("://")[0], **(a.get("storage_options") or {}))
        fs.pipe_file(dest + ".warmup", b"x")
        fs.rm_file(dest + ".warmup")
        opener = lambda: fs.open(dest, "wb")  # noqa: E731
    else:
        opener = lambda: open(dest, "wb")  # noqa: E731
    rss0 = _rss_mb()
    cpu0, t0, started_unix = _cpu(), time.monotonic(), time.time()
    n = 0
    with httpx.stream("GET", url, timeout=120) as r, opener() as f:
        r.raise_for_status()
        for chunk in r.iter_bytes(1 << 20):
            f.write(chunk)
            n += len(chunk)
        f.flush()
        wall = time.monotonic() - t0
        fsync_s = None
        if not remote:
            os.fsync(f.fileno())
            fsync_s = time.monotonic() - t0 - wall
    if remote:  # an fsspec S3 file uploads its last part on close
        wall = time.monotonic() - t0
    cpu = _cpu() - cpu0
    return {
        "wall_s": wall,
        "started_unix": started_unix,
        "cpu_s": cpu,
        "bytes": n,
        "fsync_s": fsync_s,
        "rss_before_mb": rss0,
        "maxrss_mb": _maxrss_mb(),
    }


MODES = {
    "ours": run_ours,
    "peer": run_peer,
    "floor": run_floor,
    "persist": run_persist,
    "raw": run_raw,
}


def main() -> None:
    a = json.loads(sys.argv[1])
    result = MODES[a["mode"]](a)
    result["mode"] = a["mode"]
    Path(a["result_path"]).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
