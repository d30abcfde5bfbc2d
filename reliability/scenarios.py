"""The soak's storage scenarios: output on S3 behind the fault proxy, and overlapping runs.

* :func:`s3_output` — a moto server, the :class:`~kf2v_testing.s3_faults.S3FaultProxy`
  in front of it and a fresh bucket: the run writes through the faults, the audit reads
  moto directly.
* :func:`run_with_restart` — one ``kf2v run`` with moto restarted once mid-batch.
* :func:`run_overlapping` — two ``kf2v run`` of the same manifest into the same output,
  the second started ``delay`` seconds after the first.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from reliability.harness import progress_of
from reliability.store import OutputStore

#: S3 faults of the soak, per request: 3% 503 SlowDown, 3% 500 InternalError, and 10% of
#: the multipart UploadPart requests reset half-way through their body.
S3_FAULT_RATES = {"slowdown": 0.03, "error500": 0.03, "reset_upload_part": 0.10}
#: Video size in S3 mode: just over one 8 MiB part, so every video is a 2-part upload.
S3_VIDEO_BYTES = 9 * 1024 * 1024


@dataclass
class S3Output:
    """Where an S3-mode run writes, and how the audit reads it."""

    url: str
    run_options: dict[str, Any]  # what ``kf2v run`` gets: the proxy endpoint, no secret
    audit_options: dict[str, Any]  # straight to moto, for the audit
    env: dict[str, str]  # credentials of the run, by environment
    proxy: Any
    restarts: list[dict[str, float]] = field(default_factory=list)

    def store(self) -> OutputStore:
        """The output as the audit reads it (moto directly, no faults, no cache)."""
        return OutputStore(self.url, self.audit_options)


@contextmanager
def s3_output(
    rates: Optional[dict[str, float]] = None, seed: int = 0, prefix: str = "out"
) -> Iterator[S3Output]:
    """A moto server, the fault proxy in front of it and a fresh bucket; stopped afterwards.

    Example:
        ```python
        with s3_output(seed=1) as s3:
            cmd = cli_command(manifest, s3.url, concurrency=4, time_scale=600,
                              storage_options=s3.run_options)
        ```
    """
    from kf2v_testing.moto_server import MOTO_KEY, MotoS3Server
    from kf2v_testing.s3_faults import S3FaultProxy

    moto = MotoS3Server()
    proxy = None
    try:
        proxy = S3FaultProxy(moto, rates=S3_FAULT_RATES if rates is None else rates, seed=seed)
        bucket = moto.new_bucket("kf2v-soak")
        yield S3Output(
            url=f"s3://{bucket}/{prefix}",
            run_options={
                "client_kwargs": {"endpoint_url": proxy.endpoint, "region_name": "us-east-1"}
            },
            audit_options=moto.storage_options,
            env={
                "AWS_ACCESS_KEY_ID": MOTO_KEY,
                "AWS_SECRET_ACCESS_KEY": MOTO_KEY,
                "AWS_DEFAULT_REGION": "us-east-1",
            },
            proxy=proxy,
        )
    finally:
        if proxy is not None:
            proxy.stop()
        moto.stop()


def run_with_restart(
    cmd: list[str],
    env: dict,
    s3: S3Output,
    *,
    restart_at: Optional[int],
    log: Path,
    timeout: float = 1800.0,
) -> tuple[int, float]:
    """Run ``cmd`` to its end; restart moto once progress reaches ``restart_at``.

    Progress is ledger records + videos at the output (as in the crash phase). The
    restart's figures are appended to ``s3.restarts``. Returns the exit code and wall time.
    """
    store = s3.store()
    t0 = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while restart_at is not None and proc.poll() is None:
                if progress_of(store) >= restart_at:
                    s3.restarts.append(
                        {**s3.proxy.restart_upstream(), "seconds_after_start": _since(t0)}
                    )
                    break
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"the run made no progress to {restart_at}")
                time.sleep(0.1)
            rc = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        finally:
            _stop(proc)
    return rc, time.monotonic() - t0


def run_overlapping(
    cmd: list[str], env: dict, *, delay: float, log_dir: Path, timeout: float = 1800.0
) -> tuple[list[int], float]:
    """Start ``cmd`` twice, the second ``delay`` s after the first; wait for both.

    Returns both exit codes and the wall time. Logs go to ``run-1.log`` and ``run-2.log``
    (the audit reads them for ambiguous-create warnings).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    procs, logs = [], []
    try:
        for i in (1, 2):
            if i == 2:
                time.sleep(delay)
            logs.append(open(log_dir / f"run-{i}.log", "wb"))
            procs.append(
                subprocess.Popen(
                    cmd, env=env, stdout=logs[-1], stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            _stop(p)
        for f in logs:
            f.close()
    return codes, time.monotonic() - t0


def _since(t0: float) -> float:
    return round(time.monotonic() - t0, 2)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a run we started (by its process group) if it is still there."""
    if proc.poll() is None:
        from kf2v_tasks._cli.processes import stop_process

        stop_process(proc)
