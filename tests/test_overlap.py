"""Overlapping runs of one manifest into one output never pay twice and share the account.

Real processes, as users get there: two ``python -m kf2v_tasks._cli.main run`` of the same
manifest into the same output, the second started about a second after the first began
paying, against ONE simulator and ONE ``prefect server start`` (started and stopped here by
process id). The simulator accepts many tasks at once (``max_concurrent`` 64), so only our
own limits keep the account at two tasks in flight. Then a claim whose holder is SIGKILLed:
the next run takes it over once the lease has passed and re-attaches to the killed run's
task (creates stay equal to rows).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kf2v_tasks._cli.stack import LocalStack, free_port
from kf2v_tasks.generation.claims import ClaimDoc
from kf2v_tasks.lanes.names import DEFAULT_QUEUE_AHEAD
from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator
from kf2v_testing.moto_server import MOTO_KEY

from conftest import TEST_API_KEY
from helpers import make_pairs, manifest_text

SPEED = 60.0  # one service minute per real second: a claim's lease is 6 real seconds (the floor)
MAX_IN_FLIGHT = 2
CLI = [sys.executable, "-m", "kf2v_tasks._cli.main"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One real Prefect server for the module (SQLite), stopped by process id afterwards."""
    home = tmp_path_factory.mktemp("overlap-prefect")
    with LocalStack(home=home, prefect_port=free_port(), ui=False) as s:
        s.start_server()
        yield s


@pytest.fixture
def sim():
    cfg = SimulatorConfig(
        speed=SPEED,
        max_concurrent=64,  # the service would take them all: only our limits hold at 2
        # 4 real seconds a task: the second run is up and working while the first pays.
        runtime=RuntimeDistribution(kind="fixed", low=240),
        render="tiny",
    )
    with run_simulator(cfg) as s:
        yield s


def run_env(stack: LocalStack, sim, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "home").mkdir(exist_ok=True)
    env = stack.env(
        HOME=str(tmp_path / "home"),
        DASHSCOPE_API_KEY=TEST_API_KEY,
        DASHSCOPE_HTTP_BASE_URL=sim.base_url,
        KF2V_TIME_SCALE=str(SPEED),
        AWS_ACCESS_KEY_ID=MOTO_KEY,
        AWS_SECRET_ACCESS_KEY=MOTO_KEY,
    )
    env.pop("PREFECT_INTEGRATIONS_KF2V_TIME_SCALE", None)
    return env


def write_manifest(tmp_path: Path, rows: int) -> Path:
    pairs = make_pairs(tmp_path, rows)
    table = [
        {"id": f"r{i:02d}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)
    ]
    path = tmp_path / "m.csv"
    path.write_text(manifest_text(table))
    return path


def start_run(manifest: Path, output: str, env: dict, log: Path, *extra: str) -> subprocess.Popen:
    args = [*CLI, "run", str(manifest), "--output", output, "--concurrency", str(MAX_IN_FLIGHT)]
    return subprocess.Popen(
        [*args, *extra], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def wait_exit(proc: subprocess.Popen, log: Path, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        tail = log.read_text()[-3000:]
        raise AssertionError(f"run {proc.pid} did not finish:\n{tail}") from None


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def peak_in_flight(tasks: list[dict]) -> int:
    """Most tasks created and not yet ended at any instant, from the simulator's timelines."""
    edges = []
    for t in tasks:
        edges.append((t["created"], 1))
        edges.append((t["ended"] if t["ended"] is not None else float("inf"), -1))
    peak = now = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):  # an end before a start at a tie
        now += step
        peak = max(peak, now)
    return peak


class Output:
    """The output root as a filesystem, local or S3, for the checks."""

    def __init__(self, url: str, storage_options: dict | None) -> None:
        import fsspec

        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))

    def read(self, name: str) -> bytes:
        self.fs.invalidate_cache()
        return self.fs.cat_file(f"{self.root}/{name}")

    def names(self, folder: str = "") -> list[str]:
        self.fs.invalidate_cache()
        base = f"{self.root}/{folder}".rstrip("/")
        return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False))


