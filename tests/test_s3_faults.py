"""S3 faults through a real proxy in front of a real moto server (nothing mocked on the S3 side).

The injector really injects each kind, botocore/s3fs absorb what they can (their budget
is measured here), a reset mid-UploadPart never leaves an object at the final key, a
moto restart keeps objects and open multipart uploads, and a small batch on S3 under
all of it keeps the promise.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kf2v_tasks.storage.download import S3_PART_SIZE, stream_to_storage  # noqa: E402
from kf2v_testing.moto_server import MotoS3Server  # noqa: E402
from kf2v_testing.s3_faults import S3FaultProxy, s3_operation  # noqa: E402

VIDEO = bytes(range(256)) * (S3_PART_SIZE // 256 + 4096)  # 8 MiB + 1 MiB: two parts


@pytest.fixture
def proxy(s3_proxies) -> S3FaultProxy:
    return s3_proxies(seed=1)


@pytest.fixture
def own_moto() -> Iterator[MotoS3Server]:
    """A moto server of this test alone (restarting the session's would disturb others)."""
    server = MotoS3Server()
    try:
        yield server
    finally:
        server.stop()


def _video_source() -> httpx.AsyncClient:
    """The signed-URL side of a download: serves VIDEO (the S3 side is the real thing)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=VIDEO, headers={"Content-Length": str(len(VIDEO))})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def test_operation_names_target_faults() -> None:
    assert s3_operation("PUT", "/b/k?partNumber=2&uploadId=abc", {}) == "UploadPart"
    assert s3_operation("POST", "/b/k?uploads", {}) == "CreateMultipartUpload"
    assert s3_operation("POST", "/b/k?uploadId=abc", {}) == "CompleteMultipartUpload"
    assert s3_operation("DELETE", "/b/k?uploadId=abc", {}) == "AbortMultipartUpload"
    assert s3_operation("PUT", "/b/k", {"x-amz-copy-source": "/b/j"}) == "CopyObject"
    assert s3_operation("GET", "/b?list-type=2&prefix=x", {}) == "ListObjects"
    with pytest.raises(ValueError, match="unknown S3 fault kinds"):
        S3FaultProxy(None, rates={"teapot": 1.0})  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["slowdown", "error500"])
def test_one_5xx_is_retried_below_our_code(
    s3_server: MotoS3Server, proxy: S3FaultProxy, kind: str
) -> None:
    bucket = s3_server.new_bucket()
    fs = proxy.filesystem()
    proxy.script(kind, operation="PutObject")
    fs.pipe_file(f"{bucket}/a.json", b'{"ok": true}')  # no exception reaches the caller
    assert proxy.counts[f"s3.{kind}"] == 1
    assert proxy.counts["forwarded.PutObject"] == 1  # the retry, not the faulted request
    assert s3_server.filesystem().cat_file(f"{bucket}/a.json") == b'{"ok": true}'


def test_retry_budget_for_500_and_slowdown(s3_server: MotoS3Server, proxy: S3FaultProxy) -> None:
    """botocore makes 5 attempts; s3fs adds rounds for SlowDown only; then the error is ours."""
    bucket = s3_server.new_bucket()
    fs = proxy.filesystem()
    proxy.script(*["error500"] * 40, operation="PutObject")
    with pytest.raises(OSError):
        fs.pipe_file(f"{bucket}/b.json", b"{}")
    assert proxy.counts["s3.error500"] == 5
    assert proxy.counts["forwarded.PutObject"] == 0
    proxy.clear_script()

    proxy.script(*["slowdown"] * 9, operation="PutObject")
    fs.pipe_file(f"{bucket}/c.json", b"{}")  # 9 SlowDowns fit in s3fs's 5 x 5 attempts
    assert proxy.counts["s3.slowdown"] == 9 and proxy.counts["forwarded.PutObject"] == 1


async def test_reset_mid_upload_part_is_retried_and_the_video_is_whole(
    s3_server: MotoS3Server, proxy: S3FaultProxy
) -> None:
    bucket = s3_server.new_bucket()
    proxy.script("reset_upload_part")
    async with _video_source() as http:
        res = await stream_to_storage(
            "https://oss.example/v.mp4",
            f"s3://{bucket}/out/v.mp4",
            storage_options=proxy.storage_options,
            http=http,
        )
    assert proxy.counts["s3.reset_upload_part"] == 1
    # The received 9 MiB went up as one part: reset once, then sent whole by the retry.
    assert proxy.counts["forwarded.UploadPart"] == 1
    assert proxy.counts["forwarded.CompleteMultipartUpload"] == 1
    data = s3_server.filesystem().cat_file(f"{bucket}/out/v.mp4")
    assert hashlib.sha256(data).hexdigest() == res.sha256 == hashlib.sha256(VIDEO).hexdigest()


async def test_resets_that_outlast_the_retries_leave_no_object_at_the_final_key(
    s3_server: MotoS3Server, proxy: S3FaultProxy
) -> None:
    bucket = s3_server.new_bucket()
    proxy.script(*["reset_upload_part"] * 60)
    async with _video_source() as http:
        with pytest.raises(Exception) as info:
            await stream_to_storage(
                "https://oss.example/v.mp4",
                f"s3://{bucket}/out/v.mp4",
                storage_options=proxy.storage_options,
                http=http,
            )
    assert "sk-" not in str(info.value)
    assert proxy.counts["s3.reset_upload_part"] >= 5
    assert proxy.counts["forwarded.UploadPart"] == 0
    direct = s3_server.filesystem()
    assert not direct.exists(f"{bucket}/out/v.mp4")
    # The upload was aborted: nothing left to become an object later.
    uploads = direct.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])
    assert uploads == []


def test_restart_keeps_objects_and_open_multipart_uploads(own_moto: MotoS3Server) -> None:
    proxy = S3FaultProxy(own_moto)
    try:
        bucket = own_moto.new_bucket()
        fs = proxy.filesystem()
        fs.pipe_file(f"{bucket}/kept.json", b'{"sha256": "x"}')
        up = fs.call_s3("create_multipart_upload", Bucket=bucket, Key="big.mp4")["UploadId"]
        part1 = fs.call_s3(
            "upload_part",
            Bucket=bucket,
            Key="big.mp4",
            UploadId=up,
            PartNumber=1,
            Body=VIDEO[:S3_PART_SIZE],
        )
        pid_before = own_moto.proc.pid
        info = proxy.restart_upstream()
        assert own_moto.proc.pid != pid_before  # a real new server process
        assert info["objects_restored"] == 1 and info["uploads_restored"] == 1
        part2 = fs.call_s3(
            "upload_part",
            Bucket=bucket,
            Key="big.mp4",
            UploadId=up,
            PartNumber=2,
            Body=VIDEO[S3_PART_SIZE:],
        )
        fs.call_s3(
            "complete_multipart_upload",
            Bucket=bucket,
            Key="big.mp4",
            UploadId=up,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": 1, "ETag": part1["ETag"]},
                    {"PartNumber": 2, "ETag": part2["ETag"]},
                ]
            },
        )
        direct = own_moto.filesystem()
        assert direct.cat_file(f"{bucket}/kept.json") == b'{"sha256": "x"}'
        assert direct.cat_file(f"{bucket}/big.mp4") == VIDEO
        assert proxy.counts["restarts"] == 1
    finally:
        proxy.stop()


@pytest.mark.slow
def test_small_batch_on_s3_under_faults_and_a_restart_keeps_the_promise(
    prefect_server, tmp_path: Path
) -> None:
    """8 rows through ``kf2v run`` to S3 with every S3 fault kind and moto restarted
    mid-batch: zero partial objects, zero lost ledger records, zero extra creates."""
    from prefect.settings import PREFECT_API_URL

    from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator
    from reliability.harness import (
        ambiguous_from_log_dir,
        audit,
        cli_command,
        cli_env,
        make_dataset,
    )
    from reliability.scenarios import S3_VIDEO_BYTES, run_with_restart, s3_output

    from conftest import TEST_API_KEY

    rows, speed = 8, 300.0
    manifest = make_dataset(tmp_path / "data", rows, seed=21)
    cfg = SimulatorConfig(
        speed=speed,
        max_concurrent=4,
        runtime=RuntimeDistribution(kind="uniform", low=60.0, high=240.0),
        video_bytes=S3_VIDEO_BYTES,
        seed=21,
        api_key=TEST_API_KEY,
    )
    rates = {"slowdown": 0.08, "error500": 0.08, "reset_upload_part": 0.3}
    with run_simulator(cfg) as sim, s3_output(rates=rates, seed=21) as s3:
        env = {**cli_env(sim.base_url, TEST_API_KEY, PREFECT_API_URL.value(), speed), **s3.env}
        cmd = cli_command(
            manifest, s3.url, concurrency=4, time_scale=speed, storage_options=s3.run_options
        )
        rc, _ = run_with_restart(
            cmd, env, s3, restart_at=rows // 2, log=tmp_path / "logs" / "run-1.log", timeout=300
        )
        stats, tasks = sim.stats(), sim.tasks()
        a = audit(
            s3.store(),
            rows,
            stats,
            tasks,
            ambiguous_evidence=ambiguous_from_log_dir(tmp_path / "logs"),
        )
        injected = s3.proxy.injected()
    log = (tmp_path / "logs" / "run-1.log").read_text(errors="replace")
    assert rc == 0, log[-3000:]
    assert len(s3.restarts) == 1, "moto should have been restarted mid-batch"
    assert injected.get("s3.slowdown", 0) + injected.get("s3.error500", 0) >= 1, injected
    assert injected.get("s3.reset_upload_part", 0) >= 1, injected
    assert a.problems == [], a.to_dict()
    assert a.delivered == rows == a.files_verified
    assert a.partial_files_at_final_paths == 0
    assert a.lost_ledger_records == 0
    assert a.extra_creates == 0 and a.creates == rows
    assert TEST_API_KEY not in log
