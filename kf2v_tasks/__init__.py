"""kf2v_tasks: Prefect tasks, flows' building blocks, a block and a client for Alibaba DashScope Wan kf2v.

The public surface is what ``__all__`` lists. Heavy modules (the tasks, fsspec backends)
load lazily on first use, so ``import kf2v_tasks`` stays cheap.

Example:
    ```python
    from prefect import flow
    from kf2v_tasks import validate_frames, submit_kf2v, poll_until_done, persist_video

    @flow
    def one_clip():
        pair = validate_frames("first.png", "last.png")
        sub = submit_kf2v(pair, "a slow pan", ledger_root="out/")
        state = poll_until_done(sub)
        return persist_video(state, "out/clip.mp4", submission=sub, ledger_root="out/")
    ```
"""

from __future__ import annotations

import importlib
from typing import Any

from kf2v_tasks._version import __version__

_EXPORTS = {
    # the block
    "DashScopeCredentials": "kf2v_tasks.credentials",
    # the Prefect tasks (async, and their sync twins)
    "avalidate_frames": "kf2v_tasks.tasks",
    "asubmit_kf2v": "kf2v_tasks.tasks",
    "apoll_until_done": "kf2v_tasks.tasks",
    "apersist_video": "kf2v_tasks.tasks",
    "validate_frames": "kf2v_tasks.tasks",
    "submit_kf2v": "kf2v_tasks.tasks",
    "poll_until_done": "kf2v_tasks.tasks",
    "persist_video": "kf2v_tasks.tasks",
    # results and requests
    "FramePair": "kf2v_tasks.generation.models",
    "Submission": "kf2v_tasks.generation.submit",
    "PersistedVideo": "kf2v_tasks.generation.persisted",
    "BatchSummary": "kf2v_tasks.batch.results",
    "RowResult": "kf2v_tasks.batch.results",
    "RowStatus": "kf2v_tasks.batch.results",
    "GenerationOptions": "kf2v_tasks.dashscope.models",
    "Kf2vRequest": "kf2v_tasks.dashscope.models",
    "TaskState": "kf2v_tasks.dashscope.task_state",
    "TaskStatus": "kf2v_tasks.dashscope.models",
    "PriceTable": "kf2v_tasks.generation.pricing",
    # the tasks' and flows' parameter types
    "FrameLimits": "kf2v_tasks.generation.frames",
    "AmbiguousPolicy": "kf2v_tasks.generation.submit",
    "PollSchedule": "kf2v_tasks.dashscope.schedule",
    "TaskRef": "kf2v_tasks.tasks_results",
    "Ledger": "kf2v_tasks.generation.ledger",
    "RowDefaults": "kf2v_tasks.batch.manifest",
    "ConcurrencySettings": "kf2v_tasks.batch.config",
    "PollingSettings": "kf2v_tasks.batch.config",
    "TaskRuns": "kf2v_tasks.batch.steps",
    "Order": "kf2v_tasks.batch.runtimes",
    # the client and the account's quota
    "Kf2vClient": "kf2v_tasks.dashscope.client",
    "AccountLimits": "kf2v_tasks.dashscope.limits",
    "LaneQuota": "kf2v_tasks.dashscope.limits",
    # errors a caller catches
    "Kf2vError": "kf2v_tasks.errors",
    "TransientError": "kf2v_tasks.errors",
    "PermanentError": "kf2v_tasks.errors",
    "AmbiguousCreateError": "kf2v_tasks.errors",
    "BatchFailedError": "kf2v_tasks.errors",
    "StoryboardFailedError": "kf2v_tasks.errors",
    "FrameValidationError": "kf2v_tasks.errors",
    "ManifestError": "kf2v_tasks.errors",
    "TaskFailedError": "kf2v_tasks.errors",
    "TaskTimeoutError": "kf2v_tasks.errors",
}

# Nothing of Prefect loads until a name is used: `kf2v --help` stays instant. The block
# is still found by `prefect block register -m kf2v_tasks` (through __dir__) and by the
# prefect.collections entry point (kf2v_tasks.credentials).
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kf2v_tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