def check_delivered_once(out: Output, rows: int, stats: dict) -> None:
    videos = [n for n in out.names() if n.endswith(".mp4")]
    assert videos == [f"r{i:02d}.mp4" for i in range(rows)]
    task_ids = set()
    for name in videos:
        side = json.loads(out.read(name[:-4] + ".json"))
        assert hashlib.sha256(out.read(name)).hexdigest() == side["sha256"]
        task_ids.add(side["task_id"])
    assert len(task_ids) == rows  # one task per row, each kept once
    records = [json.loads(out.read(f".kf2v/ledger/{n}")) for n in out.names(".kf2v/ledger")]
    assert len(records) == rows and {r["state"] for r in records} == {"persisted"}
    assert {r["task_id"] for r in records} == task_ids
    assert stats["creates"] == rows, stats
    assert set(stats["creates_by_fingerprint"].values()) == {1}, stats
    # The run that re-attached found the other run's committed file: nothing fetched twice.
    assert stats["downloads"] == rows, stats


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_overlapping_runs_pay_once_and_share_the_account(where, stack, sim, tmp_path, request):
    rows = 16 if where == "local" else 8
    manifest = write_manifest(tmp_path, rows)
    if where == "local":
        output, opts, extra = str(tmp_path / "out"), None, ()
    else:
        s3 = request.getfixturevalue("s3_server")
        output, opts = f"s3://{s3.new_bucket()}/out", s3.storage_options
        # Credentials come from the environment (run_env); only the endpoint is an option.
        endpoint = {"client_kwargs": {"endpoint_url": s3.endpoint, "region_name": "us-east-1"}}
        extra = ("--storage-options", json.dumps(endpoint))
    env = run_env(stack, sim, tmp_path)
    first = start_run(manifest, output, env, tmp_path / "first.log", *extra)
    # The second run starts once the first is paying (its first create), a second later.
    wait_until(lambda: sim.stats()["creates"] >= 1 or first.poll() is not None, 180, "a create")
    time.sleep(1.0)
    second = start_run(manifest, output, env, tmp_path / "second.log", *extra)
    overlapped = first.poll() is None  # the first run was still paying when this one started
    rc1 = wait_exit(first, tmp_path / "first.log")
    rc2 = wait_exit(second, tmp_path / "second.log")
    log1, log2 = (tmp_path / "first.log").read_text(), (tmp_path / "second.log").read_text()
    assert (rc1, rc2) == (0, 0), log1[-3000:] + "\n----\n" + log2[-3000:]
    for log in (log1, log2):
        headline = log.split(f"{rows} rows:")[1].splitlines()[0]
        assert "failed" not in headline, headline
    assert overlapped
    stats, tasks = sim.stats(), sim.tasks()
    # Tasks at the service: the account's running slots plus the look-ahead queue.
    assert peak_in_flight(tasks) <= MAX_IN_FLIGHT + DEFAULT_QUEUE_AHEAD, tasks
    assert stats["peak_concurrency"] <= MAX_IN_FLIGHT + DEFAULT_QUEUE_AHEAD, stats
    check_delivered_once(Output(output, opts), rows, stats)
    assert TEST_API_KEY not in log1 + log2


_HOLDER = """
import asyncio, os, pathlib, sys
from kf2v_tasks._cli.inputs import defaults_from_args
from kf2v_tasks._cli.parser import build_parser
from kf2v_tasks.batch.plan import plan_batch
from kf2v_tasks.credentials import DashScopeCredentials
from kf2v_tasks.generation.ledger import Ledger
from kf2v_tasks.generation.submit import submit_generation

manifest, out, flag = sys.argv[1:4]
defaults = defaults_from_args(build_parser().parse_args(["run", manifest, "--output", out]))

async def main():
    plan = await plan_batch(manifest, out, defaults=defaults)
    creds = DashScopeCredentials(
        api_key=os.environ["DASHSCOPE_API_KEY"], base_url=os.environ["DASHSCOPE_HTTP_BASE_URL"]
    )
    async with creds.get_client() as client:
        for row in plan.runnable:
            await submit_generation(
                client, plan.frames[row.id], row.prompt, row.negative_prompt, row.options,
                ledger=Ledger(out), row_id=row.id,
            )
        pathlib.Path(flag).write_text("claimed and created")
        while True:  # "polling": the claims stay held and renewed until we are killed
            await asyncio.sleep(1)

asyncio.run(main())
"""


def test_a_sigkilled_holder_is_taken_over_after_the_lease_and_nothing_is_paid_twice(
    stack, sim, tmp_path
):
    rows = 3
    manifest = write_manifest(tmp_path, rows)
    out = tmp_path / "out"
    env = run_env(stack, sim, tmp_path)
    flag = tmp_path / "holder.ready"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(manifest), str(out), str(flag)],
        env=env, stdout=(tmp_path / "holder.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until(lambda: flag.exists() or holder.poll() is not None, 120, "the holder")
        assert flag.exists(), (tmp_path / "holder.log").read_text()[-3000:]
        claims = [
            ClaimDoc.model_validate_json(p.read_text()) for p in out.glob(".kf2v/claims/*.json")
        ]
        assert len(claims) == rows and {c.pid for c in claims} == {holder.pid}
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # mid-poll, no chance to release anything
        holder.wait()
    assert sim.stats()["creates"] == rows
    # Dead: nobody renews. Wait until every lease has run out, then run the manifest.
    last = max(c.expires_at for c in claims)
    time.sleep(max(0.0, (last - datetime.now(UTC)).total_seconds()) + 0.2)
    left = [ClaimDoc.model_validate_json(p.read_text()) for p in out.glob(".kf2v/claims/*.json")]
    assert left and not any(c.is_live() for c in left)

    rerun = start_run(manifest, str(out), env, tmp_path / "rerun.log")
    rc = wait_exit(rerun, tmp_path / "rerun.log")
    log = (tmp_path / "rerun.log").read_text()
    assert rc == 0, log[-3000:]
    stats = sim.stats()
    check_delivered_once(Output(str(out), None), rows, stats)
    for path in (out / ".kf2v" / "ledger").glob("*.json"):
        record = json.loads(path.read_text())
        takeovers = [e for e in record["events"] if e["event"] == "claim_takeover"]
        assert len(takeovers) == 1, record["events"]
        assert takeovers[0]["from_pid"] == holder.pid and takeovers[0]["pid"] != holder.pid
    assert not list(out.glob(".kf2v/claims/*.json"))  # released once each video was kept
