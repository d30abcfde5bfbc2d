"""The batch flow as a subflow: in sync and async parents, with bad rows, and its UI form.

On a real (ephemeral) Prefect server against the simulator over real HTTP. A batch with
invalid rows raises ``BatchFailedError`` in the parent (never a TypeError, never a
coroutine in a sync parent), and its ``summary`` lists every row.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from prefect import flow, tags
from prefect.client.orchestration import get_client
from pydantic import SecretStr

from kf2v_flows.batch import generate_batch
from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.batch.results import BatchSummary, RowStatus, from_csv
from kf2v_tasks.batch.sharding import shard_results_name, shard_tag
from kf2v_tasks.credentials import DashScopeCredentials
from kf2v_tasks.errors import BatchFailedError
from kf2v_tasks.simulator import RuntimeDistribution

from conftest import TEST_API_KEY
from helpers import fast_service, make_pairs, manifest_text, pointed_at

pytestmark = pytest.mark.usefixtures("prefect_server")
FAST = ConcurrencySettings(max_in_flight=4, submits_per_second=20, queries_per_second=200)


@pytest.fixture(scope="module")
def sim():
    with fast_service(RuntimeDistribution(kind="uniform", low=30, high=60), seed=3) as s:
        yield s


@pytest.fixture(autouse=True)
def _env(sim, monkeypatch):
    with pointed_at(sim, monkeypatch):
        yield


def _manifest(folder: Path, good: int, bad_seed_rows: int = 0) -> Path:
    """``good`` valid rows, then ``bad_seed_rows`` rows whose seed is invalid."""
    pairs = make_pairs(folder, good)
    rows = [{"id": f"g{i}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)]
    a, b = pairs[0]
    rows += [
        {"id": f"bad{i}", "first_frame": a, "last_frame": b, "seed": "-3"}
        for i in range(bad_seed_rows)
    ]
    path = folder / "m.csv"
    path.write_text(manifest_text(rows, ["id", "first_frame", "last_frame", "seed"]))
    return path


def _check_failed_summary(summary: BatchSummary, good: int, bad: int) -> None:
    assert isinstance(summary, BatchSummary)
    assert summary.counts == {"succeeded": good, "invalid": bad}
    assert summary.failed == bad and summary.total == good + bad
    assert [r.row for r in summary.results] == list(range(2, 2 + good + bad))
    invalid = [r for r in summary.results if r.status is RowStatus.INVALID]
    assert [r.id for r in invalid] == [f"bad{i}" for i in range(bad)]
    for r in invalid:
        assert r.error_message.startswith(f"row {r.row}, column 'seed'"), r.error_message


def test_sync_parent_catches_batch_failed_error_with_the_summary(tmp_path):
    manifest = _manifest(tmp_path / "in", good=2, bad_seed_rows=1)

    @flow
    def parent():
        try:
            generate_batch(str(manifest), str(tmp_path / "out"), concurrency=FAST)
        except BatchFailedError as exc:
            caught = exc
        else:
            raise AssertionError("the batch had an invalid row: it must raise")
        # Again with return_state: a Failed state whose result is the error (the good rows
        # are kept already, so they are skipped this time).
        state = generate_batch(str(manifest), str(tmp_path / "out"), return_state=True)
        return caught.summary, str(caught), state.is_failed(), state.result(raise_on_failure=False)

    summary, message, failed_again, again = parent()
    _check_failed_summary(summary, good=2, bad=1)
    assert message == "1 of 3 rows failed (3 rows: 1 invalid, 2 succeeded)"
    assert failed_again and isinstance(again, BatchFailedError)
    assert again.summary.counts == {"skipped": 2, "invalid": 1}


async def test_async_parent_catches_batch_failed_error_with_the_summary(tmp_path):
    manifest = _manifest(tmp_path / "in", good=2, bad_seed_rows=2)

    @flow
    async def parent():
        try:
            await generate_batch(str(manifest), str(tmp_path / "out"), concurrency=FAST)
        except BatchFailedError as exc:
            return exc.summary
        raise AssertionError("the batch had invalid rows: it must raise")

    _check_failed_summary(await parent(), good=2, bad=2)


async def test_return_state_gives_a_failed_state_with_a_one_line_message(tmp_path):
    manifest = _manifest(tmp_path / "in", good=1, bad_seed_rows=1)

    @flow
    async def parent():
        state = await generate_batch(
            str(manifest), str(tmp_path / "out"), concurrency=FAST, return_state=True
        )
        # Returning the state itself would make the parent Failed too: return what it says.
        return state.is_failed(), state.message, await state.aresult(raise_on_failure=False)

    failed, message, error = await parent()
    assert failed
    assert "\n" not in message and "1 of 2 rows failed" in message
    assert isinstance(error, BatchFailedError)
    _check_failed_summary(error.summary, good=1, bad=1)
    # Prefect may persist the error: it must survive pickling with its summary.
    again = pickle.loads(pickle.dumps(error))
    assert again.summary == error.summary and str(again) == str(error)


def test_sync_parent_gets_the_summary_of_a_good_batch(tmp_path):
    manifest = _manifest(tmp_path / "in", good=3)

    @flow
    def parent():
        return generate_batch(str(manifest), str(tmp_path / "out"), concurrency=FAST)

    summary = parent()
    assert isinstance(summary, BatchSummary)
    assert summary.counts == {"succeeded": 3}
    assert [(r.id, r.status) for r in summary.results] == [
        (f"g{i}", RowStatus.SUCCEEDED) for i in range(3)
    ]
    for r in summary.results:
        assert Path(r.output).stat().st_size == r.bytes > 0


async def test_a_credentials_block_as_parameter_never_stored_in_clear(sim, tmp_path, monkeypatch):
    monkeypatch.delenv("DASHSCOPE_API_KEY")
    monkeypatch.delenv("DASHSCOPE_HTTP_BASE_URL")
    manifest = _manifest(tmp_path / "in", good=1)
    block = DashScopeCredentials(api_key=SecretStr(TEST_API_KEY), base_url=sim.base_url)
    state = await generate_batch(
        str(manifest),
        str(tmp_path / "out"),
        concurrency=FAST,
        credentials_block=block,
        return_state=True,
    )
    assert (await state.aresult()).counts == {"succeeded": 1}
    async with get_client() as client:
        run = await client.read_flow_run(state.state_details.flow_run_id)
    assert TEST_API_KEY not in json.dumps(run.parameters, default=str)

    # Shards run on other workers: an unsaved block cannot travel there.
    with pytest.raises(ValueError, match="save it first") as caught:
        await generate_batch(
            str(manifest), str(tmp_path / "sharded"), credentials_block=block, shards=2
        )
    assert TEST_API_KEY not in str(caught.value)


async def test_a_shard_run_learns_its_slice_from_its_tag(tmp_path):
    manifest = _manifest(tmp_path / "in", good=4)
    out = tmp_path / "out"
    with tags(shard_tag(1, 2)):
        summary = await generate_batch(str(manifest), str(out), concurrency=FAST)
    assert [r.id for r in summary.results] == ["g1", "g3"]  # rows 3 and 5 of 2..5
    assert summary.results_path == str(out / shard_results_name(1))
    assert [r.id for r in from_csv((out / shard_results_name(1)).read_text())] == ["g1", "g3"]
    assert not (out / "results.csv").exists()  # the parent writes the merged file


def test_parameter_schema_is_a_clean_ui_form():
    schema = generate_batch.parameters.model_dump()
    props = schema["properties"]
    assert not {"shard_index", "shard_count", "results_name"} & set(props)
    assert schema["required"] == ["manifest", "output"]
    # A block picker (a saved DashScopeCredentials) or a block name.
    choices = props["credentials_block"]["anyOf"]
    assert {"$ref": "#/definitions/DashScopeCredentials"} in choices
    assert {"type": "string"} in choices
    creds = schema["definitions"]["DashScopeCredentials"]
    assert creds["block_type_slug"] == "dashscope-credentials"

    descriptions: list[str] = []

    def collect(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "description" and isinstance(value, str):
                    descriptions.append(value)
                else:
                    collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(schema)
    for name, prop in props.items():
        assert prop.get("description"), f"{name} has no description"
    # The UI renders descriptions as markdown: a '<' starts an HTML tag and swallows text.
    assert not [d for d in descriptions if "<" in d]
    for word in ("fingerprint", "ledger", "GCL"):
        assert not [d for d in descriptions if word in d], word
