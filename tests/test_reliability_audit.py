"""The soak's audit counts an extra create after a crash-interrupted create as explained.

Seen on ``python -m reliability.soak --seed 20261211`` (crash and resume): a run was
SIGKILLed after sending a create; the run that took the claim over recorded
``create_outcome_unknown`` and created again; that task FAILED and a third create
followed. The ledger's record was re-created after the FAILED task (its
``possible_duplicate`` then lives under ``extra.earlier_tasks``), so the audit called
the second create unexplained. Both are the ledger's own record of an ambiguous create.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reliability.harness import audit

FP = "8be35c08b635" + "0" * 52


def _ledger(out: Path, events: list[str], earlier_possible_duplicate: bool) -> None:
    folder = out / ".kf2v" / "ledger"
    folder.mkdir(parents=True)
    record = {
        "fingerprint": FP,
        "state": "failed",
        "possible_duplicate": False,
        "events": [{"event": e} for e in events],
        "extra": {
            "earlier_tasks": [
                {
                    "task_id": "t2",
                    "status": "FAILED",
                    "possible_duplicate": earlier_possible_duplicate,
                }
            ]
        },
    }
    (folder / f"{FP}.json").write_text(json.dumps(record))


TASKS = [
    {"fingerprint": FP, "created": 1.0, "outcome": "succeeded", "status": "SUCCEEDED"},
    {"fingerprint": FP, "created": 2.0, "outcome": "fail_moderation", "status": "FAILED"},
    {"fingerprint": FP, "created": 3.0, "outcome": "fail_moderation", "status": "FAILED"},
]
STATS = {"creates": 3, "create_requests": 3, "creates_by_fingerprint": {FP: 3}}


@pytest.mark.parametrize(
    "events,earlier",
    [
        (["create", "claim_takeover", "create_outcome_unknown", "create", "recreate"], False),
        (["create", "create", "recreate"], True),
    ],
    ids=["event", "earlier-task"],
)
def test_an_extra_create_after_a_crash_interrupted_create_is_explained(tmp_path, events, earlier):
    _ledger(tmp_path, events, earlier)
    a = audit(tmp_path, 0, STATS, TASKS)
    assert a.extra_creates_unexplained == 0 and a.extra_creates_after_ambiguous == 1
    assert a.extra_creates_after_failed == 1 and not a.problems


def test_an_extra_create_with_no_evidence_is_still_a_problem(tmp_path):
    _ledger(tmp_path, ["create", "create", "recreate"], False)
    a = audit(tmp_path, 0, STATS, TASKS)
    assert a.extra_creates_unexplained == 1 and "created 3 times" in a.problems[0]
