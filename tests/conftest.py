"""Shared fixtures: a simulator on loopback, a moto S3 server subprocess, a Prefect test server.

Everything a test starts it stops again (servers by process id).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator

# Before Prefect is imported (it reads its settings then): this session's own PREFECT_HOME.
# Under pytest-xdist each worker is a session, so ephemeral servers' databases, the lanes'
# lock and lease files and anything else kept there are never shared by tests running at
# once, nor taken from the developer's own ~/.prefect.
_PREFECT_HOME = tempfile.mkdtemp(prefix="kf2v-tests-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)

import httpx  # noqa: E402
import pytest  # noqa: E402

from kf2v_tasks._cli.stack import free_port, stop_process  # noqa: F401,E402  (re-exported for tests)
from kf2v_testing.moto_server import MotoS3Server  # noqa: E402
from kf2v_testing.s3_faults import S3FaultProxy  # noqa: E402

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# Some tests run the batch's planning (validate_frames task runs) outside a flow run.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# Tests talk to the simulator only; a developer's real key must never be used here.
os.environ.pop("DASHSCOPE_API_KEY", None)
os.environ.pop("DASHSCOPE_HTTP_BASE_URL", None)
# Prices depend on the region: the suite's are Beijing's unless a test says otherwise.
os.environ["KF2V_REGION"] = "beijing"

#: A recognisable fake key: tests grep logs and outputs for it.
TEST_API_KEY = "sk-kf2vtestsecret-0123456789abcdef"


def wait_for_http(url: str, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers any HTTP status."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.HTTPError as exc:  # not up yet
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s: {last}")


#: Whole files of slow tests: each test runs the `kf2v` command (a fresh interpreter that
#: imports Prefect, seconds of CPU) or soaks S3 under faults.
SLOW_FILES = {
    "test_cli_keeps_results.py",
    "test_cli_output.py",
    "test_cli_stop.py",
    "test_cli_validate.py",
    "test_s3_faults.py",
    "test_startup.py",
}


@pytest.hookimpl(tryfirst=True)  # before -m reads the markers
def pytest_collection_modifyitems(config, items):
    """Every test on the Prefect server is slow (it runs flows on a server that takes a
    while to start), and so is every test in SLOW_FILES; slow tests first, so that on
    pytest-xdist workers the longest ones start at once instead of being the tail that
    everyone else waits for (those marked slow by hand first: the longest ones)."""
    rank: dict[str, int] = {}
    for item in items:
        rank[item.nodeid] = 0 if item.get_closest_marker("slow") else 2
        if "prefect_server" in getattr(item, "fixturenames", ()) or item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
            rank[item.nodeid] = min(rank[item.nodeid], 1)
    items.sort(key=lambda item: rank[item.nodeid])
    # --dist worksteal hands each worker one contiguous share of this list and steals from
    # its end: deal the sorted list out, so every share starts with its part of the slow.
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    if workers > 1:
        items[:] = [item for share in range(workers) for item in items[share::workers]]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3Server]:
    """A real S3 endpoint (moto server subprocess) on a free loopback port."""
    server = MotoS3Server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_proxies(s3_server: MotoS3Server) -> Iterator[Callable[..., S3FaultProxy]]:
    """Make counting (and fault-injecting) proxies in front of the session's moto server.

    Call it with the proxy's ``seed`` (each test module keeps its own, so its faults stay
    reproducible); every proxy made is stopped when the test ends.
    """
    made: list[S3FaultProxy] = []

    def make(seed: int, **kwargs) -> S3FaultProxy:
        made.append(S3FaultProxy(s3_server, seed=seed, **kwargs))
        return made[-1]

    try:
        yield make
    finally:
        for p in made:
            p.stop()


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server (temporary SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def _own_default_ledger(tmp_path_factory, monkeypatch):
    """Each test's public tasks keep their default ledger apart: the same frames and prompt
    in two tests are two pieces of work here, not one paid once (as they are for a user)."""
    monkeypatch.setenv(
        "PREFECT_INTEGRATIONS_KF2V_LEDGER", str(tmp_path_factory.mktemp("default-ledger"))
    )


@pytest.fixture(autouse=True)
def _fresh_account_limits(request):
    """Each test that uses the Prefect server starts with no kf2v global concurrency limit.

    A batch creates the account's limit with its own max_in_flight when it is missing and
    every later run keeps to the server's value, as real runs do; tests with other sizes
    must not inherit an earlier test's limit.
    """
    yield
    if "prefect_server" not in request.fixturenames:
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for limit in client.read_global_concurrency_limits(limit=200, offset=0):
            if limit.name.startswith("kf2v"):
                client.delete_global_concurrency_limit_by_name(limit.name)
