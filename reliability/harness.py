"""Shared machinery of the soak and the reliability tests.

* :func:`fault_config` — the issue's fault mix, on every endpoint the simulator has.
* :func:`make_dataset` — N distinct, valid frame pairs and their manifest.
* :func:`audit` — reads the output folder, the ledger and the simulator's counters and
  checks the promise: every row a verified video or a clear error, no unexplained second
  create, no partial file at a final path, every file's sha256 equal to its sidecar's.
* :func:`cli_command` / :func:`run_with_kills` — run ``kf2v run`` as a subprocess and
  SIGKILL it (its whole process group) at chosen moments, then restart the same command.

Everything here uses only the public surfaces a user has: the manifest, ``kf2v run``,
the files in the output folder and the simulator's admin endpoints.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from reliability.store import as_store

#: Endpoints that get the generic HTTP faults ("on every endpoint").
HTTP_ENDPOINTS = ("create", "query", "cancel", "list", "policy", "upload", "download")

#: The issue's mix, per endpoint: 5% 429, 5% 500, 3% 503, 3% connection resets.
HTTP_MIX = {"throttle": 0.05, "error500": 0.05, "error503": 0.03, "reset": 0.03}
#: Endpoint-specific faults of the issue.
SPECIFIC = {
    "create.ambiguous": 0.02,  # 500 after the task exists
    "task.fail_moderation": 0.05,  # FAILED tasks
    "download.cut": 0.05,  # body cut mid-stream
    "download.expired": 0.02,  # signed URL expired (403)
}

#: Error codes of a row that failed for a permanent, explainable reason.
PERMANENT_CODES = frozenset(
    {
        "DataInspectionFailed",  # task FAILED (moderation)
        "InternalError.Algo",  # task FAILED (internal)
        "IPInfringementSuspect",
        "AmbiguousCreateError",  # policy: no second guarded retry
        "QueueTimeoutError",
        "TaskCanceledError",
        "TaskExpiredError",
        "InvalidRow",
        "InvalidFrame",
        "DuplicateOfFailedRow",
        "BudgetExceeded",
    }
)


def fault_rates(scale: float = 1.0) -> dict[str, float]:
    """The issue's fault probabilities as ``{"endpoint.kind": p}`` (``scale`` multiplies all)."""
    rates = {f"{e}.{k}": p * scale for e in HTTP_ENDPOINTS for k, p in HTTP_MIX.items()}
    rates.update({k: p * scale for k, p in SPECIFIC.items()})
    return rates


def fault_config(scale: float = 1.0):
    """A :class:`~kf2v_tasks.simulator.FaultConfig` with :func:`fault_rates`."""
    from kf2v_tasks.simulator import FaultConfig

    return FaultConfig(rates=fault_rates(scale))


def fault_spec(scale: float = 1.0) -> str:
    """The same mix as a ``FaultConfig.parse`` string (what RELIABILITY.md shows)."""
    return ",".join(f"{k}={v:g}" for k, v in fault_rates(scale).items())


# ------------------------------------------------------------------------------ dataset


def _frame_png(path: Path, index: int, which: int, size=(256, 240)) -> None:
    from PIL import Image, ImageDraw

    rng = random.Random(f"frame:{index}:{which}")
    colour = tuple(rng.randrange(256) for _ in range(3))
    img = Image.new("RGB", size, colour)
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        d.rectangle(
            [x0, y0, x0 + rng.randrange(20, 120), y0 + rng.randrange(20, 120)],
            fill=tuple(rng.randrange(256) for _ in range(3)),
        )
    d.text((8, 8), f"{index}/{which}", fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "PNG")


