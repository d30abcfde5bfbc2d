"""How long each row will run on the service, learned from this output's history.

The service runs a few tasks at once per (account, model) lane (kf2v models 2,
``wan2.7-i2v`` 5). Within a lane, starting the longest tasks first shrinks the batch's
tail (LPT scheduling), so rows are ordered by a predicted run time: a prior
(:func:`prior_seconds`) until tasks have finished, then the median of observed
``run_seconds / duration`` per (model, resolution) over the last :data:`MAX_SAMPLES`,
blended with the next fallback until :data:`FULL_WEIGHT_SAMPLES` exist, so one odd task
cannot reorder a batch.

History is ``<output>/.kf2v/runtimes.json``: ``{"version": 1, "samples": {model:
{resolution: [[duration_seconds, run_seconds], ...]}}}``, oldest first. Predictions only
decide the *order* of rows, never whether one runs, so an unreadable file costs a worse
order, not a failed batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, Optional, TypeVar, Union

from pydantic import BaseModel, Field

from kf2v_tasks.dashscope.catalog import active_catalog
from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.dashscope.task_state import TaskState
from kf2v_tasks.storage.files import read_bytes, write_text_atomic
from kf2v_tasks.storage.paths import RESERVED_DIR, join

__all__ = [
    "BASE_SECONDS",
    "DEFAULT_BASE_SECONDS",
    "FULL_WEIGHT_SAMPLES",
    "MAX_SAMPLES",
    "RESOLUTION_FACTOR",
    "RUNTIMES_FILE",
    "Order",
    "RunTimeHistory",
    "RunTimeSample",
    "base_seconds",
    "family_of",
    "history_path",
    "order_rows",
    "prior_seconds",
    "run_seconds_of",
]

logger = logging.getLogger("kf2v_tasks.batch.runtimes")

T = TypeVar("T")

# Our own priors: no published figure of the service's run times exists. They only *order*
# rows until real run times of this output are known, so only their ratios matter.
#: Multiplier of the run time per resolution tier (720P is 1).
RESOLUTION_FACTOR: dict[str, float] = {"480P": 0.6, "720P": 1.0, "1080P": 1.6}
#: Prior service seconds of a 5-s 720P task, per model family (our own guess, see above).
BASE_SECONDS: dict[str, float] = {
    "wan2.2-kf2v-flash": 180.0,
    "wanx2.1-kf2v-plus": 180.0,
    "wan2.1-kf2v-plus": 180.0,
    "wan2.7-i2v": 180.0,
}
#: Prior for a model not in :data:`BASE_SECONDS` (our own guess, see above).
DEFAULT_BASE_SECONDS = 180.0
#: The duration the base seconds are for (every kf2v video is 5 s).
_BASE_DURATION = 5.0
#: Used when a row names no resolution or duration.
_DEFAULT_RESOLUTION = "720P"

#: Samples kept per (model, resolution): the newest ones; bounds the file's size.
MAX_SAMPLES = 200
#: Samples at which a (model, resolution)'s own median fully replaces its fallback.
FULL_WEIGHT_SAMPLES = 5
#: The history file's name under ``<output>/.kf2v/``.
RUNTIMES_FILE = "runtimes.json"
_VERSION = 1


# ---------------------------------------------------------------------- the prior


def _model_name(model: Any) -> str:
    return str(getattr(model, "value", model)).strip()


def _resolution_name(resolution: Any) -> str:
    if resolution is None:
        return _DEFAULT_RESOLUTION
    return str(getattr(resolution, "value", resolution)).strip().upper()


def _duration(duration: Optional[float]) -> float:
    return _BASE_DURATION if duration is None else float(duration)


def _factor(resolution: str) -> float:
    return RESOLUTION_FACTOR.get(resolution, 1.0)


def family_of(model: str) -> str:
    """The family a (dated) model name belongs to: ``wan2.7-i2v-2026-04-25`` → ``wan2.7-i2v``.

    Read from the models table (prefix entries such as ``wan2.7-i2v``), so a dated variant
    can borrow its family's run times; an unknown model is its own family.
    """
    name = _model_name(model)
    spec = active_catalog().find(name)
    return spec.name if spec is not None else name


def base_seconds(model: str) -> float:
    """Prior seconds of a 5-s 720P task of ``model``'s family (:data:`BASE_SECONDS`)."""
    return BASE_SECONDS.get(family_of(model), DEFAULT_BASE_SECONDS)


def prior_seconds(model: str, resolution: Optional[str], duration: Optional[float]) -> float:
    """Predicted service seconds before any run time is known (unknown resolution: 720P; no
    duration: 5 s).
    """
    res = _resolution_name(resolution)
    return base_seconds(model) * (_duration(duration) / _BASE_DURATION) * _factor(res)


# ---------------------------------------------------------------------- samples


