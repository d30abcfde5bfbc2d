"""Crash and resume: ``kf2v run`` SIGKILLed mid-batch and restarted with the same command.

The runner runs as a subprocess (pointed at this session's Prefect test server and at a
simulator in this process, which survives the kills and counts every create). Afterwards
every row is delivered once, a second create happened only after a FAILED task or an
ambiguous (crash-interrupted) create, results.csv is complete and agrees with the files,
and no partial file sits at a final path. Full size: ``python -m reliability.soak``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kf2v_tasks.simulator import (  # noqa: E402
    FaultConfig,
    RuntimeDistribution,
    SimulatorConfig,
    run_simulator,
)
from reliability.harness import (  # noqa: E402
    ambiguous_from_log_dir,
    audit,
    cli_command,
    cli_env,
    fault_config,
    make_dataset,
    read_results,
    run_with_kills,
)

from conftest import TEST_API_KEY  # noqa: E402

SPEED = 300.0


def _prefect_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the prefect_server fixture should set PREFECT_API_URL"
    return url


def _crash_run(tmp_path: Path, rows: int, kills: int, seed: int, faults: FaultConfig):
    manifest = make_dataset(tmp_path / "data", rows, seed=seed)
    out = tmp_path / "out"
    cfg = SimulatorConfig(
        speed=SPEED,
        max_concurrent=3,
        runtime=RuntimeDistribution(kind="uniform", low=60.0, high=300.0),
        render="tiny",
        faults=faults,
        seed=seed,
        api_key=TEST_API_KEY,
    )
    with run_simulator(cfg) as sim:
        env = cli_env(sim.base_url, TEST_API_KEY, _prefect_url(), SPEED)
        cmd = cli_command(manifest, out, concurrency=3, time_scale=SPEED)
        events, rc, _ = run_with_kills(
            cmd, env, out, rows=rows, kills=kills, seed=seed, log_dir=tmp_path / "logs", timeout=300
        )
        stats, tasks = sim.stats(), sim.tasks()
    a = audit(out, rows, stats, tasks, ambiguous_evidence=ambiguous_from_log_dir(tmp_path / "logs"))
    return out, events, rc, stats, a


@pytest.mark.slow
def test_sigkill_twice_then_resume_delivers_every_row_once(prefect_server, tmp_path: Path) -> None:
    rows = 12
    out, events, rc, stats, a = _crash_run(tmp_path, rows, kills=2, seed=41, faults=FaultConfig())
    assert [e.killed for e in events] == [True, True], events
    assert rc == 0, (tmp_path / "logs" / "run-3.log").read_text()[-3000:]
    assert a.problems == [], a.to_dict()
    assert a.delivered == rows and a.results_rows == rows
    # No faults: a second create can only come from a kill between the POST and the
    # ledger write (reported as ambiguous); never from anything else.
    assert a.extra_creates_unexplained == 0
    assert a.creates <= rows + a.ambiguous_fingerprints
    assert a.partial_files_at_final_paths == 0 and a.files_verified == rows
    results = read_results(out)
    assert sorted(int(r["row"]) for r in results) == list(range(2, rows + 2))
    assert len({r["output"] for r in results}) == rows


@pytest.mark.slow
def test_sigkill_under_faults_keeps_the_promise(prefect_server, tmp_path: Path) -> None:
    rows = 12
    _, events, rc, stats, a = _crash_run(tmp_path, rows, kills=2, seed=7, faults=fault_config())
    assert sum(e.killed for e in events) == 2, events
    assert rc in (0, 1)
    assert a.problems == [], a.to_dict()
    assert a.delivered + a.failed_permanent == rows
    assert a.extra_creates_unexplained == 0
    assert a.partial_files_at_final_paths == 0


@pytest.mark.slow
def test_two_overlapping_runs_deliver_once_and_never_pay_twice(
    prefect_server, tmp_path: Path
) -> None:
    """The same manifest into the same output twice, the second run 1 s after the first."""
    from reliability.scenarios import run_overlapping

    rows = 10
    manifest = make_dataset(tmp_path / "data", rows, seed=17)
    out = tmp_path / "out"
    cfg = SimulatorConfig(
        speed=SPEED,
        max_concurrent=3,
        runtime=RuntimeDistribution(kind="uniform", low=60.0, high=300.0),
        render="tiny",
        seed=17,
        api_key=TEST_API_KEY,
    )
    with run_simulator(cfg) as sim:
        env = cli_env(sim.base_url, TEST_API_KEY, _prefect_url(), SPEED)
        cmd = cli_command(manifest, out, concurrency=3, time_scale=SPEED)
        codes, _ = run_overlapping(cmd, env, delay=1.0, log_dir=tmp_path / "logs", timeout=300)
        stats, tasks = sim.stats(), sim.tasks()
    a = audit(out, rows, stats, tasks, ambiguous_evidence=ambiguous_from_log_dir(tmp_path / "logs"))
    assert all(rc in (0, 1) for rc in codes), codes
    # Counted first, so a failure shows every figure.
    figures = {
        "creates": a.creates,
        "fingerprints": a.fingerprints,
        "extra_creates": a.extra_creates,
        "delivered": a.delivered,
        "partial": a.partial_files_at_final_paths,
        "lost_records": a.lost_ledger_records,
    }
    assert a.partial_files_at_final_paths == 0 and a.lost_ledger_records == 0, figures
    assert a.delivered == rows == a.files_verified, figures
    assert a.extra_creates == 0 and a.creates == rows, (figures, a.problems)