def make_dataset(root: Path, rows: int, *, seed: int = 0, name: str = "manifest.csv") -> Path:
    """Write ``rows`` distinct, valid frame pairs under ``root/frames`` and a manifest."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"dataset:{seed}")
    lines = [{"id": "", "first_frame": "", "last_frame": "", "prompt": "", "seed": ""}]
    lines.clear()
    for i in range(rows):
        a = root / "frames" / f"r{i:04d}_a.png"
        b = root / "frames" / f"r{i:04d}_b.png"
        if not a.exists():
            _frame_png(a, i, 0)
        if not b.exists():
            _frame_png(b, i, 1)
        lines.append(
            {
                "id": f"row{i:04d}",
                "first_frame": f"frames/{a.name}",
                "last_frame": f"frames/{b.name}",
                "prompt": f"shot {i}: a slow dolly move, seed {rng.randrange(10**6)}",
                "seed": str(i),
            }
        )
    buf = io.StringIO()
    w = csv.DictWriter(
        buf,
        fieldnames=list(lines[0]) if lines else ["first_frame", "last_frame"],
        lineterminator="\n",
    )
    w.writeheader()
    w.writerows(lines)
    path = root / name
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


# -------------------------------------------------------------------------------- audit


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_results(
    output: Any, name: str = "results.csv", storage_options: Optional[dict] = None
) -> list[dict[str, str]]:
    """The rows of ``results.csv`` in an output folder (local path, URL or store)."""
    store = as_store(output, storage_options)
    if not store.exists(name):
        return []
    return list(csv.DictReader(io.StringIO(store.read_text(name))))


def read_ledger(output: Any, storage_options: Optional[dict] = None) -> dict[str, dict]:
    """Ledger records by fingerprint (``.kf2v/ledger/*.json``) of an output folder."""
    store = as_store(output, storage_options)
    out = {}
    for rel in store.files():
        if rel.startswith(".kf2v/ledger/") and rel.endswith(".json") and rel.count("/") == 2:
            out[rel.rsplit("/", 1)[1][: -len(".json")]] = json.loads(store.read_text(rel))
    return out


@dataclass
class Audit:
    """What the output folder and the simulator say about one batch."""

    rows: int = 0
    results_rows: int = 0
    delivered: int = 0
    delivered_this_run: int = 0
    skipped_already_delivered: int = 0
    failed_permanent: int = 0
    failed_other: int = 0
    failures_by_code: dict[str, int] = field(default_factory=dict)
    missing_rows: list[int] = field(default_factory=list)
    #: Rows delivered whose video no ``persisted`` ledger record names (a re-run would
    #: not know the video is there).
    lost_ledger_records: int = 0
    creates: int = 0
    create_requests: int = 0
    fingerprints: int = 0
    #: creates - fingerprints created: every create beyond the first of its fingerprint.
    extra_creates: int = 0
    creates_per_fingerprint: dict[str, int] = field(default_factory=dict)  # histogram
    extra_creates_after_failed: int = 0
    extra_creates_after_ambiguous: int = 0
    extra_creates_unexplained: int = 0
    unknown_fingerprints: int = 0
    failed_tasks: int = 0
    ambiguous_fingerprints: int = 0
    possible_duplicate_rows: int = 0
    files_at_final_paths: int = 0
    files_verified: int = 0
    partial_files_at_final_paths: int = 0
    stray_files: list[str] = field(default_factory=list)
    delivered_but_reported_failed: int = 0
    leftover_temp_files: int = 0
    results_inconsistent: list[str] = field(default_factory=list)
    faults_injected: dict[str, int] = field(default_factory=dict)
    repeated_fingerprints: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def audit(
    output: Any,
    rows: int,
    stats: dict[str, Any],
    tasks: list[dict[str, Any]],
    *,
    ambiguous_evidence: Optional[set[str]] = None,
    storage_options: Optional[dict] = None,
) -> Audit:
    """Check the promise on a finished batch; every breach is listed in ``problems``.

    Args:
        output: the output folder: a local path, an ``s3://`` URL, or an
            :class:`~reliability.store.OutputStore`.
        rows: data rows in the manifest.
        stats: ``sim.stats()`` after the batch.
        tasks: ``sim.tasks()`` after the batch.
        ambiguous_evidence: fingerprint prefixes (12 hex) the runs' logs name in an
            ambiguous-create warning (see :func:`ambiguous_from_logs`); needed because a
            re-create after a FAILED task starts a fresh ledger record.
        storage_options: fsspec options to read ``output`` (S3: moto itself, no faults).

    Example:
        ```python
        a = audit("out", 40, sim.stats(), sim.tasks())
        assert a.ok, a.problems
        ```
    """
    a = Audit(rows=rows)
    store = as_store(output, storage_options)
    results = read_results(store)
    ledger = read_ledger(store)
    recorded = {rec.get("sha256") for rec in ledger.values() if rec.get("state") == "persisted"}
    a.results_rows = len(results)
    a.faults_injected = dict(sorted(stats.get("faults", {}).items()))
    seen_rows = set()
    delivered_paths: dict[str, str] = {}
    codes: Counter[str] = Counter()
    for r in results:
        n = int(r["row"])
        if n in seen_rows:
            a.problems.append(f"results.csv lists row {n} twice")
        seen_rows.add(n)
        status = r["status"]
        if status in ("succeeded", "skipped"):
            out = store.relative(r["output"] or "")
            side = posixpath.splitext(out)[0] + ".json" if out else ""
            if not out or not store.exists(out) or not store.exists(side):
                a.results_inconsistent.append(
                    f"row {n}: {status} but {r['output']} or its sidecar is missing"
                )
                continue
            sidecar = json.loads(store.read_text(side))
            digest = store.sha256(out)
            if not (digest == sidecar.get("sha256") == r["sha256"]) or (
                r["bytes"] and int(r["bytes"]) != store.size(out)
            ):
                a.results_inconsistent.append(
                    f"row {n}: sha256 file {digest[:12]} sidecar {str(sidecar.get('sha256'))[:12]} "
                    f"results {r['sha256'][:12]}"
                )
                continue
            a.delivered += 1
            delivered_paths[out] = r["id"]
            if digest not in recorded:
                a.lost_ledger_records += 1
            if status == "succeeded":
                a.delivered_this_run += 1
            else:
                a.skipped_already_delivered += 1
            if r.get("possible_duplicate") == "True":
                a.possible_duplicate_rows += 1
        elif status in ("failed", "invalid", "over_budget"):
            code = r.get("error_code") or ""
            codes[code or "(none)"] += 1
            if not code or not r.get("error_message"):
                a.problems.append(f"row {n}: {status} without an error code and message")
            if code in PERMANENT_CODES:
                a.failed_permanent += 1
            else:
                a.failed_other += 1
        else:
            a.problems.append(f"row {n}: unexpected final status {status!r}")
    a.failures_by_code = dict(sorted(codes.items()))
    first_data_row = 2
    a.missing_rows = sorted(set(range(first_data_row, first_data_row + rows)) - seen_rows)
    if a.missing_rows:
        a.problems.append(
            f"{len(a.missing_rows)} rows missing from results.csv: {a.missing_rows[:10]}"
        )
    if a.results_inconsistent:
        a.problems.append(f"{len(a.results_inconsistent)} rows inconsistent with their files")
    if a.lost_ledger_records:
        a.problems.append(f"{a.lost_ledger_records} delivered rows have no persisted ledger record")
    if a.failed_other:
        a.problems.append(
            f"{a.failed_other} rows failed for a non-permanent reason: {a.failures_by_code}"
        )

    # ---- files at final paths: every .mp4 outside .kf2v must be complete and verified
    for rel in store.files():
        parts = rel.split("/")
        if parts[0] == ".kf2v":
            if len(parts) > 1 and parts[1] == "tmp":
                a.leftover_temp_files += 1
            continue
        if rel.endswith(".mp4"):
            a.files_at_final_paths += 1
            side = rel[: -len(".mp4")] + ".json"
            ok = False
            if store.exists(side):
                try:
                    doc = json.loads(store.read_text(side))
                    ok = doc.get("sha256") == store.sha256(rel) and int(
                        doc.get("bytes", -1)
                    ) == store.size(rel)
                except (ValueError, OSError):
                    ok = False
            if ok:
                a.files_verified += 1
            else:
                a.partial_files_at_final_paths += 1
            if rel not in delivered_paths:
                a.stray_files.append(rel)
        elif parts[-1].endswith(".part") or ".tmp" in parts[-1]:
            a.partial_files_at_final_paths += 1
    if a.partial_files_at_final_paths:
        a.problems.append(
            f"{a.partial_files_at_final_paths} partial/unverified files at final paths"
        )
    # A verified video whose row results.csv calls failed: another run (overlap) delivered
    # it after this results.csv's run gave up on the row; last writer of results.csv wins.
    failed_outputs = {
        store.relative(r["output"])
        for r in results
        if r["status"] not in ("succeeded", "skipped") and r.get("output")
    }
    a.delivered_but_reported_failed = sum(1 for f in a.stray_files if f in failed_outputs)
    if a.delivered_but_reported_failed:
        a.problems.append(
            f"{a.delivered_but_reported_failed} rows results.csv reports failed have a verified "
            f"video at their final path (delivered by another run): {a.stray_files[:5]}"
        )
    elif a.stray_files:
        a.problems.append(f"video files no delivered row accounts for: {a.stray_files[:5]}")

    # ---- creates per fingerprint
    by_fp: dict[str, int] = stats.get("creates_by_fingerprint", {})
    a.creates = int(stats.get("creates", 0))
    a.create_requests = int(stats.get("create_requests", 0))
    a.fingerprints = len(by_fp)
    a.extra_creates = a.creates - a.fingerprints
    a.creates_per_fingerprint = {str(k): v for k, v in sorted(Counter(by_fp.values()).items())}
    tasks_by_fp: dict[str, list[dict]] = {}
    for t in tasks:
        tasks_by_fp.setdefault(t["fingerprint"], []).append(t)
    a.failed_tasks = sum(1 for t in tasks if t.get("status") == "FAILED")
    for fp, n in by_fp.items():
        rec = ledger.get(fp)
        if rec is None:
            a.unknown_fingerprints += 1
            continue
        ambiguous = (
            bool(rec.get("possible_duplicate"))
            # A create with no answer (ambiguous_create), or one a killed run sent and
            # never heard back from (create_outcome_unknown, recorded by the run that took
            # the claim over): both are the ledger's own record of an ambiguous create.
            or any(e.get("event") in _AMBIGUOUS_EVENTS for e in rec.get("events", []))
            # A re-create after a FAILED task starts a fresh record; the earlier task's
            # possible_duplicate is kept under extra.earlier_tasks.
            or any(
                t.get("possible_duplicate")
                for t in (rec.get("extra") or {}).get("earlier_tasks", [])
            )
            or fp[:12] in (ambiguous_evidence or set())
        )
        a.ambiguous_fingerprints += ambiguous
        if n <= 1:
            continue
        ts = sorted(tasks_by_fp.get(fp, []), key=lambda t: t["created"])
        # ``outcome`` rather than ``status``: a task past its TTL reads UNKNOWN.
        failed_before = sum(
            1
            for t in ts[:-1]
            if t.get("outcome", "succeeded") != "succeeded" or t.get("status") == "CANCELED"
        )
        extra = n - 1
        from_failed = min(extra, failed_before)
        a.extra_creates_after_failed += from_failed
        rest = extra - from_failed
        if rest and ambiguous:
            a.extra_creates_after_ambiguous += rest
        elif rest:
            a.extra_creates_unexplained += rest
            a.problems.append(
                f"fingerprint {fp[:12]} created {n} times with no FAILED task or ambiguity"
            )
        a.repeated_fingerprints.append(
            {
                "fingerprint": fp[:12],
                "row_id": rec.get("row_id"),
                "creates": n,
                "after_failed": from_failed,
                "after_ambiguous": rest if ambiguous else 0,
                "unexplained": 0 if ambiguous else rest,
                "tasks": [f"{t.get('outcome')}/{t.get('status')}" for t in ts],
                "final_state": rec.get("state"),
            }
        )
    if a.unknown_fingerprints:
        a.problems.append(f"{a.unknown_fingerprints} created fingerprints have no ledger record")
    if a.rows and a.delivered + a.failed_permanent + a.failed_other != a.rows:
        a.problems.append(
            f"rows do not add up: {a.delivered} delivered + {a.failed_permanent + a.failed_other} "
            f"failed != {a.rows}"
        )
    return a


_FP_IN_LOG = re.compile(r"fingerprint ([0-9a-f]{12})")
_AMBIGUOUS_WORDS = ("ambiguous", "outcome unknown", "may have reached")
#: Ledger events that record an ambiguous create (see kf2v_tasks.generation.ledger_record).
_AMBIGUOUS_EVENTS = frozenset({"ambiguous_create", "create_outcome_unknown"})


def ambiguous_from_logs(texts) -> set[str]:
    """Fingerprint prefixes that log lines report an ambiguous (or crash-interrupted) create for."""
    found: set[str] = set()
    for text in texts:
        for line in text.splitlines():
            if any(w in line for w in _AMBIGUOUS_WORDS):
                found.update(_FP_IN_LOG.findall(line))
    return found


def ambiguous_from_log_dir(folder: Path) -> set[str]:
    return ambiguous_from_logs(
        p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.glob("*.log"))
    )


# ---------------------------------------------------------------------------- CLI runs


def cli_env(base_url: str, api_key: str, prefect_api_url: Optional[str], time_scale: float) -> dict:
    """Environment for a ``kf2v run`` subprocess pointed at a simulator and a Prefect server."""
    env = dict(os.environ)
    env.update(
        DASHSCOPE_API_KEY=api_key,
        DASHSCOPE_HTTP_BASE_URL=base_url,
        KF2V_TIME_SCALE=repr(float(time_scale)),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    if prefect_api_url:
        env["PREFECT_API_URL"] = prefect_api_url
    return env


def cli_command(
    manifest: Path,
    output: Path,
    *,
    concurrency: int,
    time_scale: float,
    submits_per_second: float = 2.0,
    queries_per_second: float = 20.0,
    storage_options: Optional[dict] = None,
) -> list[str]:
    """The one ``kf2v run`` command every start and restart uses.

    ``storage_options`` (non-secret: an endpoint) go to ``--storage-options``; S3
    credentials travel in the environment (``AWS_ACCESS_KEY_ID``...), never as parameters.
    """
    extra = ["--storage-options", json.dumps(storage_options)] if storage_options else []
    return [
        sys.executable,
        "-m",
        "kf2v_tasks._cli.main",
        "run",
        str(manifest),
        "--output",
        str(output),
        "--concurrency",
        str(concurrency),
        "--submits-per-second",
        str(submits_per_second),
        "--queries-per-second",
        str(queries_per_second),
        "--time-scale",
        str(time_scale),
        *extra,
    ]


def progress_of(output: Any) -> int:
    """A monotone-ish measure of how far a batch got: ledger records + videos kept."""
    store = as_store(output)
    return store.count(".kf2v/ledger", ".json") + store.count("", ".mp4")


@dataclass
class KillEvent:
    attempt: int
    progress_target: int
    progress_at_kill: int
    seconds_after_start: float
    killed: bool


def run_with_kills(
    cmd: list[str],
    env: dict,
    output: Any,
    *,
    rows: int,
    kills: int,
    seed: int,
    log_dir: Path,
    timeout: float = 1800.0,
) -> tuple[list[KillEvent], int, float]:
    """Start ``cmd``; SIGKILL it ``kills`` times at random moments; restart; let the last run end.

    A kill moment is a random progress target (ledger records + videos, 0..2·rows) drawn
    in increasing order, plus a random extra delay, so kills land while submitting,
    polling, downloading and committing. Returns the kill events, the final run's exit
    code and the total wall time.
    """
    rng = random.Random(f"kills:{seed}")
    span = 2 * rows
    targets = sorted(rng.randrange(1, max(2, span - 1)) for _ in range(kills))
    events: list[KillEvent] = []
    log_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    output = as_store(output)
    attempt = 0
    for target in targets + [None]:
        attempt += 1
        log = open(log_dir / f"run-{attempt}.log", "wb")
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            if target is None:
                rc = proc.wait(timeout=timeout)
                log.close()
                return events, rc, time.monotonic() - t_all
            extra = rng.uniform(0.0, 0.4)
            while proc.poll() is None and progress_of(output) < target:
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"run {attempt} made no progress to {target}")
                time.sleep(0.02)
            time.sleep(extra)
            killed = proc.poll() is None
            at = progress_of(output)
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            events.append(KillEvent(attempt, target, at, round(time.monotonic() - t0, 2), killed))
        finally:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=30)
            if not log.closed:
                log.close()
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------ in-process runs


async def run_batch(
    manifest: Path,
    output: Path,
    *,
    max_in_flight: int = 4,
    global_limit: Optional[str] = "default",
    **flow_kwargs,
):
    """Run the batch flow in this process (inside a Prefect server/harness); return its state.

    ``global_limit`` is the batch flow's own default unless given. ``None`` limits
    in-process only: Prefect grants a new global-limit slot in about two real seconds,
    which a test at 600x compression sees as 20 service minutes.
    """
    from kf2v_flows.batch import generate_batch
    from kf2v_tasks.batch.config import ConcurrencySettings
    from kf2v_tasks.lanes.names import DEFAULT_LIMIT_PREFIX

    if global_limit == "default":
        global_limit = DEFAULT_LIMIT_PREFIX
    return await generate_batch(
        manifest=str(manifest),
        output=str(output),
        concurrency=ConcurrencySettings(
            max_in_flight=max_in_flight,
            submits_per_second=2.0,
            queries_per_second=20.0,
            global_limit=global_limit,
        ),
        return_state=True,
        **flow_kwargs,
    )


@contextmanager
def simulated_service(config, api_key: Optional[str] = None) -> Iterator[Any]:
    """Run a simulator and point this process at it (env + time scale); undo it afterwards."""
    from kf2v_tasks import clock
    from kf2v_tasks.simulator import run_simulator

    key = api_key or config.api_key or "sk-kf2v-reliability-0000"
    saved = {k: os.environ.get(k) for k in ("DASHSCOPE_API_KEY", "DASHSCOPE_HTTP_BASE_URL")}
    with run_simulator(config) as sim:
        os.environ["DASHSCOPE_API_KEY"] = key
        os.environ["DASHSCOPE_HTTP_BASE_URL"] = sim.base_url
        clock.set_time_scale(config.speed)
        try:
            yield sim
        finally:
            clock.set_time_scale(None)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
