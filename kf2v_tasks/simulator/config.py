"""Configuration of the simulator: service behaviour, run times and rendering."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal, Optional

from kf2v_tasks.simulator.faults import FaultConfig

RuntimeKind = Literal["uniform", "fixed", "lognormal"]

#: Run-time factor per resolution (the simulator's own choice: reference §16 only says
#: bigger videos take longer). With ``duration / 5`` it scales each drawn run time, so a
#: 5-s 720P task runs exactly the drawn time.
RESOLUTION_RUNTIME_FACTOR: dict[str, float] = {"480P": 0.6, "720P": 1.0, "1080P": 1.6}

#: Limits of a model the models table has no figure for: (running at once, creates/s).
DEFAULT_MODEL_LIMITS: tuple[int, float] = (2, 2.0)


@dataclass(frozen=True)
class RuntimeDistribution:
    """How long a task stays RUNNING, in service seconds.

    ``uniform`` draws from ``[low, high]``; ``fixed`` always takes ``low``; ``lognormal``
    treats ``low``/``high`` as the 5th/95th percentiles and clamps to ``[low/2, 2*high]``.

    Example:
        ```python
        from kf2v_tasks.simulator import RuntimeDistribution
        RuntimeDistribution(kind="fixed", low=30.0)
        ```
    """

    kind: RuntimeKind = "uniform"
    low: float = 60.0
    high: float = 300.0

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "fixed", "lognormal"):
            raise ValueError(f"unknown runtime kind {self.kind!r}")
        if self.low < 0 or (self.kind != "fixed" and self.high < self.low):
            raise ValueError("runtime needs 0 <= low <= high")

    def draw(self, rng: random.Random) -> float:
        """One run time in service seconds."""
        if self.kind == "fixed":
            return self.low
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high)
        lo, hi = max(self.low, 1e-3), max(self.high, 1e-3)
        mu = (math.log(lo) + math.log(hi)) / 2
        sigma = max((math.log(hi) - math.log(lo)) / (2 * 1.645), 1e-9)
        return min(max(rng.lognormvariate(mu, sigma), lo / 2), hi * 2)

    @classmethod
    def parse(cls, spec: str) -> RuntimeDistribution:
        """Parse ``"LOW:HIGH"`` (uniform) or ``"N"`` (fixed) as the CLI takes it."""
        if ":" in spec:
            low, high = spec.split(":", 1)
            return cls(kind="uniform", low=float(low), high=float(high))
        return cls(kind="fixed", low=float(spec), high=float(spec))


@dataclass
class SimulatorConfig:
    """Everything that shapes the simulated service.

    All durations are *service* seconds; ``speed`` compresses them (service seconds
    per real second), so ``speed=600`` turns a 5-minute run into half a second.

    Example:
        ```python
        from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig
        cfg = SimulatorConfig(speed=600, render="tiny",
                              runtime=RuntimeDistribution(kind="fixed", low=60))
        ```
    """

    speed: float = 1.0
    #: Keep rate limits per real second even when ``speed`` compresses everything else.
    rate_limits_real_time: bool = False
    #: ``None`` accepts any non-empty Bearer key (each key is its own account).
    api_key: Optional[str] = None
    #: Creates per second per (account, model); ``None``: each model's own figure from the
    #: models table (2.0 when it has none). A number applies to every model.
    submits_per_second: Optional[float] = None
    #: Task queries (GET, list) per second per account, whatever the model.
    queries_per_second: float = 20.0
    #: Tasks of one model an account runs at once; ``None``: the model's own figure from
    #: the models table (2 when it has none). A number applies to every model.
    max_concurrent: Optional[int] = None
    #: Model name -> (running at once, creates/s); wins over the two settings above.
    #: A name of the models table also covers its dated variants (each still its own lane).
    model_limits: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: Scale each drawn run time by ``duration / 5`` and the resolution's factor
    #: (:data:`RESOLUTION_RUNTIME_FACTOR`); a benchmark may want raw draws.
    runtime_scaling: bool = True
    #: ``"queue"``: extra tasks wait PENDING; ``"reject"``: 429 ``Throttling`` on create.
    concurrency_mode: Literal["queue", "reject"] = "queue"
    task_ttl: float = 86400.0
    url_ttl: float = 86400.0
    upload_ttl: float = 172800.0
    policy_ttl: float = 300.0
    runtime: RuntimeDistribution = field(default_factory=RuntimeDistribution)
    render: Literal["full", "tiny"] = "full"
    fps: int = 30
    video_seconds: int = 5
    #: Serve exactly this many seeded pseudo-random bytes instead of a rendered video.
    video_bytes: Optional[int] = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    seed: int = 0
    allow_remote_fetch: bool = False
    min_image_side: int = 240
    max_image_side: int = 8000
    max_image_bytes: int = 10 * 1024 * 1024
    host: str = "127.0.0.1"
    #: 0 picks a free port.
    port: int = 0

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError("speed must be > 0")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        if self.submits_per_second is not None and self.submits_per_second <= 0:
            raise ValueError("submits_per_second must be > 0")
        for model, (running, creates) in self.model_limits.items():
            if running < 1 or creates <= 0:
                raise ValueError(f"model_limits[{model!r}] needs running >= 1 and creates/s > 0")
        if self.concurrency_mode not in ("queue", "reject"):
            raise ValueError("concurrency_mode is 'queue' or 'reject'")
        if self.render not in ("full", "tiny"):
            raise ValueError("render is 'full' or 'tiny'")

    def real(self, service_seconds: float) -> float:
        """Real seconds that ``service_seconds`` take at this speed."""
        return service_seconds / self.speed

    def runtime_factor(self, duration: int, resolution: str) -> float:
        """How much longer than the drawn run time a task of this size runs."""
        if not self.runtime_scaling:
            return 1.0
        return (duration / 5) * RESOLUTION_RUNTIME_FACTOR.get(resolution, 1.0)

    @property
    def rate_scale(self) -> float:
        """Factor from service-second rates to real-second rates."""
        return 1.0 if self.rate_limits_real_time else self.speed
