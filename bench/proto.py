"""Prototypes of changes to files this bench does not own, applied by monkeypatching.

``python -m bench.side`` applies the ones named in its ``patches`` argument, so their
effect is measured with exactly the same harness as the shipped code. Each docstring says
what the real change would be.
"""

from __future__ import annotations

import asyncio
import functools


def shared_download_client() -> None:
    """storage.stream_to_storage: reuse one httpx.AsyncClient instead of one per download.

    Real change: ``persist_task_video`` (kf2v_tasks/persistence.py) should pass a shared
    ``http=`` client (e.g. a plain client owned by ``Kf2vClient`` next to its API client),
    or storage.py should keep one module-level client per event loop. Building an
    ``httpx.AsyncClient`` loads the CA bundle (``SSLContext.load_verify_locations``),
    ≈30 ms of CPU each time — more than all our HTTP calls of a row together.
    """
    import httpx

    from kf2v_tasks import storage

    original = storage.stream_to_storage
    clients: dict[int, httpx.AsyncClient] = {}

    @functools.wraps(original)
    async def patched(url, dest, *, http=None, **kwargs):
        if http is None:
            loop = id(asyncio.get_running_loop())
            http = clients.get(loop)
            if http is None:
                http = clients[loop] = httpx.AsyncClient(
                    timeout=storage._HTTP_TIMEOUT, follow_redirects=True
                )
        return await original(url, dest, http=http, **kwargs)

    storage.stream_to_storage = patched


_TEMPLATES = {
    "Validate kf2v frames": "validate-{first_frame}",
    "Submit kf2v task": "submit-{row_id}",
    "Poll kf2v task until done": "poll-{task_id}",
    "Persist kf2v video": "persist-{destination}",
}


