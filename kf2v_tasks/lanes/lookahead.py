"""Look-ahead: a few tasks kept PENDING at the service, so the account never idles.

With ``queue_ahead`` tasks queued beyond the running slots, the service starts the next
the moment one ends, whatever our poll interval; without them each hand-off waits for us
to notice, create, and for the service to start. :class:`LookAhead` keeps the status of
this run's tasks, a *queue clock* (:class:`~kf2v_tasks.dashscope.polling.QueueClock`) that
runs only while fewer of our tasks run than allowed and some wait (a task queued on purpose
is not late), the fall-back (a 429 on a create beyond the running slots, or a queued task
that never starts, switches look-ahead off once, and says so), and
:meth:`cancel_pending`, where every early stop cancels the never-started (free) tasks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, Optional

from kf2v_tasks import clock
from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.errors import ThrottledError

logger = logging.getLogger("kf2v_tasks.lanes.lookahead")


def is_concurrency_refusal(error: BaseException) -> bool:
    """A 429 on a create that is not the per-second rate: the account's running slots are full."""
    if not isinstance(error, ThrottledError):
        return False
    code = getattr(error, "code", "") or ""
    return "RateQuota" not in code


class LookAhead:
    """This run's tasks at the service, its queue clock, and the switch that turns look-ahead off.

    ``on_fall_back`` is called once when look-ahead is switched off (e.g. to shrink the pool);
    ``held``: tasks this run has at the service or on their way there.
    """

    def __init__(
        self,
        running: int,
        queue_ahead: int,
        on_fall_back: Optional[Callable[[str], None]] = None,
        held: Optional[Callable[[], int]] = None,
    ) -> None:
        self.running_slots = running
        # Slots held by this run's rows (creating or waiting on a task); creates in flight
        # count too, which the statuses seen so far do not show yet.
        self._held = held
        self.queue_ahead = queue_ahead
        self.on_fall_back = on_fall_back
        self.active = queue_ahead > 0
        self.fell_back: Optional[str] = None  # why, once it did
        self.cancelled: list[str] = []
        self._status: dict[str, TaskStatus] = {}
        self._lock = threading.Lock()
        self._unexplained = 0.0
        self._since = clock.now()

    # ------------------------------------------------------------------- the queue clock

    def explained(self) -> bool:
        """Whether every PENDING task of ours now waits behind our own running ones."""
        running = sum(1 for s in self._status.values() if s is TaskStatus.RUNNING)
        pending = any(s is TaskStatus.PENDING for s in self._status.values())
        return not pending or running >= self.running_slots

    def _advance(self) -> None:
        now = clock.now()
        if not self.explained():
            self._unexplained += now - self._since
        self._since = now

    def now(self) -> float:
        """Service seconds so far during which a task of ours waited with a running slot free."""
        with self._lock:
            self._advance()
            return self._unexplained

    def seen(self, task_id: str, status: TaskStatus | str) -> None:
        """A poller saw ``task_id`` in ``status`` (terminal statuses forget it)."""
        status = TaskStatus(status)
        with self._lock:
            self._advance()
            if status.is_terminal:
                self._status.pop(task_id, None)
            else:
                self._status[task_id] = status

    def pending(self) -> list[str]:
        """Our tasks last seen PENDING (or just created)."""
        with self._lock:
            return [t for t, s in self._status.items() if s is TaskStatus.PENDING]

    @property
    def at_service(self) -> int:
        """Our tasks at the service that have not been seen ended."""
        return len(self._status)

    # --------------------------------------------------------------------- the fall-back

    def refuses(self, error: BaseException) -> bool:
        """For a failed create: is it the service refusing a queued task? Then fall back.

        Used as the submit limiter's ``stop_retry``: such a create is not retried where
        it failed; the row waits for a running slot instead (see the runner).
        """
        if not self.active or not is_concurrency_refusal(error):
            return False
        ours = self._held() if self._held is not None else self.at_service + 1
        if ours <= self.running_slots:  # not a look-ahead create: a plain 429, retried
            return False
        self.fall_back(
            f"the service refused a task beyond the account's {self.running_slots} running "
            f"({getattr(error, 'code', '') or 'HTTP 429'})"
        )
        return True

    def fall_back(self, why: str) -> None:
        """Switch look-ahead off for the rest of the run; says so once."""
        if not self.active:
            return
        self.active = False
        self.fell_back = why
        logger.warning(
            "look-ahead off for this run: %s; keeping %d tasks in flight", why, self.running_slots
        )
        if self.on_fall_back is not None:
            self.on_fall_back(why)

    # ------------------------------------------------------------------- stopping early

    async def cancel_pending(self, client: Any) -> list[str]:
        """Cancel every task of ours still PENDING (free); return the ids cancelled.

        A task that started meanwhile refuses the cancel (it runs on and is billed); that
        is the service's rule, and the only safe one.
        """
        from kf2v_tasks.errors import Kf2vError

        ids = self.pending()
        if not ids:
            return []

        async def cancel(task_id: str) -> Optional[str]:
            try:
                await client.cancel_task(task_id)
            except Kf2vError as exc:  # started meanwhile, or already ended
                logger.info("task %s was not cancelled: %s", task_id, exc)
                return None
            self.seen(task_id, TaskStatus.CANCELED)
            return task_id

        done = await asyncio.gather(*(cancel(t) for t in ids))
        cancelled = [t for t in done if t is not None]
        self.cancelled.extend(cancelled)
        if cancelled:
            logger.warning(
                "cancelled %d queued task(s) that never started (not billed): %s",
                len(cancelled),
                ", ".join(cancelled),
            )
        return cancelled