@dataclass(frozen=True)
class RunTimeSample:
    """One finished task: its video's length and how long the service ran it."""

    duration: float
    run_seconds: float

    @property
    def rate(self) -> float:
        """Service seconds per second of video: comparable across durations."""
        return self.run_seconds / self.duration


def _valid(duration: float, run_seconds: float) -> bool:
    return (
        math.isfinite(duration) and math.isfinite(run_seconds) and duration > 0 and run_seconds > 0
    )


_Key = tuple[str, str]  # (model, resolution)
_Samples = dict[_Key, list[RunTimeSample]]


class _RunTimeFile(BaseModel):
    """The on-disk document: ``samples[model][resolution] = [[duration, run_seconds], …]``."""

    version: Literal[1] = _VERSION
    samples: dict[str, dict[str, list[tuple[float, float]]]] = Field(default_factory=dict)


def _to_doc(samples: _Samples) -> dict[str, Any]:
    out: dict[str, dict[str, list[list[float]]]] = {}
    for (model, res), rows in sorted(samples.items()):
        if rows:
            out.setdefault(model, {})[res] = [[s.duration, s.run_seconds] for s in rows]
    return {"version": _VERSION, "samples": out}


def _from_bytes(data: bytes) -> _Samples:
    """Parse the file; raises ``ValueError`` (or a subclass) for anything but a valid doc."""
    doc = _RunTimeFile.model_validate(json.loads(data.decode("utf-8")))
    samples: _Samples = {}
    for model, by_res in doc.samples.items():
        for res, rows in by_res.items():
            kept = [RunTimeSample(float(d), float(r)) for d, r in rows if _valid(d, r)]
            if kept:
                samples[(_model_name(model), _resolution_name(res))] = kept[-MAX_SAMPLES:]
    return samples


def history_path(output: str) -> str:
    """Where an output's run-time history lives: ``<output>/.kf2v/runtimes.json``."""
    return join(output, RESERVED_DIR, RUNTIMES_FILE)


async def _read(path: str, storage_options: Optional[dict]) -> Optional[_Samples]:
    """Samples on disk: ``{}`` if there is no file, ``None`` (and a warning) if unreadable."""
    try:
        data = await read_bytes(path, storage_options=storage_options)
    except FileNotFoundError:
        return {}
    except Exception as exc:  # a store error: predictions fall back, the batch goes on
        logger.warning("could not read run-time history %s (%s); ignoring it", path, exc)
        return None
    try:
        return _from_bytes(data)
    except ValueError as exc:  # JSON, UTF-8 and validation errors are all ValueErrors
        logger.warning("run-time history %s is unreadable (%s); ignoring it", path, exc)
        return None


# ---------------------------------------------------------------------- the history


