"""The API key never leaves the process: not in logs, Prefect's database, artifacts,
results, sidecars, ledger files, exception texts or anything else written.

A full batch runs with a recognisable key (``TEST_API_KEY``) under faults that exercise
every error path (ambiguous creates, FAILED tasks, resets, cut and expired downloads), and
a second one with a recognisable *wrong* key (every create rejected with 401). Then every
captured log record (DEBUG included, exceptions formatted), stdout/stderr, the Prefect
test server's SQLite database, every artifact, log and state message the server holds,
and every file under the output folders and Prefect's local result storage are scanned.

Also: output paths can never leave the output root, whatever the manifest says.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kf2v_tasks.batch.manifest import parse_manifest  # noqa: E402
from kf2v_tasks.batch.plan import output_path  # noqa: E402
from kf2v_tasks.simulator import FaultConfig, RuntimeDistribution, SimulatorConfig  # noqa: E402
from reliability.harness import make_dataset, read_results, run_batch, simulated_service  # noqa: E402

from conftest import TEST_API_KEY  # noqa: E402

WRONG_KEY = "sk-kf2vtestsecret-WRONGKEY-fedcba9876543210"
#: What must never appear: the whole keys and their distinctive middle part.
NEEDLES = [TEST_API_KEY, WRONG_KEY, "kf2vtestsecret-0123456789abcdef", "WRONGKEY-fedcba9876543210"]


def _hits(blob: bytes | str, where: str) -> list[str]:
    data = blob.encode("utf-8", "replace") if isinstance(blob, str) else blob
    found = []
    for needle in NEEDLES:
        for enc in ("utf-8", "utf-16-le"):
            if needle.encode(enc) in data:
                found.append(f"{where}: {needle!r} ({enc})")
    return found


def _scan_tree(root: Path, label: str) -> list[str]:
    hits = []
    if not root.exists():
        return hits
    for p in root.rglob("*"):
        if p.is_file():
            try:
                hits += _hits(p.read_bytes(), f"{label}/{p.relative_to(root)}")
            except OSError:
                pass
    return hits


def _sqlite_path() -> Path:
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    assert url and "sqlite" in url, url
    return Path(url.split(":///", 1)[1])


async def _server_texts() -> list[tuple[str, str]]:
    """Everything the Prefect server holds that could carry text, as raw API JSON:
    artifacts, logs, flow runs (parameters, states), task runs, variables."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value().rstrip("/")
    out: list[tuple[str, str]] = []
    async with httpx.AsyncClient(timeout=60) as http:
        for kind in ("artifacts", "logs", "flow_runs", "task_runs", "variables"):
            offset, total = 0, 0
            while True:
                resp = await http.post(
                    f"{api}/{kind}/filter", json={"limit": 200, "offset": offset}
                )
                resp.raise_for_status()
                items = resp.json()
                if not items:
                    break
                out.append((f"server {kind} [{offset}:]", resp.text))
                offset += len(items)
                total += len(items)
            if kind in ("artifacts", "logs", "flow_runs", "task_runs"):
                assert total, f"the server holds no {kind}: the scan would prove nothing"
    return out


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _record_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        text += "\n" + record.exc_text
    return text + "\n" + repr(record.__dict__)


