"""A batch with no credentials (no block, no key where it runs, as on a bare worker) ends
Failed at once with the reason as its state message, and results.csv says "no
credentials" of every row, not "interrupted". On a real (test) Prefect server; the
deployment on process workers is in tests/test_deployments.py."""

from __future__ import annotations

import csv
import io

import pytest
from prefect.states import State

from kf2v_flows.batch import generate_batch
from kf2v_tasks.credentials import MissingCredentialsError

from helpers import make_pairs, manifest_text


@pytest.mark.usefixtures("prefect_server")
async def test_a_batch_without_credentials_says_so_in_one_line_and_in_results(tmp_path):
    pairs = make_pairs(tmp_path, 3)
    rows = [{"id": f"r{i}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)]
    (tmp_path / "m.csv").write_text(manifest_text(rows))
    state: State = await generate_batch(
        str(tmp_path / "m.csv"), str(tmp_path / "out"), return_state=True
    )
    assert state.is_failed()
    assert "no DashScope credentials" in state.message and "\n" not in state.message.strip()
    with pytest.raises(MissingCredentialsError):
        await state.result()
    text = (tmp_path / "out" / "results.csv").read_text()
    results = list(csv.DictReader(io.StringIO(text)))
    assert [r["id"] for r in results] == ["r0", "r1", "r2"]
    for r in results:
        assert r["status"] == "not_run" and r["error_code"] == "NoCredentials", r
        assert "no credentials" in r["error_message"] and "interrupted" not in r["error_message"]
