"""Sync twins of async Prefect tasks and flows, in the prefect-aws / prefect-gcp ``async_dispatch`` convention.

``validate_frames`` is a sync Prefect task whose call dispatches like ``async_dispatch``
does: in async code (an async flow or task, or a running event loop) it returns the async
twin's coroutine, so ``await validate_frames(...)`` works; in sync code it runs and returns
the value. prefect-aws decorates a plain function with ``@async_dispatch``, which loses
``.submit()``/``.map()``; a :class:`TwinTask` is a real ``Task``, so both work, on either
twin, in either kind of flow.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from prefect import Flow, Task, flow, task
from prefect._internal.compatibility.async_dispatch import is_in_async_context
from prefect.utilities.asyncutils import run_coro_as_sync


class TwinTask(Task):
    """A sync Prefect task that stands for its async twin (``.aio``) when called in async code."""

    aio: Task

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        force = kwargs.pop("_sync", None)
        run_sync = bool(force) if force is not None else not is_in_async_context()
        if run_sync:
            return super().__call__(*args, **kwargs)
        return self.aio(*args, **kwargs)

    def with_options(self, **options: Any) -> TwinTask:
        """Like ``Task.with_options``, applied to both twins."""
        return _pair(self.aio.with_options(**options), Task.with_options(self, **options))


def _pair(aio: Task, sync: Task) -> TwinTask:
    twin = TwinTask.__new__(TwinTask)
    twin.__dict__.update(sync.__dict__)
    twin.aio = aio
    return twin


def _in_sync_run() -> bool:
    """Inside a sync flow or task run (outside any run, Prefect's own behaviour is kept)."""
    from prefect.context import get_run_context
    from prefect.exceptions import MissingContextError

    try:
        ctx = get_run_context()
    except MissingContextError:
        return False
    parent = getattr(ctx, "task", None) or getattr(ctx, "flow", None)
    return parent is not None and not parent.isasync


class TwinFlow(Flow):
    """An async flow that a sync parent can call like a sync one.

    Prefect returns a coroutine when a sync flow calls an async flow; a scheduled parent
    would then "succeed" having run nothing. Called inside a sync flow or task run, a
    :class:`TwinFlow` runs the subflow to the end and returns its value (or raises its
    error); anywhere else it behaves as Prefect does (a coroutine to await, so
    ``asyncio.run(generate_batch(...))`` keeps working).
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = super().__call__(*args, **kwargs)
        if inspect.iscoroutine(result) and _in_sync_run():
            return run_coro_as_sync(result)
        return result

    def with_options(self, **options: Any) -> TwinFlow:
        """Like ``Flow.with_options``, keeping the sync-callable behaviour."""
        return _as_twin_flow(Flow.with_options(self, **options))


def _as_twin_flow(plain: Flow) -> TwinFlow:
    twin = TwinFlow.__new__(TwinFlow)
    twin.__dict__.update(plain.__dict__)
    return twin


def twin_flow(**flow_options: Any) -> Callable[[Callable[..., Any]], TwinFlow]:
    """``@flow(...)`` for an async flow that sync parents can call too."""

    def decorate(fn: Callable[..., Any]) -> TwinFlow:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError("twin_flow decorates an async function")
        return _as_twin_flow(flow(**flow_options)(fn))

    return decorate


def sync_twin(aio: Task, *, doc: str, **task_options: Any) -> TwinTask:
    """The sync twin of the async task ``aio``: same parameters, same body, run to the end.

    Its body runs ``aio``'s function on Prefect's "run sync" event loop, so the twins
    share one implementation and one signature.
    """
    if not aio.isasync:
        raise TypeError("sync_twin needs an async task")

    def body(*args: Any, **kwargs: Any) -> Any:
        return run_coro_as_sync(aio.fn(*args, **kwargs))

    functools.update_wrapper(body, aio.fn)  # name and signature (Prefect maps arguments by it)
    body.__doc__ = doc
    body.__name__ = body.__qualname__ = aio.fn.__name__.removeprefix("a")
    return _pair(aio, task(**task_options)(body))
