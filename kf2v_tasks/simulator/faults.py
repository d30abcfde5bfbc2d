"""Seeded fault injection: which fault (if any) hits a request, and counting them."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

#: Generic faults any HTTP endpoint can suffer.
_HTTP_KINDS = ("throttle", "error500", "error503", "reset", "slow")

#: Fault kinds each endpoint accepts (``task`` is the outcome of a task, not a request).
ENDPOINT_KINDS: dict[str, tuple[str, ...]] = {
    "create": (*_HTTP_KINDS, "ambiguous"),
    "query": _HTTP_KINDS,
    "cancel": _HTTP_KINDS,
    "list": _HTTP_KINDS,
    "policy": _HTTP_KINDS,
    "upload": _HTTP_KINDS,
    "download": (*_HTTP_KINDS, "cut", "expired"),
    "task": ("fail_moderation", "fail_internal"),
}


@dataclass
class FaultConfig:
    """Fault probabilities per ``"endpoint.kind"`` plus the delay of ``slow``.

    Example:
        ```python
        from kf2v_tasks.simulator import FaultConfig
        FaultConfig({"query.error500": 0.05, "download.cut": 0.1})
        FaultConfig.parse("create.ambiguous=0.02,query.slow=0.1,slow_seconds=0.5")
        ```
    """

    rates: dict[str, float] = field(default_factory=dict)
    slow_seconds: float = 2.0

    def __post_init__(self) -> None:
        for name, p in self.rates.items():
            endpoint, _, kind = name.partition(".")
            if kind not in ENDPOINT_KINDS.get(endpoint, ()):
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(all_fault_names())}")
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"fault probability {name}={p} is not within [0, 1]")
        if self.slow_seconds < 0:
            raise ValueError("slow_seconds must be >= 0")

    def rate(self, endpoint: str, kind: str) -> float:
        """Probability of ``kind`` on ``endpoint`` (0 when not configured)."""
        return float(self.rates.get(f"{endpoint}.{kind}", 0.0))

    @classmethod
    def parse(cls, spec: str) -> FaultConfig:
        """Parse ``"create.throttle=0.05,query.reset=0.03,slow_seconds=1"``."""
        rates: dict[str, float] = {}
        slow = 2.0
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"fault {item!r} needs '=probability'")
            if name.strip() == "slow_seconds":
                slow = float(value)
            else:
                rates[name.strip()] = float(value)
        return cls(rates=rates, slow_seconds=slow)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as ``POST /_sim/faults`` takes it."""
        return {"rates": dict(self.rates), "slow_seconds": self.slow_seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultConfig:
        """Accept ``{"rates": {...}, "slow_seconds": s}`` or a flat ``{"query.reset": p}``."""
        if "rates" in data:
            return cls(rates=dict(data["rates"]), slow_seconds=float(data.get("slow_seconds", 2.0)))
        flat = dict(data)
        slow = float(flat.pop("slow_seconds", 2.0))
        return cls(rates={k: float(v) for k, v in flat.items()}, slow_seconds=slow)


def all_fault_names() -> list[str]:
    """Every ``endpoint.kind`` the simulator can inject."""
    return [f"{e}.{k}" for e, kinds in ENDPOINT_KINDS.items() for k in kinds]


@dataclass
class Injection:
    """The faults drawn for one request: an optional delay and at most one failure."""

    delay: float = 0.0
    kind: Optional[str] = None


class FaultInjector:
    """Draws faults from one seeded RNG per endpoint, so a run replays exactly."""

    def __init__(self, config: FaultConfig, seed: int) -> None:
        self.config = config
        self._seed = seed
        self._rngs: dict[str, random.Random] = {}
        self.counts: Counter[str] = Counter()

    def _rng(self, endpoint: str) -> random.Random:
        if endpoint not in self._rngs:
            self._rngs[endpoint] = random.Random(f"{self._seed}:faults:{endpoint}")
        return self._rngs[endpoint]

    def draw(self, endpoint: str) -> Injection:
        """Decide this request's faults; ``slow`` combines with any other kind."""
        rng = self._rng(endpoint)
        # Two draws per request, always, so one fault's rate never shifts another's sequence.
        u_slow, u = rng.random(), rng.random()
        result = Injection()
        if u_slow < self.config.rate(endpoint, "slow"):
            result.delay = self.config.slow_seconds
            self.counts[f"{endpoint}.slow"] += 1
        acc = 0.0
        for kind in ENDPOINT_KINDS[endpoint]:
            if kind == "slow":
                continue
            acc += self.config.rate(endpoint, kind)
            if u < acc:
                result.kind = kind
                self.counts[f"{endpoint}.{kind}"] += 1
                break
        return result