@pytest.mark.slow
async def test_full_batch_leaks_the_key_nowhere(prefect_server, tmp_path: Path, capfd) -> None:
    # Prefect's logging config stops propagation to the root logger (so caplog sees
    # nothing): attach a collecting handler to every logger that could log, at DEBUG.
    collector = _Collector()
    names = (
        "",
        "kf2v_tasks",
        "httpx",
        "httpcore",
        "prefect",
        "prefect.flow_runs",
        "prefect.task_runs",
        "prefect.events",
        "uvicorn",
        "asyncio",
    )
    for name in names:
        logging.getLogger(name).addHandler(collector)
        if name:
            logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        manifest = make_dataset(tmp_path / "data", 10, seed=21)
        faults = FaultConfig(
            rates={
                "create.ambiguous": 0.2,
                "create.reset": 0.1,
                "create.error503": 0.1,
                "query.reset": 0.1,
                "query.throttle": 0.1,
                "task.fail_moderation": 0.2,
                "download.cut": 0.2,
                "download.expired": 0.2,
            }
        )
        cfg = SimulatorConfig(
            speed=600.0,
            max_concurrent=4,
            runtime=RuntimeDistribution(kind="uniform", low=60.0, high=120.0),
            render="tiny",
            faults=faults,
            seed=5,
            api_key=TEST_API_KEY,
        )
        with simulated_service(cfg, api_key=TEST_API_KEY) as sim:
            state = await run_batch(manifest, tmp_path / "out", max_in_flight=4)
            stats = sim.stats()
        assert stats["creates"] >= 1 and stats["faults"], stats
        statuses = {r["status"] for r in read_results(tmp_path / "out")}
        assert "succeeded" in statuses

        # The same batch with a recognisable wrong key: every row fails with 401.
        with simulated_service(cfg, api_key=WRONG_KEY) as sim:
            bad_state = await run_batch(manifest, tmp_path / "out-wrong-key", max_in_flight=2)
        wrong = read_results(tmp_path / "out-wrong-key")
        assert wrong and all(r["status"] == "failed" for r in wrong), wrong
        assert {r["error_code"] for r in wrong} <= {"InvalidApiKey", "AuthenticationError"}, wrong
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(collector)
            if name:
                logging.getLogger(name).setLevel(logging.NOTSET)

    hits: list[str] = []
    names_seen = {r.name.split(".")[0] for r in collector.records}
    # (Prefect's own run loggers reach the API instead: scanned below via read_logs/DB.)
    assert {"kf2v_tasks", "httpcore", "httpx"} <= names_seen, names_seen
    assert any(
        r.levelno >= logging.WARNING and r.name.startswith("kf2v_tasks") for r in collector.records
    )
    for rec in collector.records:
        hits += _hits(_record_text(rec), f"log record {rec.name}")
    captured = capfd.readouterr()
    hits += _hits(captured.out, "stdout") + _hits(captured.err, "stderr")
    for st_ in (state, bad_state):
        hits += _hits(str(st_.message) + repr(st_), "flow state")
        try:
            await st_.aresult(raise_on_failure=True)
        except BaseException as exc:  # noqa: BLE001 - exception texts are what we scan
            hits += _hits(repr(exc) + str(exc), "flow exception")
    hits += _scan_tree(tmp_path / "out", "out")
    hits += _scan_tree(tmp_path / "out-wrong-key", "out-wrong-key")

    for where, text in await _server_texts():
        hits += _hits(text, where)
    db = _sqlite_path()
    assert db.exists()
    for suffix in ("", "-wal", "-journal", "-shm"):
        p = Path(str(db) + suffix)
        if p.exists():
            hits += _hits(p.read_bytes(), f"prefect database {p.name}")

    from prefect.settings import PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH

    hits += _scan_tree(Path(PREFECT_LOCAL_STORAGE_PATH.value()), "prefect result storage")
    hits += _scan_tree(Path(PREFECT_HOME.value()) / "logs", "prefect home logs")
    assert hits == [], "\n".join(sorted(set(hits))[:40])


# ------------------------------------------------------------- outputs stay inside the root

_SEGMENTS = st.sampled_from(
    [
        "..",
        ".",
        "",
        "a",
        "b.mp4",
        ".kf2v",
        "~",
        "..\\..",
        "C:",
        "/",
        "//",
        "%2e%2e",
        "\\",
        "x y",
        "é",
    ]
)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    name=st.one_of(
        st.lists(_SEGMENTS, min_size=1, max_size=6).map("/".join),
        st.lists(_SEGMENTS, min_size=1, max_size=6).map("\\".join),
        st.text(min_size=1, max_size=40),
        st.sampled_from(
            [
                "/etc/passwd",
                "../../x.mp4",
                "a/../../x.mp4",
                "file:///tmp/x.mp4",
                "s3://bucket/x.mp4",
                "~/x.mp4",
                "\\\\server\\share\\x.mp4",
                "C:\\x.mp4",
                "a/./../../b",
            ]
        ),
    ),
    root_kind=st.sampled_from(["/data/out", "/data/out/", "s3://bucket/run", "relative/out"]),
)
def test_output_paths_never_leave_the_output_root(name: str, root_kind: str) -> None:
    text = "id,first_frame,last_frame,output\nr1,a.png,b.png," + _csv_cell(name) + "\n"
    parsed = parse_manifest(text.encode("utf-8"), source="m.csv", base_dir="/data")
    if not parsed.rows:
        assert parsed.errors, "a rejected row must carry a reason"
        assert all(e.row_number == 2 for e in parsed.errors)
        return
    (row,) = parsed.rows
    dest = output_path(root_kind, row)
    root = root_kind.rstrip("/")
    assert dest.startswith(root + "/"), (name, dest)
    rel = dest[len(root) + 1 :]
    parts = rel.split("/")
    assert ".." not in parts and "" not in parts and parts[0] != ".kf2v", (name, dest)
    if "://" not in root:
        assert os.path.normpath(dest).startswith(os.path.normpath(root) + os.sep), (name, dest)


def _csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


async def test_output_symlink_inside_the_root_cannot_lead_outside(
    prefect_server, tmp_path: Path
) -> None:
    """A folder inside the output root that is a symlink to elsewhere must not receive
    the video: the row fails or the file stays under the real root."""
    out = tmp_path / "out"
    outside = tmp_path / "elsewhere"
    out.mkdir()
    outside.mkdir()
    (out / "sub").symlink_to(outside, target_is_directory=True)
    data = tmp_path / "data"
    make_dataset(data, 1, seed=2)
    manifest = data / "m.csv"
    manifest.write_text(
        "id,first_frame,last_frame,output\nr1,frames/r0000_a.png,frames/r0000_b.png,sub/r1.mp4\n"
    )
    cfg = SimulatorConfig(
        speed=600.0, runtime=RuntimeDistribution(kind="fixed", low=60.0), render="tiny"
    )
    with simulated_service(cfg, api_key=TEST_API_KEY):
        await run_batch(manifest, out, max_in_flight=1)
    assert list(outside.iterdir()) == [], "a video was written outside the output root"
