"""A dry run never loses a finished run's results: it reports kept rows as ``skipped``.

On a real (ephemeral) Prefect server against the simulator over real HTTP, with the output
on local disk and on S3 (moto). A real run writes ``results.csv``; a dry run (the flow's
``dry_run`` or ``kf2v validate --output``) writes ``results.dry-run.csv`` next to it and
leaves ``results.csv`` byte for byte as it was.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

from kf2v_flows.batch import generate_batch
from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.simulator import RuntimeDistribution

from helpers import fast_service, make_pairs, manifest_text, pointed_at

pytestmark = pytest.mark.usefixtures("prefect_server")
FAST = ConcurrencySettings(max_in_flight=4, submits_per_second=20, queries_per_second=200)


@pytest.fixture(scope="module")
def sim():
    with fast_service(RuntimeDistribution(kind="fixed", low=30), seed=5) as s:
        yield s


@pytest.fixture(autouse=True)
def _env(sim, monkeypatch):
    with pointed_at(sim, monkeypatch):
        yield


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _manifest(folder: Path, n: int) -> Path:
    pairs = make_pairs(folder, n)
    rows = [
        {"id": f"d{i}", "first_frame": a, "last_frame": b, "job": f"J-{i}"}
        for i, (a, b) in enumerate(pairs)
    ]
    path = folder / "m.csv"
    path.write_text(manifest_text(rows, ["id", "first_frame", "last_frame", "job"]))
    return path


async def test_dry_run_after_a_finished_run_keeps_every_sha256(sim, tmp_path):
    manifest = _manifest(tmp_path / "in", 3)
    out = tmp_path / "out"
    first = await generate_batch(str(manifest), str(out), concurrency=FAST, extra_columns=True)
    assert first.counts == {"succeeded": 3}
    written = (out / "results.csv").read_bytes()
    done = {r["id"]: r for r in _rows(written.decode())}
    assert all(len(r["sha256"]) == 64 and r["task_id"] for r in done.values())
    # The manifest's own column follows results.csv's columns, row by row.
    assert list(done["d0"])[-1] == "job" and done["d2"]["job"] == "J-2"

    before = sim.stats()
    dry = await generate_batch(str(manifest), str(out), dry_run=True, extra_columns=True)
    assert dry.counts == {"skipped": 3} and sim.stats()["creates"] == before["creates"]
    assert (out / "results.csv").read_bytes() == written  # never overwritten
    table = {r["id"]: r for r in _rows((out / "results.dry-run.csv").read_text())}
    for rid, r in done.items():
        assert table[rid]["status"] == "skipped"
        assert (table[rid]["task_id"], table[rid]["sha256"]) == (r["task_id"], r["sha256"])
        assert table[rid]["job"] == r["job"]

    # `kf2v validate --output` (no Prefect, no simulator) sees the same.
    p = subprocess.run(
        [sys.executable, "-m", "kf2v_tasks._cli.main", "validate", str(manifest),
         "--output", str(out), "--extra-columns"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "3 rows already made in the output folder: skipped" in p.stdout
    assert (out / "results.csv").read_bytes() == written
    assert [r["status"] for r in _rows((out / "results.dry-run.csv").read_text())] == [
        "skipped"
    ] * 3

    # A video that no longer hashes right is planned again, and a real re-run rewrites
    # results.csv with every row's latest outcome.
    (out / "d1.mp4").write_bytes(b"not the video any more")
    dry = await generate_batch(str(manifest), str(out), dry_run=True, extra_columns=True)
    assert dry.counts == {"skipped": 2, "planned": 1}
    assert (out / "results.csv").read_bytes() == written
    again = await generate_batch(str(manifest), str(out), concurrency=FAST, extra_columns=True)
    assert again.counts == {"skipped": 2, "succeeded": 1}
    latest = {r["id"]: r for r in _rows((out / "results.csv").read_text())}
    assert [latest[i]["status"] for i in ("d0", "d1", "d2")] == ["skipped", "succeeded", "skipped"]
    assert latest["d0"]["sha256"] == done["d0"]["sha256"]
    assert len(latest["d1"]["sha256"]) == 64 and latest["d1"]["job"] == "J-1"


async def test_dry_run_on_s3_never_overwrites_results_csv(sim, tmp_path, s3_server):
    bucket = s3_server.new_bucket()
    fs = s3_server.filesystem()
    folder = tmp_path / "in"
    manifest = _manifest(folder, 2)
    for p in folder.rglob("*"):
        if p.is_file():
            fs.put_file(str(p), f"{bucket}/in/{p.relative_to(folder)}")
    out = f"s3://{bucket}/out"
    opts = s3_server.storage_options
    first = await generate_batch(
        f"s3://{bucket}/in/{manifest.name}",
        out,
        concurrency=FAST,
        storage_options=opts,
        extra_columns=True,
    )
    assert first.counts == {"succeeded": 2}
    written = fs.cat_file(f"{bucket}/out/results.csv")
    dry = await generate_batch(
        f"s3://{bucket}/in/{manifest.name}",
        out,
        dry_run=True,
        storage_options=opts,
        extra_columns=True,
    )
    assert dry.counts == {"skipped": 2}
    assert dry.results_path == f"{out}/results.dry-run.csv"
    assert fs.cat_file(f"{bucket}/out/results.csv") == written
    kept = {r["id"]: r["sha256"] for r in _rows(written.decode())}
    table = _rows(fs.cat_file(f"{bucket}/out/results.dry-run.csv").decode())
    assert {r["id"]: r["sha256"] for r in table} == kept and all(kept.values())


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``root`` (the ledger's hidden folder too): size, mtime, content."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


async def test_dry_run_and_validate_on_an_old_record_write_nothing_but_their_table(sim, tmp_path):
    from kf2v_tasks.batch.plan import plan_batch
    from kf2v_tasks.batch.plan_assess import assess_plan
    from kf2v_tasks.generation.ledger import Ledger
    from kf2v_tasks.generation.previews import preview_paths

    manifest = _manifest(tmp_path / "in", 2)
    out = tmp_path / "out"
    first = await generate_batch(str(manifest), str(out), concurrency=FAST, extra_columns=True)
    assert first.counts == {"succeeded": 2}
    # Make d0 look kept before previews existed: no JPEGs, none in its sidecar or record.
    plan = await plan_batch(str(manifest), str(out), extra_columns=True)
    ledger = Ledger(str(out))
    fp = plan.fingerprints["d0"]
    rec = await ledger.get(fp)
    assert rec is not None and rec.previews is not None
    rec.previews = None
    await ledger.put(rec)
    for jpeg in preview_paths(str(out / "d0.mp4")):
        Path(jpeg).unlink()
    side = out / "d0.json"
    side.write_text(side.read_text().replace('"previews"', '"previews_gone"'))
    (out / "results.dry-run.csv").unlink(missing_ok=True)

    before = _snapshot(out)
    dry = await generate_batch(str(manifest), str(out), dry_run=True, extra_columns=True)
    assert dry.counts == {"skipped": 2}
    after = _snapshot(out)
    assert after.pop("results.dry-run.csv")  # a dry run's own table, and nothing else
    assert after == before
    (out / "results.dry-run.csv").unlink()

    p = subprocess.run(
        [sys.executable, "-m", "kf2v_tasks._cli.main", "validate", str(manifest),
         "--output", str(out), "--extra-columns"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    after = _snapshot(out)
    assert after.pop("results.dry-run.csv")
    assert after == before

    # A real run's assessment (make_missing_previews=True) makes them, without any call.
    creates = sim.stats()["creates"]
    plan = await plan_batch(str(manifest), str(out), extra_columns=True)
    await assess_plan(plan, ledger, make_missing_previews=True)
    made = plan.persisted["d0"].previews
    assert made is not None and all(Path(p).stat().st_size > 0 for p in (made.poster, made.strip))
    assert (await ledger.get(fp)).previews == made and sim.stats()["creates"] == creates
