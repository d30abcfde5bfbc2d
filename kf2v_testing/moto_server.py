"""Helpers for testing and benchmarking against real local servers (dev extra: moto).

``MotoS3Server`` runs a real S3 endpoint (moto server) as a subprocess on loopback, so
storage code is exercised through s3fs over HTTP rather than mocked calls.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import httpx

from kf2v_tasks._cli.processes import free_port, stop_process

#: moto accepts any credentials; these are what the helpers use.
MOTO_KEY = "testing"


class MotoS3Server:
    """A moto S3 server subprocess on a free loopback port; stop it with :meth:`stop`.

    Example:
        ```python
        s3 = MotoS3Server()
        bucket = s3.new_bucket()
        fs = s3.filesystem()
        fs.pipe_file(f"{bucket}/hello.txt", b"hi")
        s3.stop()
        ```
    """

    def __init__(self, timeout: float = 60.0, port: Optional[int] = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.timeout = timeout
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, AWS_ACCESS_KEY_ID=MOTO_KEY, AWS_SECRET_ACCESS_KEY=MOTO_KEY)
        root = str(Path(__file__).resolve().parent.parent)  # kf2v_testing, from any cwd
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kf2v_testing.moto_atomic",
                "-H",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                httpx.get(self.endpoint + "/", timeout=2.0)
                return proc
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    self.stop(proc)
                    raise RuntimeError(f"moto server did not start on {self.endpoint}") from None
                time.sleep(0.1)

    def restart(self) -> None:
        """Stop the server and start a new one on the same port.

        moto keeps its state in memory, so the new server starts EMPTY: a caller that
        needs the objects back must save and restore them (see
        :class:`kf2v_testing.s3_faults.S3FaultProxy.restart_upstream`).

        Example:
            ```python
            s3 = MotoS3Server()
            s3.restart()          # same endpoint, fresh (empty) server
            s3.stop()
            ```
        """
        self.stop()
        self.proc = self._start()

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for this endpoint."""
        return {
            "key": MOTO_KEY,
            "secret": MOTO_KEY,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }

    def filesystem(self):
        """An s3fs filesystem on this endpoint (listings not cached)."""
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options, use_listings_cache=False)

    def new_bucket(self, prefix: str = "kf2v") -> str:
        """Create a fresh bucket and return its name.

        Through boto3: s3fs would send LocationConstraint=us-east-1, which S3 rejects.
        """
        import boto3

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=MOTO_KEY,
            aws_secret_access_key=MOTO_KEY,
        ).create_bucket(Bucket=name)
        return name

    def stop(self, proc: Optional[subprocess.Popen] = None) -> None:
        """Stop the server by its process id."""
        stop_process(proc or self.proc)
