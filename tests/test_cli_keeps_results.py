"""``kf2v run`` never replaces results.csv or index.html with less than they held (issue 25 #3).

As a user runs it (the ``kf2v`` console script in a subprocess): a header-only manifest is
one line and exit 2 before anything starts, and leaves the output as it was; a second
manifest with fewer rows, run over the simulator into the same output, keeps the first
one's other rows in results.csv and in the gallery, marked as from an earlier run.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator

from conftest import TEST_API_KEY
from helpers import make_pairs, manifest_text

SPEED = 600.0
KF2V = str(Path(sys.executable).parent / "kf2v")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "home").mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"))
    for name in ("DASHSCOPE_API_KEY", "DASHSCOPE_HTTP_BASE_URL", "KF2V_TIME_SCALE"):
        env.pop(name, None)
    env.update(extra)
    return env


def kf2v(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([KF2V, *args], env=env, capture_output=True, text=True, timeout=300)


def _results(out: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))


def _flow_runs() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.count_flow_runs()


@pytest.mark.parametrize("text", ["id,first_frame,last_frame\n", ""])
def test_an_empty_or_header_only_manifest_is_one_line_exit_2_and_touches_nothing(tmp_path, text):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("row,id,status\n2,a,succeeded\n")
    (out / "index.html").write_text("<!doctype html><p>the earlier gallery</p>")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    (tmp_path / "m.csv").write_text(text)
    started = time.monotonic()
    p = kf2v("run", str(tmp_path / "m.csv"), "--output", str(out), env=_env(tmp_path))
    took = time.monotonic() - started
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kf2v run: error: manifest {tmp_path}")
    assert ("no rows: nothing to run" if text else "is empty") in lines[0]
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    assert took < 30  # no Prefect server, no simulator (a few seconds of imports at most)
    v = kf2v("validate", str(tmp_path / "m.csv"), env=_env(tmp_path))
    assert v.returncode == 2 and len(v.stderr.splitlines()) == 1


@pytest.mark.usefixtures("prefect_server")
def test_a_run_with_fewer_rows_keeps_the_earlier_rows_in_results_and_gallery(tmp_path):
    from prefect.settings import PREFECT_API_URL

    cfg = SimulatorConfig(
        speed=SPEED, runtime=RuntimeDistribution(kind="fixed", low=60), render="tiny"
    )
    pairs = make_pairs(tmp_path, 3)
    rows = [{"id": f"r{i}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)]
    (tmp_path / "all.csv").write_text(manifest_text(rows, ["id", "first_frame", "last_frame"]))
    (tmp_path / "one.csv").write_text(manifest_text(rows[1:2], ["id", "first_frame", "last_frame"]))
    out = tmp_path / "out"
    with run_simulator(cfg) as sim:
        env = _env(
            tmp_path,
            DASHSCOPE_API_KEY=TEST_API_KEY,
            DASHSCOPE_HTTP_BASE_URL=sim.base_url,
            KF2V_TIME_SCALE=str(SPEED),
            PREFECT_API_URL=PREFECT_API_URL.value(),
        )
        first = kf2v("run", str(tmp_path / "all.csv"), "--output", str(out), env=env)
        assert first.returncode == 0, first.stderr[-2000:]
        # Every row kept: the re-run writes the same rows and starts no flow (issue 25 #1).
        made = {name: (out / name).read_bytes() for name in ("results.csv", "index.html")}
        runs = _flow_runs()
        again = kf2v("run", str(tmp_path / "all.csv"), "--output", str(out), env=env)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "3 rows: 3 skipped" in again.stderr and _flow_runs() == runs
        assert [r["status"] for r in _results(out)] == ["skipped"] * 3
        assert (out / "index.html").read_bytes().count(b"<article") == 3
        assert (
            made["results.csv"].split(b"\n")[0]
            == (out / "results.csv").read_bytes().split(b"\n")[0]
        )
        second = kf2v("run", str(tmp_path / "one.csv"), "--output", str(out), env=env)
        assert second.returncode == 0, second.stderr[-2000:]
        assert sim.stats()["creates"] == 3  # the later runs paid for nothing
    assert "1 row: 1 skipped" in second.stderr and "1 valid row, 0 invalid" in second.stderr
    got = [(r["id"], r["status"], r["earlier_run"]) for r in _results(out)]
    assert got == [
        ("r1", "skipped", "False"),
        ("r0", "skipped", "True"),  # as the re-run left them
        ("r2", "skipped", "True"),
    ]
    page = (out / "index.html").read_text()
    assert page.count("<article") == 3 and page.count('data-earlier-run="true"') == 2
    assert 'id="row-2"' in page and "r0.mp4" in page and "r2.mp4" in page
    # The full manifest again: every row is this run's again, none marked earlier.
    with run_simulator(cfg) as sim:
        env.update(DASHSCOPE_HTTP_BASE_URL=sim.base_url)
        third = kf2v("run", str(tmp_path / "all.csv"), "--output", str(out), env=env)
        assert third.returncode == 0, third.stderr[-2000:]
    assert [(r["id"], r["earlier_run"]) for r in _results(out)] == [
        ("r0", "False"),
        ("r1", "False"),
        ("r2", "False"),
    ]
    assert 'data-earlier-run="true"' not in (out / "index.html").read_text()
