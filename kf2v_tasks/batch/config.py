"""What a batch is configured with: the lanes' quota, polling, and the config every row shares.

:class:`ConcurrencySettings` and :class:`PollingSettings` are flow parameters (the Prefect
UI renders them as forms). :class:`RowConfig` is the small frozen bundle the row steps and
the reporters receive instead of the runner, so they depend on data, not on the engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kf2v_tasks.dashscope.limits import LaneQuota, table_quota
from kf2v_tasks.dashscope.polling import DEFAULT_DEADLINE, DEFAULT_QUEUE_DEADLINE, PollSchedule
from kf2v_tasks.generation.ledger import Ledger
from kf2v_tasks.generation.pricing import PriceTable
from kf2v_tasks.generation.submit import AmbiguousPolicy
from kf2v_tasks.lanes.names import DEFAULT_LIMIT_PREFIX, DEFAULT_QUEUE_AHEAD
from kf2v_tasks.settings_env import check_lane_specs, parse_lane_spec


class ConcurrencySettings(BaseModel):
    """The account's quota as this run keeps to it: a lane per model.

    Each model runs in its own lane (reference §16: kf2v 2 tasks and 2 creates/s,
    wan2.7-i2v 5 and 5), sized from the models table unless set here.
    """

    # The UI shows the schema's description: one plain line, not this docstring's example.
    model_config = ConfigDict(
        json_schema_extra={"description": "The account's quota, a lane per model."}
    )

    max_in_flight: Optional[int] = Field(
        default=None,
        ge=1,
        le=1024,
        description=(
            "Running tasks of every model's lane (empty: each model's own quota from the "
            "models table: kf2v 2, wan2.7-i2v 5)."
        ),
    )
    lanes: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'Per-model quota for accounts with raised limits: {"wan2.7-i2v": "8:5"} is 8 '
            "running tasks and 5 creates/s (RUNNING[:CREATES])."
        ),
    )
    queue_ahead: int = Field(
        default=DEFAULT_QUEUE_AHEAD,
        ge=0,
        le=64,
        description=(
            "Tasks kept waiting (PENDING) at the service beyond each lane's running ones, so "
            "the next one starts the moment a running one ends; 0 turns look-ahead off. "
            "Cancelled (free) if the run stops early."
        ),
    )
    submits_per_second: Optional[float] = Field(
        default=None,
        gt=0,
        description="Creates per second of every lane (empty: each model's own, 2 or 5).",
    )
    queries_per_second: float = Field(
        default=20.0, gt=0, description="Task queries per second (the service default is 20)."
    )
    global_limit: Optional[str] = Field(
        default=DEFAULT_LIMIT_PREFIX,
        description=(
            "Prefix of each lane's Prefect global concurrency limit (prefix-account-model), "
            "shared by every run, worker and pipeline on the same Prefect server (created "
            "when missing); empty: this run limits itself alone."
        ),
    )
    validate_concurrency: int = Field(
        default=8, ge=1, le=256, description="Frame pairs validated at the same time."
    )

    _lane_specs = field_validator("lanes")(lambda cls, value: check_lane_specs(value))

    def quotas(self, models: Iterable[str]) -> dict[str, LaneQuota]:
        """Each of ``models``' lane as this run sets it (``lanes`` over ``max_in_flight``)."""
        out = {}
        for model in models:
            table, _ = table_quota(model)
            if model in self.lanes:
                running, creates = parse_lane_spec(self.lanes[model], model)
            else:
                running, creates = self.max_in_flight or table.running, None
            out[model] = LaneQuota(
                running, creates or self.submits_per_second or table.creates_per_second
            )
        return out


class PollingSettings(BaseModel):
    """How long to wait for each task."""

    model_config = ConfigDict(json_schema_extra={"description": "How long to wait for each task."})

    deadline_seconds: float = Field(
        default=DEFAULT_DEADLINE, gt=0, description="Give up waiting on a task after this."
    )
    queue_deadline_seconds: float = Field(
        default=DEFAULT_QUEUE_DEADLINE,
        gt=0,
        description="Cancel a task still PENDING after this (never billed).",
    )
    schedule: PollSchedule = Field(
        default_factory=PollSchedule, description="Polling intervals (service seconds)."
    )


def normalize_output(output: str) -> str:
    """The output root as the batch uses it: no trailing slash on URLs."""
    return output.rstrip("/") if "://" in output else output


@dataclass(frozen=True)
class RowConfig:
    """Everything a row step or a reporter needs to know about its run, and nothing more.

    ``storage_options`` may hold storage credentials resolved from a block: they are left
    out of ``repr`` (and so out of logs and tracebacks), as is the ledger, which holds them.
    """

    output: str
    manifest_url: str = ""
    ambiguous_policy: AmbiguousPolicy = AmbiguousPolicy.RETRY_ONCE
    polling: PollingSettings = field(default_factory=PollingSettings)
    prices: Optional[PriceTable] = None  # for each video's cost in its sidecar and event
    storage_options: Optional[dict[str, Any]] = field(default=None, repr=False)
    ledger: Ledger = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.ledger is None:  # one ledger per run, on the output root
            object.__setattr__(
                self, "ledger", Ledger(self.output, storage_options=self.storage_options)
            )

    @classmethod
    def build(
        cls,
        output: str,
        *,
        manifest_url: str = "",
        ambiguous_policy: AmbiguousPolicy = AmbiguousPolicy.RETRY_ONCE,
        polling: Optional[PollingSettings] = None,
        prices: Optional[PriceTable] = None,
        storage_options: Optional[dict[str, Any]] = None,
    ) -> RowConfig:
        """A config for ``output`` (normalised), with its ledger."""
        return cls(
            output=normalize_output(output),
            manifest_url=manifest_url,
            ambiguous_policy=AmbiguousPolicy(ambiguous_policy),
            polling=polling or PollingSettings(),
            prices=prices,
            storage_options=storage_options,
        )
