"""kf2v_tasks: Prefect tasks, blocks and a client for Alibaba DashScope Wan kf2v.

Heavy modules (Prefect, fsspec backends, PyAV) load lazily, so ``import kf2v_tasks``
stays cheap; the names below resolve on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from kf2v_tasks._version import __version__

_EXPORTS = {
    "Kf2vClient": "kf2v_tasks.dashscope.client",
    "validate_frames": "kf2v_tasks.tasks",
    "submit_kf2v": "kf2v_tasks.tasks",
    "poll_until_done": "kf2v_tasks.tasks",
    "persist_video": "kf2v_tasks.tasks",
    "AccountLimits": "kf2v_tasks.dashscope.limits",
    "GenerationOptions": "kf2v_tasks.dashscope.models",
    "Kf2vRequest": "kf2v_tasks.dashscope.models",
    "TaskState": "kf2v_tasks.dashscope.models",
    "TaskStatus": "kf2v_tasks.dashscope.models",
}

# Imported eagerly so `prefect block register -m kf2v_tasks` (and the prefect.collections
# entry point) find the block class in this module's namespace.
from kf2v_tasks.credentials import DashScopeCredentials  # noqa: E402

__all__ = ["__version__", "DashScopeCredentials", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kf2v_tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
