"""One batch over several accounts (an account pool), on a real Prefect server.

Each key is its own account at the simulator, with its own per-model lanes; a row goes to
the account whose lane frees first, results.csv and the sidecar name the block (never the
key), and a re-run re-attaches each task on the account that holds it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from kf2v_flows.batch import generate_batch
from kf2v_tasks.batch.config import PollingSettings
from kf2v_tasks.credentials import DashScopeCredentials
from kf2v_tasks.errors import BatchFailedError
from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator

from helpers import SPEED, make_pairs, manifest_text, peak_running, pointed_at

pytestmark = pytest.mark.usefixtures("prefect_server")
KEYS = {"pool-a": "sk-pool-a-0123456789abcdef", "pool-b": "sk-pool-b-0123456789abcdef"}


@pytest.fixture
def sim(monkeypatch):
    cfg = SimulatorConfig(
        speed=SPEED, render="tiny", runtime=RuntimeDistribution(kind="fixed", low=120), seed=9
    )
    with run_simulator(cfg) as s, pointed_at(s, monkeypatch):
        for name, key in KEYS.items():
            DashScopeCredentials(api_key=key, base_url=s.base_url).save(name, overwrite=True)
        yield s


def _manifest(folder: Path, n: int) -> str:
    pairs = make_pairs(folder, n)
    rows = [
        {"id": f"r{i}", "first_frame": a, "last_frame": b, "prompt": f"pan {i}"}
        for i, (a, b) in enumerate(pairs)
    ]
    (folder / "m.csv").write_text(
        manifest_text(rows, ["id", "first_frame", "last_frame", "prompt"])
    )
    return str(folder / "m.csv")


def _results(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _peak(rows: list[dict], account: str | None = None) -> int:
    return peak_running(rows, lambda r: account is None or r["account"] == account)


async def _give_up_waiting(manifest: str, out: Path) -> None:
    """A first run that stops waiting (the tasks run on): every record holds a live task."""
    with pytest.raises(BatchFailedError):
        await generate_batch(
            manifest,
            str(out),
            credentials_block=["pool-a", "pool-b"],
            polling=PollingSettings(deadline_seconds=1, queue_deadline_seconds=3600),
        )


async def test_two_accounts_run_a_batch_on_both_lanes(sim, tmp_path):
    # Long enough (2 real s a task) that the second account's first global-limit ask has
    # answered before the first account's lane has served every row.
    sim.state.config.runtime = RuntimeDistribution(kind="fixed", low=1200)
    out = tmp_path / "out"
    summary = await generate_batch(
        _manifest(tmp_path, 8), str(out), credentials_block=["pool-a", "pool-b"]
    )
    assert summary.counts == {"succeeded": 8}
    timeline = sim.tasks()
    accounts = {r["account"] for r in timeline}
    assert len(accounts) == 2  # both keys were used
    # Each account's kf2v lane runs 2 at once; together 4, never more.
    assert all(_peak(timeline, a) == 2 for a in accounts)
    assert _peak(timeline) == 4
    rows = _results(out)
    assert {r["account"] for r in rows} == {"pool-a", "pool-b"}
    text = (out / "results.csv").read_text() + "".join(p.read_text() for p in out.glob("*.json"))
    assert not any(key in text for key in KEYS.values())
    sidecars = [json.loads(p.read_text()) for p in out.glob("r*.json")]
    assert len(sidecars) == 8
    assert {s["extra"]["account"] for s in sidecars} == {"pool-a", "pool-b"}


async def test_a_rerun_reattaches_each_task_on_its_own_account(sim, tmp_path):
    out = tmp_path / "out"
    manifest = _manifest(tmp_path, 6)
    await _give_up_waiting(manifest, out)
    first = sim.stats()["creates"]
    assert first >= 2
    # The re-run lists the accounts the other way round: each task is still polled and
    # kept from the account that created it (a wrong one would read it as UNKNOWN and
    # create it again).
    summary = await generate_batch(manifest, str(out), credentials_block=["pool-b", "pool-a"])
    # A loaded machine lets the first run keep a few rows before its deadline: skipped now.
    assert set(summary.counts) <= {"succeeded", "skipped"} and sum(summary.counts.values()) == 6
    stats = sim.stats()
    assert summary.reattached + summary.counts.get("skipped", 0) == first
    assert stats["creates"] == 6 and sorted(stats["creates_by_fingerprint"].values()) == [1] * 6


async def test_a_task_on_an_account_the_run_lacks_is_not_created_again(sim, tmp_path):
    out = tmp_path / "out"
    manifest = _manifest(tmp_path, 2)
    await _give_up_waiting(manifest, out)
    before = sim.stats()["creates"]
    # A block that does not exist: named, before anything is created.
    with pytest.raises(ValueError, match="other"):
        await generate_batch(manifest, str(out), credentials_block=["pool-b", "other"])
    # The re-run lacks the account that holds the tasks: each row says so, nothing is paid.
    await DashScopeCredentials(api_key="sk-pool-c-0123456789abcdef", base_url=sim.base_url).asave(
        "pool-c", overwrite=True
    )
    with pytest.raises(BatchFailedError) as failed:
        await generate_batch(manifest, str(out), credentials_block=["pool-c", "pool-b"])
    assert sim.stats()["creates"] == before
    lacking = [r for r in failed.value.summary.results if r.error_code == "AccountNotInRunError"]
    assert lacking and all("add its credentials block" in r.error_message for r in lacking)


async def test_two_blocks_with_one_key_are_one_account(sim, tmp_path, caplog):
    await DashScopeCredentials(api_key=KEYS["pool-a"], base_url=sim.base_url).asave(
        "pool-a-again", overwrite=True
    )
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        summary = await generate_batch(
            _manifest(tmp_path, 4), str(out), credentials_block=["pool-a", "pool-a-again"]
        )
    assert summary.counts == {"succeeded": 4}
    assert {r["account"] for r in _results(out)} == {"pool-a"}
    said = [r.getMessage() for r in caplog.records if "same key" in r.getMessage()]
    assert said == [
        "credentials 'pool-a' and 'pool-a-again' hold the same key: one account, used once"
    ]
    assert _peak(sim.tasks()) == 2