class RunTimeHistory:
    """Observed run times of one output, and the run time they predict for a row.

    Samples are kept per (model, resolution); :meth:`predict` falls back from the model's
    own samples to its family's, then to its other resolutions (scaled by
    :data:`RESOLUTION_FACTOR`), then to the prior. :meth:`save` adds this run's new samples
    to whatever the file holds by then, so overlapping runs on one output lose nothing.
    """

    def __init__(self, samples: Optional[_Samples] = None) -> None:
        # Samples as last read from (or written to) the file, and those observed since.
        self._base: _Samples = {k: list(v[-MAX_SAMPLES:]) for k, v in (samples or {}).items()}
        self._pending: _Samples = {}
        self._rates: dict[_Key, float] = {}  # memo of _rate, cleared on every change
        self._save_lock = asyncio.Lock()

    # ------------------------------------------------------------------ persistence

    @classmethod
    async def load(cls, output: str, storage_options: Optional[dict] = None) -> RunTimeHistory:
        """The history stored under ``output``; empty (logged, the file left alone) if it is
        missing, corrupt or unreachable: only :meth:`save` replaces it.
        """
        samples = await _read(history_path(output), storage_options)
        return cls(samples or {})

    async def save(self, output: str, storage_options: Optional[dict] = None) -> None:
        """Add this history's new samples to the file under ``output``, atomically.

        The file is re-read first, since another run may have saved meanwhile; its samples
        stay, ours are appended, and each (model, resolution) keeps its newest
        :data:`MAX_SAMPLES`. An unreadable file is replaced by what this history holds.

        Raises:
            OSError: the store refused the write (the new samples stay pending).
        """
        path = history_path(output)
        async with self._save_lock:
            disk = await _read(path, storage_options)
            base = self._base if disk is None else disk
            taken = {k: len(v) for k, v in self._pending.items()}
            merged: _Samples = {}
            for key in set(base) | set(taken):
                rows = list(base.get(key, [])) + self._pending.get(key, [])[: taken.get(key, 0)]
                if rows:
                    merged[key] = rows[-MAX_SAMPLES:]
            text = json.dumps(_to_doc(merged), separators=(",", ":")) + "\n"
            await write_text_atomic(
                path, text, storage_options=storage_options, content_type="application/json"
            )
            self._base = merged
            for key, n in taken.items():  # observations made while writing stay pending
                del self._pending[key][:n]
                if not self._pending[key]:
                    del self._pending[key]
            self._rates.clear()

    # ------------------------------------------------------------------ learning

    def observe(
        self, model: str, resolution: Optional[str], duration: Optional[float], run_seconds: float
    ) -> bool:
        """Record one finished task; returns whether it was kept.

        Non-positive or non-finite values are dropped: a clock glitch must not teach the
        ordering that a task is instant.
        """
        dur = _duration(duration)
        if not _valid(dur, float(run_seconds)):
            return False
        key = (_model_name(model), _resolution_name(resolution))
        self._pending.setdefault(key, []).append(RunTimeSample(dur, float(run_seconds)))
        self._rates.clear()
        return True

    def samples(self, model: str, resolution: Optional[str]) -> list[RunTimeSample]:
        """The newest :data:`MAX_SAMPLES` samples of (``model``, ``resolution``), oldest first."""
        return self._samples((_model_name(model), _resolution_name(resolution)))

    def __len__(self) -> int:
        """Samples held, all (model, resolution) pairs together."""
        return sum(len(self._samples(k)) for k in self._keys())

    def _keys(self) -> list[_Key]:
        return sorted(set(self._base) | set(self._pending))

    def _samples(self, key: _Key) -> list[RunTimeSample]:
        rows = self._base.get(key, []) + self._pending.get(key, [])
        return rows[-MAX_SAMPLES:]

    # ------------------------------------------------------------------ prediction

    def predict(self, model: str, resolution: Optional[str], duration: Optional[float]) -> float:
        """Predicted service seconds of a task: the learned rate × its duration."""
        key = (_model_name(model), _resolution_name(resolution))
        return self._rate(key) * _duration(duration)

    def _rate(self, key: _Key) -> float:
        """Seconds per video second of ``key``: each level blended into the next one.

        Levels, most specific first: the model's own samples at this resolution, its family's,
        the model's other resolutions, the family's, the prior. A level with ``n`` samples weighs
        ``min(n, FULL_WEIGHT_SAMPLES) / FULL_WEIGHT_SAMPLES`` against the levels after it.
        """
        if key in self._rates:
            return self._rates[key]
        model, res = key
        family = family_of(model)
        own = [k for k in self._keys() if k[0] == model]
        kin = [k for k in self._keys() if k[0] != model and family_of(k[0]) == family]
        levels = [
            self._level([k for k in own if k[1] == res], res),
            self._level([k for k in kin if k[1] == res], res),
            self._level([k for k in own if k[1] != res], res),
            self._level([k for k in kin if k[1] != res], res),
        ]
        rate = prior_seconds(model, res, _BASE_DURATION) / _BASE_DURATION
        for median, n in reversed(levels):
            weight = min(n, FULL_WEIGHT_SAMPLES) / FULL_WEIGHT_SAMPLES
            rate = weight * median + (1.0 - weight) * rate
        self._rates[key] = rate
        return rate

    def _level(self, keys: Iterable[_Key], res: str) -> tuple[float, int]:
        """Median rate of ``keys``' samples, scaled to ``res``, and how many there were."""
        rates = [s.rate * _factor(res) / _factor(k[1]) for k in keys for s in self._samples(k)]
        return (statistics.median(rates), len(rates)) if rates else (0.0, 0)


# ---------------------------------------------------------------------- finished tasks


def run_seconds_of(state: TaskState) -> Optional[float]:
    """How long the service ran a SUCCEEDED task (``end_time - scheduled_time``); ``None``
    otherwise (a failure's time says little about a video's), or on missing times or skew.
    Queueing is left out: it depends on the lane's load, not on the row.
    """
    if state.status is not TaskStatus.SUCCEEDED:
        return None
    if state.scheduled_time is None or state.end_time is None:
        return None
    seconds = (state.end_time - state.scheduled_time).total_seconds()
    return seconds if seconds >= 0 else None


# ---------------------------------------------------------------------- ordering


class Order(str, Enum):
    """Which row starts first within a lane: the longest predicted, or the manifest's order."""

    LONGEST = "longest"
    MANIFEST = "manifest"


def order_rows(
    items: Sequence[T],
    key_of: Callable[[T], tuple[str, Optional[str], Optional[float]]],
    history: Optional[RunTimeHistory],
    order: Union[Order, str] = Order.LONGEST,
) -> list[T]:
    """``items`` in the order to start them: longest predicted first, or as given.

    ``key_of(item)`` gives (model, resolution, duration). Ties keep their input order, so
    the result is deterministic; no history means the prior alone.
    """
    if Order(order) is Order.MANIFEST:
        return list(items)
    hist = history if history is not None else RunTimeHistory()
    seconds = [hist.predict(*key_of(item)) for item in items]
    ranked = sorted(range(len(items)), key=lambda i: -seconds[i])
    return [items[i] for i in ranked]
