"""Simulated service state: tasks and their time-driven lifecycle, accounts, rate limits.

Each account (API key) has one lane per model name as sent, as the service grants quota
per account and per model (reference §16). Task states are computed lazily from
timestamps: before any read, :meth:`Account.advance` replays the lanes up to "now" as a
discrete-event simulation, so a queued task starts at exactly the instant a slot of its
lane frees (no polling scheduler, perfect server-side utilisation).
All times here are real seconds since the simulator started (``SimClock.now``).
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Optional

from kf2v_tasks.dashscope.catalog import active_catalog
from kf2v_tasks.simulator.config import DEFAULT_MODEL_LIMITS, SimulatorConfig
from kf2v_tasks.simulator.faults import FaultInjector


class SimClock:
    """Real monotonic time since start, and the compressed service wall clock."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self._t0 = time.monotonic()
        self._unix0 = time.time()
        self._wall0 = datetime.now(UTC)

    def now(self) -> float:
        """Real seconds since the simulator started."""
        return time.monotonic() - self._t0

    def unix(self, t: float) -> float:
        """Real Unix time of simulator time ``t`` (for URL expiry)."""
        return self._unix0 + t

    def service_time(self, t: float) -> datetime:
        """Service wall-clock time of simulator time ``t``: it runs ``speed`` times faster."""
        return self._wall0 + timedelta(seconds=t * self.speed)


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per real second, at most ``capacity``."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class SimTask:
    """One task as the simulator knows it (times in real seconds since start)."""

    task_id: str
    seq: int
    account: str
    fingerprint: str
    model: str
    resolution: str
    prompt: Optional[str]
    negative_prompt: Optional[str]
    prompt_extend: bool
    watermark: bool
    seed: Optional[int]
    first_image: bytes
    last_image: bytes
    created: float
    run_seconds: float
    run_real: float
    outcome: str = "succeeded"  # or a task fault kind: fail_moderation, fail_internal
    started: Optional[float] = None
    ended: Optional[float] = None
    canceled: Optional[float] = None
    protocol: str = "kf2v"  # or "media" (models table)
    duration: int = 5  # seconds asked (kf2v: always 5)
    sound: bool = False  # the video has an audio track (media models)
    audio: Optional[bytes] = None  # the driving audio, when one was given

    def status(self) -> str:
        """Status at the last :meth:`Account.advance` (UNKNOWN/TTL is the caller's job)."""
        if self.canceled is not None:
            return "CANCELED"
        if self.ended is not None:
            return "SUCCEEDED" if self.outcome == "succeeded" else "FAILED"
        return "RUNNING" if self.started is not None else "PENDING"


@dataclass
class Lane:
    """One model's queue on one account: the service's quota is per model (reference §16)."""

    model: str  # as sent: a dated variant is its own lane
    limit: int
    pending: deque[SimTask] = field(default_factory=deque)
    running: list[SimTask] = field(default_factory=list)
    peak: int = 0

    def busy(self) -> int:
        """Tasks holding or waiting for a slot."""
        return len(self.running) + len(self.pending)


