"""The tasks and flows from a *sync* user flow, the way Prefect users write them."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow
from prefect.utilities.asyncutils import run_coro_as_sync

from kf2v_flows.batch import generate_batch
from kf2v_tasks import validate_frames
from kf2v_tasks.dashscope.models import FramePair

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.usefixtures("prefect_server")


def test_tasks_map_and_flows_from_a_sync_flow(tmp_path):
    frames = EXAMPLES / "frames"

    @flow
    def nightly():
        # Async tasks fan out from sync flows with .map/.submit (Prefect runs them).
        pairs = validate_frames.map(
            [str(frames / "sunrise_first.jpg"), str(frames / "orbit_first.jpg")],
            [str(frames / "sunrise_last.jpg"), str(frames / "orbit_last.jpg")],
        ).result()
        # An async flow runs as a subflow of a sync flow through run_coro_as_sync.
        summary = run_coro_as_sync(
            generate_batch(str(EXAMPLES / "manifest.csv"), str(tmp_path / "out"), dry_run=True)
        )
        return pairs, summary

    pairs, summary = nightly()
    assert all(isinstance(p, FramePair) for p in pairs)
    assert summary.counts == {"planned": 4}
    assert (tmp_path / "out" / "results.csv").exists()
