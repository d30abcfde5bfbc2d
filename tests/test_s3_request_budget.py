"""The S3 requests of a whole batch, row by row: what benchmark B5 measures, pinned small.

A batch of fresh rows (a local manifest, the output on S3 behind a counting proxy in
front of moto) runs through ``generate_batch`` in its default mode; every request is
attributed to the file it touched. Each row may cost: the ledger record read under its
claim, written at "submitting", "submitted" and "persisted"; its claim
created and deleted (near-instant work is never renewed); its video written (and read
once for its previews, then its poster and strip); its sidecar written, never read back (the gallery takes it from
memory). The run itself writes the gallery and results.csv a few times, whatever its size,
and reads the earlier results.csv (twice) so that none of its rows is lost.
"""

from __future__ import annotations

import re
from collections import Counter
from urllib.parse import unquote, urlsplit

import pytest

from kf2v_flows.batch import generate_batch
from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.simulator import RuntimeDistribution
from kf2v_testing.s3_faults import S3FaultProxy

from helpers import fast_service, make_pairs, manifest_text, pointed_at

pytestmark = pytest.mark.usefixtures("prefect_server")

ROWS = 6
#: Requests per fresh row, by (kind of file, operation). The batch plans with
#: Ledger.get_many (one ListObjects per run), hands the planning read to
#: submit_generation(record=...) and puts a success off until "persisted"
#: (record_outcome(persist_follows=True)).
PER_ROW = {
    ("ledger", "GetObject"): 1,  # under the claim (planning lists the folder)
    ("ledger", "PutObject"): 3,  # submitting, submitted, persisted (with how it ended)
    ("claim", "PutObject"): 1,  # created; never renewed (the work is near-instant)
    ("claim", "DeleteObject"): 1,
    ("video", "PutObject"): 1,
    ("video", "GetObject"): 1,  # one range, decoded into its previews
    ("poster", "PutObject"): 1,
    ("strip", "PutObject"): 1,
    ("sidecar", "PutObject"): 1,
}


def _kind(key: str) -> str:
    if "/.kf2v/ledger/" in key:
        return "ledger"
    if "/.kf2v/claims/" in key:
        return "claim"
    if re.search(r"/r\d+\.mp4$", key):
        return "video"
    if re.search(r"/r\d+\.json$", key):
        return "sidecar"
    if re.search(r"/r\d+\.(poster|strip)\.jpg$", key):
        return key.rsplit(".", 2)[-2]
    return key.rsplit("/", 1)[-1]  # the run's own files: index.html, results.csv, ...


@pytest.fixture
def traced(s3_proxies, monkeypatch) -> tuple[S3FaultProxy, Counter]:
    """A counting proxy and every request it forwarded, by (kind of file, operation)."""
    seen: Counter = Counter()
    track = S3FaultProxy._track

    def tracking(self, op, target, body, resp, data):
        kind = "listing" if op == "ListObjects" else _kind(unquote(urlsplit(target).path))
        seen[(kind, op)] += 1
        return track(self, op, target, body, resp, data)

    monkeypatch.setattr(S3FaultProxy, "_track", tracking)
    return s3_proxies(seed=6), seen


async def test_a_fresh_row_on_s3_costs_its_budget_of_requests(
    traced, s3_server, tmp_path, monkeypatch
):
    proxy, seen = traced
    folder = tmp_path / "in"
    pairs = make_pairs(folder, ROWS)
    rows = [{"id": f"r{i}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)]
    (folder / "m.csv").write_text(manifest_text(rows))
    bucket = s3_server.new_bucket()
    with fast_service(RuntimeDistribution(kind="fixed", low=0.0, high=0.0), seed=6) as sim:
        with pointed_at(sim, monkeypatch):
            summary = await generate_batch(
                str(folder / "m.csv"),
                f"s3://{bucket}/out",
                concurrency=ConcurrencySettings(
                    max_in_flight=2, submits_per_second=20, queries_per_second=200
                ),
                storage_options=proxy.storage_options,
            )
    assert summary.counts == {"succeeded": ROWS}
    per_row = {k: v for k, v in seen.items() if k[0] in {kind for kind, _ in PER_ROW}}
    assert per_row == {k: v * ROWS for k, v in PER_ROW.items()}
    run_level = {k: v for k, v in seen.items() if k not in per_row}
    assert set(run_level) <= {
        ("index.html", "PutObject"),
        ("index.presigned.html", "PutObject"),
        ("results.csv", "PutObject"),
        # The earlier results.csv, read before it is replaced (its rows this manifest has
        # none for are kept): once for the gallery's first page, once at the end.
        ("results.csv", "GetObject"),
        ("listing", "ListObjects"),  # the ledger folder, once per run when planned so
        # The run times this output has seen (longest first): read once; written once
        # (read again to merge) when the run learned any.
        ("runtimes.json", "GetObject"),
        ("runtimes.json", "PutObject"),
    }, run_level
    assert sum(run_level.values()) <= 13, run_level