@dataclass
class Account:
    """One API key's lanes (one per model) and rate-limit buckets."""

    account_id: str
    #: Running-at-once limit of a model's lane, asked once when the lane is made.
    limit_of: Callable[[str], int]
    lanes: dict[str, Lane] = field(default_factory=dict)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    peak: int = 0  # all lanes together
    # Time of the last processed event: a queued task cannot start before it.
    _clock: float = 0.0

    def lane(self, model: str) -> Lane:
        """The lane of ``model`` (made on first use)."""
        lane = self.lanes.get(model)
        if lane is None:
            lane = self.lanes[model] = Lane(model, self.limit_of(model))
        return lane

    def running(self) -> int:
        """Tasks running now, all lanes together."""
        return sum(len(lane.running) for lane in self.lanes.values())

    def pending(self) -> int:
        """Tasks waiting for a slot, all lanes together."""
        return sum(len(lane.pending) for lane in self.lanes.values())

    def _fill(self) -> None:
        started = False
        for lane in self.lanes.values():
            while lane.pending and len(lane.running) < lane.limit:
                task = lane.pending.popleft()
                task.started = max(task.created, self._clock)
                lane.running.append(task)
                lane.peak = max(lane.peak, len(lane.running))
                started = True
        if started:
            self.peak = max(self.peak, self.running())

    def advance(self, now: float) -> None:
        """Replay starts and ends up to ``now``, in time order."""
        while True:
            self._fill()
            ends = [
                (t.started + t.run_real, t.seq, lane, t)  # type: ignore[operator]
                for lane in self.lanes.values()
                for t in lane.running
            ]
            if not ends:
                return
            end = min(ends, key=lambda e: (e[0], e[1]))[0]
            if end > now:
                return
            # Every task ending at this instant leaves before any queued one starts, so
            # the all-lanes peak never counts an ended task and its successor together.
            for e, _seq, lane, task in ends:
                if e == end:
                    lane.running.remove(task)
                    task.ended = end
            self._clock = end

    def enqueue(self, task: SimTask) -> None:
        """Queue a task created at ``task.created`` (call :meth:`advance` first)."""
        self._clock = max(self._clock, task.created)
        self.lane(task.model).pending.append(task)
        self.advance(task.created)

    def cancel(self, task: SimTask, now: float) -> bool:
        """Cancel a PENDING task; False when it is not pending any more."""
        self.advance(now)
        if task.status() != "PENDING":
            return False
        self.lane(task.model).pending.remove(task)
        task.canceled = now
        return True


@dataclass
class Upload:
    """A file stored through the temporary-upload flow."""

    data: bytes
    account: str
    model: str
    created: float


@dataclass
class Policy:
    """An upload credential handed out by getPolicy."""

    upload_dir: str
    account: str
    model: str
    expires: float