def cached_task_options() -> None:
    """runner.py: build each row step's task once per run, not ``with_options`` per row.

    Real change: in ``BatchRunner`` create ``submit = submit_kf2v.with_options(
    task_run_name="submit-{row_id}")`` (Prefect formats the template from the call's
    parameters) etc. once, and call those in ``_generate``/``plan``. ``Task.with_options``
    builds a new ``Task`` each time, and ``Task.__init__`` inspects the function's source.
    """
    from prefect.tasks import Task

    original = Task.with_options
    cache: dict = {}

    def with_options(self, *args, **kwargs):
        template = _TEMPLATES.get(self.name)
        if template is None or args:
            return original(self, *args, **kwargs)
        kwargs.pop("task_run_name", None)
        key = (id(self), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        task = cache.get(key)
        if task is None:
            task = cache[key] = original(self, task_run_name=template, **kwargs)
        return task

    Task.with_options = with_options


class _Plain:
    """Stands in for a Prefect task: ``with_options(...)`` returns the undecorated function."""

    def __init__(self, task) -> None:
        self.fn = task.fn

    def with_options(self, *args, **kwargs):
        return self.fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def plain_steps() -> None:
    """runner.py: run the four row steps as plain coroutines (no task run per step).

    The batch stays one flow run; the per-row record is results.csv, the ledger, the
    sidecars and the ``kf2v.video.persisted`` events. Retries of transient errors are
    already inside the client (``RetryPolicy``) and the download (resume/refresh).
    """
    from kf2v_tasks import tasks

    for name in ("validate_frames", "submit_kf2v", "poll_until_done", "persist_video"):
        setattr(tasks, name, _Plain(getattr(tasks, name)))


def one_task_per_row() -> None:
    """runner.py: one Prefect task run per row ("generate-<id>") around the plain steps.

    Keeps a task run per row in the UI (state, duration, failure) at a quarter of the cost
    of four; the frame validation pass stays one plain coroutine per row.
    """
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    from kf2v_tasks import runner

    plain_steps()
    original = runner._RowContext._generate

    @task(name="Generate kf2v row", cache_policy=NO_CACHE, task_run_name="generate-{row_id}")
    async def generate_row(ctx, row, record, fp, dest, price, base, row_id):
        return await original(ctx, row, record, fp, dest, price, base)

    async def _generate(self, row, record, fp, dest, price, base):
        return await generate_row(self, row, record, fp, dest, price, base, row_id=row.id)

    runner._RowContext._generate = _generate


def list_sweep() -> None:
    """polling.py: one ``GET /tasks?status=RUNNING`` sweep for every in-flight task of a client.

    Real change (kf2v_tasks/polling.py + client.py): a ``TaskWatcher`` owned by the
    ``Kf2vClient`` (one per account). ``wait_for_task`` queries its task once after
    ``first_poll`` (to see it start), then registers and waits. The watcher wakes every
    ``min_interval`` service seconds while at least one registered task could have finished
    (running ≥ ``expected_min_runtime``), lists the RUNNING tasks (page_size 100, more
    pages only if ``total`` > 100) and wakes every registered task missing from the list;
    each woken task makes one ``GET /tasks/{id}`` for its terminal state and video URL (a
    task still PENDING/RUNNING there — a race — just re-registers). Queries per task fall
    from one per interval to ≈ 2 + sweeps / tasks in flight, at the same detection lag.
    Deadlines and queue-timeout cancelling stay as today (checked at each wake-up).
    """
    from kf2v_tasks import clock, polling, tasks
    from kf2v_tasks.models import TaskStatus

    watchers: dict[int, _Watcher] = {}

    class _Watcher:
        def __init__(self, client, schedule) -> None:
            self.client = client
            self.schedule = schedule
            self.waiting: dict[str, tuple[float, asyncio.Future]] = {}
            self.task: asyncio.Task | None = None

        def register(self, task_id: str, since: float) -> asyncio.Future:
            fut = asyncio.get_running_loop().create_future()
            self.waiting[task_id] = (since, fut)
            if self.task is None or self.task.done():
                self.task = asyncio.ensure_future(self._loop())
            return fut

        async def _loop(self) -> None:
            s = self.schedule
            while self.waiting:
                await clock.sleep(s.min_interval)
                now = clock.now()
                if not any(
                    now - since >= s.expected_min_runtime for since, _ in self.waiting.values()
                ):
                    continue
                running: set[str] = set()
                page = 1
                try:
                    while True:
                        body = await self.client.list_tasks(
                            status="RUNNING", page_no=page, page_size=100
                        )
                        running.update(row["task_id"] for row in body.get("data", []))
                        if page >= int(body.get("total_page") or 1):
                            break
                        page += 1
                    body = await self.client.list_tasks(status="PENDING", page_size=100)
                    running.update(row["task_id"] for row in body.get("data", []))
                except Exception as exc:  # a failed sweep: wake everyone to poll directly
                    running = set()
                    polling.logger.warning("sweep failed (%s); polling directly", exc)
                for task_id in [t for t in self.waiting if t not in running]:
                    _, fut = self.waiting.pop(task_id)
                    if not fut.done():
                        fut.set_result(None)

    async def wait_for_task(
        client,
        task_id,
        *,
        schedule=None,
        deadline=polling.DEFAULT_DEADLINE,
        queue_deadline=polling.DEFAULT_QUEUE_DEADLINE,
        raise_on_failure=True,
        on_status=None,
    ):
        schedule = schedule or polling.PollSchedule()
        history = []
        started = clock.now()
        watcher = watchers.get(id(client))
        if watcher is None:
            watcher = watchers[id(client)] = _Watcher(client, schedule)
        await clock.sleep(schedule.first_poll)
        since = started
        while True:
            state = await client.get_task(task_id)
            polling._record(history, state.status)
            if state.status.is_terminal:
                state = state.model_copy(update={"history": history})
                if raise_on_failure:
                    polling._raise_for_terminal(state)
                return state
            if clock.now() - started >= deadline:
                raise polling.TaskTimeoutError(
                    task_id, f"task {task_id} still {state.status.value}", history=history
                )
            if state.status is TaskStatus.RUNNING and since == started:
                since = clock.now() - schedule.first_poll  # it may have started right away
            await watcher.register(task_id, since)

    tasks.wait_for_task = wait_for_task


def poll_from_last_seen() -> None:
    """polling.wait_for_task: count a task's running time from the last query that saw it
    *not* running (submit time, or the last PENDING answer), not from the first RUNNING answer.

    Real change (kf2v_tasks/polling.py, ``wait_for_task``): keep ``not_running_at`` (start:
    ``started``; updated on every PENDING answer) and set ``running_since = not_running_at``
    on the first RUNNING answer, instead of ``now``. Today a task that starts at once is
    first seen RUNNING at ``first_poll`` (10 s), so the tight 4 s polling starts at 70 s of
    run time instead of 60 s, and the 4 % of tasks that finish between 60 and 70 s are
    seen up to 10 s late (that is the p95 of the lag); a task that waited PENDING is worse
    (up to ``pending_interval`` late).
    """
    import inspect
    import textwrap

    from kf2v_tasks import polling, tasks

    src = textwrap.dedent(inspect.getsource(polling.wait_for_task))
    src = src.replace(
        "    running_since: Optional[float] = None\n",
        "    running_since: Optional[float] = None\n    not_running_at = started\n",
    )
    src = src.replace(
        "        if state.status is TaskStatus.RUNNING and running_since is None:\n"
        "            running_since = now\n",
        "        if state.status is TaskStatus.RUNNING and running_since is None:\n"
        "            running_since = not_running_at\n"
        "        elif state.status is TaskStatus.PENDING:\n"
        "            not_running_at = now\n",
    )
    assert "not_running_at = now" in src, "polling.wait_for_task changed; update the prototype"
    ns = dict(vars(polling))
    exec(compile(src, polling.__file__, "exec"), ns)
    polling.wait_for_task = ns["wait_for_task"]
    tasks.wait_for_task = ns["wait_for_task"]


def queue_ahead() -> None:
    """runner.py: keep one task more than the quota submitted, queued PENDING on the service.

    Real change (kf2v_tasks/runner.py ``_execute`` + ``ConcurrencySettings``): a
    ``queue_ahead: int = 1`` setting; ``SlotPool.create(max_in_flight + queue_ahead, ...)``.
    DashScope queues tasks over the account's concurrency as PENDING and starts the next one
    the instant a running task ends, so the account never waits for the client to notice
    the end, release the slot and submit again. A PENDING task is not billed and can be
    cancelled (the queue deadline already does that).
    """
    from kf2v_tasks import runner, slots

    original = slots.SlotPool.create.__func__

    @classmethod
    async def create(cls, size, gcl_name=None):
        return await original(cls, size + 1, gcl_name)

    runner.SlotPool.create = create
