"""Log noise (issue 25 #9): a failed batch is one line, not a traceback; telemetry stays off.

On a real (ephemeral) Prefect server against the simulator. A batch whose rows fail ends
Failed holding its BatchFailedError: the caller (a parent flow, the CLI) still gets the
typed error, and Prefect's engine logs no traceback at ERROR for it. Commands that start
Prefect turn its telemetry off for themselves and every server and worker they start.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prefect import flow

from kf2v_flows.batch import generate_batch
from kf2v_tasks.batch.manifest import RowDefaults
from kf2v_tasks.dashscope.models import Resolution
from kf2v_tasks.errors import BatchFailedError
from kf2v_tasks.simulator import RuntimeDistribution

from helpers import fast_service, make_pairs, manifest_text, pointed_at

CHEAP = RowDefaults(resolution=Resolution.P480)  # 0.50 per row


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def prefect_logs():
    handler = _Records()
    logger = logging.getLogger("prefect")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


@pytest.mark.usefixtures("prefect_server")
async def test_a_caught_batch_failure_logs_no_traceback(tmp_path: Path, monkeypatch, prefect_logs):
    pairs = make_pairs(tmp_path, 3)
    rows = [{"id": f"r{i}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)]
    (tmp_path / "m.csv").write_text(manifest_text(rows, ["id", "first_frame", "last_frame"]))

    @flow
    async def parent() -> str:
        try:  # a dry run over budget: rows left out, so the batch ends Failed
            await generate_batch(
                str(tmp_path / "m.csv"),
                str(tmp_path / "out"),
                defaults=CHEAP,
                max_cost=1.0,
                dry_run=True,
            )
        except BatchFailedError as exc:
            return f"caught: {exc}"
        return "not raised"

    with fast_service(RuntimeDistribution(kind="fixed", low=30), seed=3) as sim:
        with pointed_at(sim, monkeypatch):
            said = await parent()
            state = await generate_batch(
                str(tmp_path / "m.csv"),
                str(tmp_path / "out"),
                defaults=CHEAP,
                max_cost=1.0,
                dry_run=True,
                return_state=True,
            )
    assert said.startswith("caught: 1 of 3 rows not submitted: over max_cost")
    assert state.is_failed() and state.message == said.removeprefix("caught: ")
    assert isinstance(await state.aresult(raise_on_failure=False), BatchFailedError)
    tracebacks = [r for r in prefect_logs if r.levelno >= logging.ERROR and r.exc_info]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]
    assert not any("Encountered exception" in r.getMessage() for r in prefect_logs)


@pytest.mark.parametrize("command", ["run", "generate", "storyboard", "limits", "stack"])
def test_commands_that_start_prefect_turn_its_telemetry_off(monkeypatch, command):
    from kf2v_tasks._cli import main as cli

    seen: dict[str, object] = {}
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    monkeypatch.setitem(
        cli._COMMANDS,
        command,
        lambda args: (
            seen.update(
                analytics=cli.os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED"),
                track=cli.os.environ.get("DO_NOT_TRACK"),
            )
            or 0
        ),
    )
    argv = {
        "run": ["run", "m.csv", "--output", "out"],
        "generate": ["generate", "--first", "a.png", "--last", "b.png", "--output", "c.mp4"],
        "storyboard": ["storyboard", "a.png", "b.png", "--output", "f.mp4"],
        "limits": ["limits", "show"],
        "stack": ["stack"],
    }[command]
    assert cli.main(argv) == 0
    assert seen == {"analytics": "false", "track": "1"}


def test_a_users_own_telemetry_setting_is_kept_and_validate_sets_nothing(monkeypatch, tmp_path):
    from kf2v_tasks._cli import main as cli

    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")
    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    monkeypatch.setitem(cli._COMMANDS, "run", lambda args: 0)
    cli.main(["run", "m.csv", "--output", "out"])
    assert cli.os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED")
    monkeypatch.delenv("DO_NOT_TRACK")
    monkeypatch.setitem(cli._COMMANDS, "validate", lambda args: 0)
    cli.main(["validate", "m.csv"])
    assert "PREFECT_SERVER_ANALYTICS_ENABLED" not in cli.os.environ