def account_id(api_key: str) -> str:
    """Stable, non-secret account id for an API key (keys never appear in stats)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


class SimState:
    """All mutable state of one simulator; used from the event loop thread only."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.clock = SimClock(config.speed)
        self.secret = uuid.uuid4().bytes  # signs URLs and upload policies
        self.reset()

    def reset(self) -> None:
        """Forget every task, upload and counter; reseed the RNGs."""
        self.tasks: dict[str, SimTask] = {}
        self.accounts: dict[str, Account] = {}
        self.uploads: dict[str, Upload] = {}
        self.policies: dict[str, Policy] = {}
        self.counters: Counter[str] = Counter()
        self.by_fingerprint: Counter[str] = Counter()
        self.throttled_by_endpoint: Counter[str] = Counter()
        self.faults = FaultInjector(self.config.faults, self.config.seed)
        self._runtime_rng = random.Random(f"{self.config.seed}:runtime")
        self._seq = 0

    def set_faults(self, injector: FaultInjector) -> None:
        """Swap the fault configuration, keeping the counts so far."""
        injector.counts.update(self.faults.counts)
        self.faults = injector
        self.config.faults = injector.config

    def account(self, api_key: str) -> Account:
        """The account of ``api_key`` (created on first use)."""
        aid = account_id(api_key)
        if aid not in self.accounts:
            self.accounts[aid] = Account(aid, lambda model: self.model_limits(model)[0])
        return self.accounts[aid]

    def model_limits(self, model: str) -> tuple[int, float]:
        """(running at once, creates/s) of ``model`` on one account.

        ``config.model_limits`` first (the name as sent, then its models-table row's),
        then the explicit ``max_concurrent``/``submits_per_second``, then the table.
        """
        cfg = self.config
        spec = active_catalog().find(model)
        for name in (model, spec.name if spec is not None else None):
            if name in cfg.model_limits:
                running, creates = cfg.model_limits[name]
                return int(running), float(creates)
        running, creates = DEFAULT_MODEL_LIMITS
        if spec is not None:
            running = spec.concurrency or running
            # getattr: tables built before the field existed have no creates figure.
            creates = getattr(spec, "creates_per_second", None) or creates
        if cfg.max_concurrent is not None:
            running = cfg.max_concurrent
        if cfg.submits_per_second is not None:
            creates = cfg.submits_per_second
        return running, creates

    def allow(self, acct: Account, bucket: str, per_second: float) -> bool:
        """Take a rate-limit token (burst: about one second's worth)."""
        now = self.clock.now()
        if bucket not in acct.buckets:
            rate = per_second * self.config.rate_scale
            acct.buckets[bucket] = TokenBucket(rate, max(1.0, per_second), now)
        return acct.buckets[bucket].take(now)

    def throttle(self, endpoint: str) -> None:
        """Count a rate-limit rejection."""
        self.counters["throttled"] += 1
        self.throttled_by_endpoint[endpoint] += 1

    def add_task(self, acct: Account, **fields: Any) -> SimTask:
        """Create a task now, drawing its run time and outcome from the seeded RNGs."""
        now = self.clock.now()
        acct.advance(now)
        run_seconds = self.config.runtime.draw(self._runtime_rng) * self.config.runtime_factor(
            fields.get("duration", 5), fields.get("resolution", "720P")
        )
        injection = self.faults.draw("task")
        self._seq += 1
        task = SimTask(
            task_id=str(uuid.uuid4()),
            seq=self._seq,
            account=acct.account_id,
            created=now,
            run_seconds=run_seconds,
            run_real=self.config.real(run_seconds),
            outcome=injection.kind or "succeeded",
            **fields,
        )
        self.tasks[task.task_id] = task
        self.counters["creates"] += 1
        self.by_fingerprint[task.fingerprint] += 1
        acct.enqueue(task)
        return task

    def expired(self, task: SimTask, now: float) -> bool:
        """Whether the task is older than ``task_ttl`` and reads as UNKNOWN."""
        return now - task.created > self.config.real(self.config.task_ttl)

    def lookup(self, task_id: str, acct: Account) -> Optional[SimTask]:
        """The caller's own, unexpired task, advanced to now; None reads as UNKNOWN."""
        task = self.tasks.get(task_id)
        if task is None or task.account != acct.account_id:
            return None
        now = self.clock.now()
        acct.advance(now)
        return None if self.expired(task, now) else task

    def advance_all(self) -> float:
        """Advance every account to now and return now."""
        now = self.clock.now()
        for acct in self.accounts.values():
            acct.advance(now)
        return now

    def stats(self) -> dict[str, Any]:
        """The counters ``GET /_sim/stats`` reports."""
        now = self.advance_all()
        by_status: Counter[str] = Counter(
            "UNKNOWN" if self.expired(t, now) else t.status() for t in self.tasks.values()
        )
        peak_by_model: dict[str, int] = {}
        for acct in self.accounts.values():
            for lane in acct.lanes.values():
                peak_by_model[lane.model] = max(peak_by_model.get(lane.model, 0), lane.peak)
        return {
            "creates": self.counters["creates"],
            "creates_by_fingerprint": dict(self.by_fingerprint),
            "create_requests": self.counters["create_requests"],
            "queries": self.counters["queries"],
            "lists": self.counters["lists"],
            "cancels": self.counters["cancels"],
            "policies": self.counters["policies"],
            "uploads": self.counters["uploads"],
            "downloads": self.counters["downloads"],
            "download_bytes": self.counters["download_bytes"],
            "renders": self.counters["renders"],
            "throttled": self.counters["throttled"],
            "throttled_by_endpoint": dict(self.throttled_by_endpoint),
            "faults": dict(self.faults.counts),
            "peak_concurrency": max((a.peak for a in self.accounts.values()), default=0),
            "peak_by_model": peak_by_model,
            "running": sum(a.running() for a in self.accounts.values()),
            "pending": sum(a.pending() for a in self.accounts.values()),
            "tasks_by_status": dict(by_status),
            "elapsed": now,
        }

    def task_rows(self) -> list[dict[str, Any]]:
        """Per-task timeline rows for ``GET /_sim/tasks``, in creation order."""
        now = self.advance_all()
        rows = []
        for t in sorted(self.tasks.values(), key=lambda t: t.seq):
            rows.append(
                {
                    "task_id": t.task_id,
                    "fingerprint": t.fingerprint,
                    "status": "UNKNOWN" if self.expired(t, now) else t.status(),
                    "created": t.created,
                    "started": t.started,
                    "ended": t.ended if t.ended is not None else t.canceled,
                    "run_seconds": t.run_seconds,
                    "model": t.model,
                    "resolution": t.resolution,
                    "outcome": t.outcome,
                    "account": t.account,
                }
            )
        return rows
