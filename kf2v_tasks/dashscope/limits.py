"""Account quota, enforced in-process: a lane per model, and the account's queries per second.

DashScope limits each main account per model, independently (reference §16: kf2v 2 running
and 2 creates/s, wan2.7-i2v 5 and 5), and task queries (20/s) per account. One
:class:`AccountLimits` is shared by every caller that uses the account, so together they
stay under the quota instead of discovering it through 429s. Rate windows are in service
seconds (see :mod:`kf2v_tasks.clock`).

Prefect runs each task submitted with ``.submit()``/``.map()`` on its own thread and
event loop, so nothing here is tied to a loop: state sits behind a ``threading.Lock`` and
a waiter on another loop is woken with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Optional

from kf2v_tasks import clock


class RateLimiter:
    """At most ``rate`` acquisitions per service second, ``burst`` at once, on any loop or thread.

    A reservation scheme (GCRA): each caller is given the next free instant under a lock,
    then sleeps outside it, so callers are served in the order they asked.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        # Burst of 1 by default: a fresh account sees evenly spaced calls, never a spike.
        self.burst = float(burst if burst is not None else 1.0)
        self._lock = threading.Lock()
        self.set_rate(rate)
        self._tat = clock.now() - self._tolerance  # theoretical arrival time of the next call
        #: Asked about each failed call on this limiter: True means "do not retry it here"
        #: (the caller has a better way, e.g. a create the service refused for concurrency).
        self.stop_retry: Optional[Callable[[BaseException], bool]] = None

    def set_rate(self, rate: float) -> None:
        """Change the rate from the next reservation on (e.g. this run's share of the account's)."""
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        with self._lock:
            self.rate = float(rate)
            self._interval = 1.0 / self.rate
            self._tolerance = (self.burst - 1.0) * self._interval

    def reserve(self) -> float:
        """Take the next free instant; return the service seconds to wait for it."""
        with self._lock:
            now = clock.now()
            tat = max(self._tat, now)
            self._tat = tat + self._interval
            return max(0.0, tat - self._tolerance - now)

    async def acquire(self) -> None:
        """Wait until this caller's turn has come."""
        wait = self.reserve()
        if wait > 0:
            await clock.sleep(wait)

    def penalize(self, service_seconds: float) -> None:
        """After a 429, hold everyone back for ``service_seconds`` (e.g. ``Retry-After``)."""
        with self._lock:
            self._tat = max(self._tat, clock.now()) + max(0.0, service_seconds)


#: A lane's size when the models table knows nothing of its model (the service's default).
DEFAULT_RUNNING = 2
DEFAULT_CREATES_PER_SECOND = 2.0

logger = logging.getLogger("kf2v_tasks.dashscope.limits")


@dataclass(frozen=True)
class LaneQuota:
    """What one account may do with one model at once: running tasks and creates per second."""

    running: int = DEFAULT_RUNNING
    creates_per_second: float = DEFAULT_CREATES_PER_SECOND

    def __post_init__(self) -> None:
        if self.running < 1:
            raise ValueError(f"a lane runs at least 1 task, got {self.running}")
        if self.creates_per_second <= 0:
            raise ValueError(f"creates per second must be > 0, got {self.creates_per_second}")


def table_quota(model: str) -> tuple[LaneQuota, bool]:
    """The models table's quota for ``model``, and whether the table knows the model."""
    from kf2v_tasks.dashscope.catalog import UnknownModelError, get_model

    try:
        spec = get_model(model)
    except UnknownModelError:
        return LaneQuota(), False
    return (
        LaneQuota(
            running=spec.concurrency or DEFAULT_RUNNING,
            creates_per_second=spec.creates_per_second or DEFAULT_CREATES_PER_SECOND,
        ),
        True,
    )


class AccountLimits:
    """The quota of one DashScope account: a lane per model, and the account's queries/s.

    The service counts running tasks and creates per second per model, each model (and
    each dated variant) independently; task queries per second count for the account.

    Args:
        max_in_flight: running tasks of *every* model (``None``: each model's own, from
            the models table).
        submits_per_second: creates/s of every model (``None``: the table's).
        queries_per_second: task queries per second, account-wide (service default 20).
        quotas: per-model overrides (an account with raised quotas), over all of the above.

    Example:
        ```python
        from kf2v_tasks.dashscope.limits import AccountLimits, LaneQuota
        limits = AccountLimits(quotas={"wan2.7-i2v": LaneQuota(running=8, creates_per_second=5)})
        assert limits.quota("wan2.2-kf2v-flash").running == 2
        assert limits.quota("wan2.7-i2v").running == 8
        ```
    """

    def __init__(
        self,
        max_in_flight: Optional[int] = None,
        submits_per_second: Optional[float] = None,
        queries_per_second: float = 20.0,
        quotas: Optional[Mapping[str, LaneQuota]] = None,
    ) -> None:
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight must be ≥ 1")
        self.max_in_flight = max_in_flight
        self.submits_per_second = submits_per_second
        self.queries_per_second = queries_per_second
        self.quotas = dict(quotas or {})
        self.query_limiter = RateLimiter(queries_per_second)
        self._create_limiters: dict[str, RateLimiter] = {}
        self._task_models: dict[str, str] = {}
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def quota(self, model: str) -> LaneQuota:
        """The lane of ``model``: its override, else the account-wide one, else the table's."""
        if model in self.quotas:
            return self.quotas[model]
        table, known = table_quota(model)
        if not known and model not in self._warned:
            self._warned.add(model)
            logger.warning(
                "model %r is not in the models table: its lane gets %d running tasks and "
                "%.0f creates/s (set its quota to change that)",
                model,
                table.running,
                table.creates_per_second,
            )
        return LaneQuota(
            running=self.max_in_flight or table.running,
            creates_per_second=self.submits_per_second or table.creates_per_second,
        )

    def set_quotas(self, quotas: Mapping[str, LaneQuota]) -> None:
        """Override some models' lanes from now on (a run's own sizes); rates follow."""
        with self._lock:
            self.quotas.update(quotas)
            for model, quota in quotas.items():
                limiter = self._create_limiters.get(model)
                if limiter is not None:
                    limiter.set_rate(quota.creates_per_second)

    def create_limiter(self, model: str) -> RateLimiter:
        """The one creates/s limiter of ``model``'s lane on this account."""
        with self._lock:
            limiter = self._create_limiters.get(model)
            if limiter is None:
                limiter = RateLimiter(self.quota(model).creates_per_second)
                self._create_limiters[model] = limiter
            return limiter

    def note_task(self, task_id: str, model: str) -> None:
        """Remember which lane a created task is in (for :meth:`lane_full`)."""
        with self._lock:
            self._task_models[task_id] = model

    def lane_full(self, task_id: str, running: set[str]) -> bool:
        """Whether the lane of ``task_id`` has all its running slots taken by ``running``.

        ``running`` is a sweep of the account's RUNNING tasks; a task whose lane is not
        known here (not created through these limits) is never said to wait.
        """
        with self._lock:
            model = self._task_models.get(task_id)
            if model is None:
                return False
            same = sum(1 for t in running if self._task_models.get(t) == model)
        return same >= self.quota(model).running
