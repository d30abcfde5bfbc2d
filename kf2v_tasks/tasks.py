"""The four Prefect tasks: validate frames, submit, poll until done, persist the video.

In the prefect-aws / prefect-gcp convention each comes twice: ``avalidate_frames``,
``asubmit_kf2v``, ``apoll_until_done`` and ``apersist_video`` are async tasks, and
``validate_frames``, ``submit_kf2v``, ``poll_until_done`` and ``persist_video`` are their
sync twins, which return values in a sync flow and can be awaited in an async one.
``.submit()`` and ``.map()`` work on all eight.

They take a ``DashScopeCredentials`` block or its saved name (``None``: the
``DASHSCOPE_API_KEY`` environment), never a client. Every task that talks to DashScope
shares the account's one quota in this process (:mod:`kf2v_tasks.account`): a ``.map``
over 100 pairs keeps within the account's tasks in flight. None of them caches
(``NO_CACHE``): idempotency comes from the ledger under ``ledger_root``, which survives
crashes, workers and Prefect transactions alike.

Retries: one layer, the client's (:class:`kf2v_tasks.retry.RetryPolicy`: at most 8 attempts
per request, only for errors that are safe to repeat, never a create whose outcome is
unknown). The tasks themselves set no Prefect retries, so a request is never sent 8×4
times and a retried poll never restarts its deadline.

The tasks live in two modules, by when they run: :mod:`kf2v_tasks.tasks_submit` (before
the work is paid for: validate, submit) and :mod:`kf2v_tasks.tasks_results` (after:
poll, persist). Import them from here (or from :mod:`kf2v_tasks`); this module's names
stay as they were.

Example:
    ```python
    from prefect import flow
    from kf2v_tasks.tasks import persist_video, poll_until_done, submit_kf2v, validate_frames

    @flow
    def one_video(first: str, last: str):
        sub = submit_kf2v(validate_frames(first, last), "a slow sunrise", ledger_root="out")
        return persist_video(poll_until_done(sub), "out/clip.mp4", submission=sub)
    ```
"""

from __future__ import annotations

from kf2v_tasks.tasks_results import (
    TaskRef,
    apersist_video,
    apoll_until_done,
    persist_video,
    poll_until_done,
)
from kf2v_tasks.tasks_submit import asubmit_kf2v, avalidate_frames, submit_kf2v, validate_frames

__all__ = [
    "TaskRef",
    "apersist_video",
    "apoll_until_done",
    "asubmit_kf2v",
    "avalidate_frames",
    "persist_video",
    "poll_until_done",
    "submit_kf2v",
    "validate_frames",
]
