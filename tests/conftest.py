"""Shared fixtures: a simulator on loopback, a moto S3 server subprocess, a Prefect test server.

Everything a test starts it stops again (servers by process id).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from kf2v_tasks.stack import free_port, stop_process  # noqa: F401  (re-exported for tests)

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# Tests talk to the simulator only; a developer's real key must never be used here.
os.environ.pop("DASHSCOPE_API_KEY", None)
os.environ.pop("DASHSCOPE_HTTP_BASE_URL", None)

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


class S3Server:
    """A moto S3 server on loopback, reached through s3fs with ``storage_options``."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    @property
    def storage_options(self) -> dict:
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options, use_listings_cache=False)

    def new_bucket(self) -> str:
        import boto3

        name = f"kf2v-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 endpoint (moto server subprocess) on a free loopback port."""
    port = free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/")
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server (temporary SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
