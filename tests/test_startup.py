"""Start-up: rows start a few at a time, so the first create does not wait for every row.

Every row of a batch used to begin its Prefect task run(s) at once; their set-up
interleaved on the one event loop, and the first create went out only after all of
them (hundreds of milliseconds at concurrency 32, seconds in ``per_row`` mode, where a
row's task run begins before it waits for a slot). On a Prefect test server, against the
simulator over real HTTP.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import kf2v_tasks.batch.fan_out as fan_out_module
from kf2v_flows.batch import generate_batch
from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.batch.create_order import STARTING_ROWS
from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator

from helpers import SPEED, make_pairs, manifest_text, pointed_at

ROWS = 30


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("task_runs", ["per_step", "per_row"])
async def test_rows_start_a_few_at_a_time(tmp_path: Path, monkeypatch, task_runs):
    pairs = make_pairs(tmp_path, 3)
    rows = [
        {
            "id": f"r{i}",
            "first_frame": pairs[i % 3][0],
            "last_frame": pairs[i % 3][1],
            "prompt": f"clip {i}",
        }
        for i in range(ROWS)
    ]
    (tmp_path / "m.csv").write_text(
        manifest_text(rows, ["id", "first_frame", "last_frame", "prompt"])
    )
    starting, most = 0, 0
    make_steps = fan_out_module.make_steps

    def counting_steps(*args, **kwargs):
        steps = make_steps(*args, **kwargs)
        submit = steps.submit

        async def counted(*a, **kw):
            nonlocal starting, most
            starting += 1
            most = max(most, starting)
            try:
                await asyncio.sleep(0.01)  # a create in flight: others could start meanwhile
                return await submit(*a, **kw)
            finally:
                starting -= 1

        steps.submit = counted
        return steps

    monkeypatch.setattr(fan_out_module, "make_steps", counting_steps)
    cfg = SimulatorConfig(
        speed=SPEED,
        runtime=RuntimeDistribution(kind="fixed", low=5.0),
        render="tiny",
        max_concurrent=ROWS,
        submits_per_second=1000,
        queries_per_second=1000,
        seed=5,
    )
    with run_simulator(cfg) as sim, pointed_at(sim, monkeypatch):
        summary = await generate_batch(
            str(tmp_path / "m.csv"),
            str(tmp_path / "out"),
            concurrency=ConcurrencySettings(
                max_in_flight=ROWS, submits_per_second=1000, queries_per_second=1000
            ),
            task_runs=task_runs,
        )
    assert summary.counts == {"succeeded": ROWS}
    # Every row had a free slot at once; only the start gate kept them to a few.
    assert 1 < most <= STARTING_ROWS


@pytest.mark.usefixtures("prefect_server")
async def test_a_run_keeps_what_existed_at_its_start_out_of_full_collections(tmp_path: Path):
    import gc

    from kf2v_tasks.batch.reporting import BatchObserver
    from kf2v_tasks.batch.runner import BatchRunner

    frozen: list[int] = []

    class Peek(BatchObserver):
        async def on_plan(self, plan, cost, dry_run):
            frozen.append(gc.get_freeze_count())

    pairs = make_pairs(tmp_path, 1)
    rows = [{"id": "r0", "first_frame": pairs[0][0], "last_frame": pairs[0][1]}]
    (tmp_path / "m.csv").write_text(manifest_text(rows))
    before = gc.get_freeze_count()
    await BatchRunner(
        str(tmp_path / "m.csv"), str(tmp_path / "out"), dry_run=True, observer=Peek()
    ).run()
    assert frozen and frozen[0] > before  # frozen while the run went on
    assert gc.get_freeze_count() == 0  # and handed back to the collector at its end


def test_a_new_users_first_run_creates_before_its_temporary_server_is_up(tmp_path: Path):
    """``kf2v run`` as a new user runs it: no key, no Prefect server configured, a new
    PREFECT_HOME (issue 25 #1). The first creates go out while kf2v's temporary server is
    still starting; the flow picks them up, so each row's work is created exactly once."""
    import json
    import os
    import subprocess
    import sys

    pairs = make_pairs(tmp_path, 4)
    rows = [{"id": f"r{i}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)]
    (tmp_path / "m.csv").write_text(manifest_text(rows, ["id", "first_frame", "last_frame"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "KF2V_"))}
    env.pop("PREFECT_API_URL", None)
    (tmp_path / "home").mkdir()
    env.update(HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"))
    out = tmp_path / "out"
    kf2v = str(Path(sys.executable).parent / "kf2v")
    p = subprocess.run(
        [kf2v, "run", str(tmp_path / "m.csv"), "--output", str(out), "--simulator-speed", "600"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stderr.splitlines()
    head = [i for i, line in enumerate(lines) if "created while the temporary Prefect" in line]
    plan = [i for i, line in enumerate(lines) if "valid rows" in line]
    # The plan (estimate, region warning) is said once, before the first create.
    assert len(plan) == 1 and head and plan[0] < head[0], p.stderr
    assert "submitted 4, re-attached 0" in p.stderr  # this run's creates, counted as such
    creates = [
        [e for e in json.loads(f.read_text())["events"] if e["event"] == "submitted"]
        for f in (out / ".kf2v" / "ledger").glob("*.json")
    ]
    assert sorted(len(c) for c in creates) == [1, 1, 1, 1]  # nothing created twice
    assert not list((out / ".kf2v" / "claims").glob("*.json"))  # every claim released
    assert (tmp_path / "prefect" / "prefect.db").exists()  # the server kf2v started


def test_kf2v_validate_imports_no_prefect(tmp_path: Path):
    """``kf2v validate`` plans and prices without Prefect (a second of imports; issue 25 #1)."""
    import os
    import subprocess
    import sys

    pairs = make_pairs(tmp_path, 2)
    rows = [{"id": f"r{i}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)]
    (tmp_path / "m.csv").write_text(manifest_text(rows, ["id", "first_frame", "last_frame"]))
    code = (
        "import sys\n"
        "from kf2v_tasks._cli.main import main\n"
        "code = main(['validate', sys.argv[1], '--output', sys.argv[2]])\n"
        "loaded = [m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')]\n"
        "sys.exit(code or (9 if loaded else 0))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("prefect_integ")}
    env.update(HOME=str(tmp_path), PREFECT_HOME=str(tmp_path / "prefect"))
    p = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m.csv"), str(tmp_path / "out")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert "2 rows, 2 valid, 0 invalid" in p.stdout
