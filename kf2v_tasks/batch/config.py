"""What a batch is configured with: the account quota, polling, and the config every row shares.

:class:`ConcurrencySettings` and :class:`PollingSettings` are flow parameters (the Prefect
UI renders them as forms). :class:`RowConfig` is the small frozen bundle the row steps and
the reporters receive instead of the runner, so they depend on data, not on the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from kf2v_tasks.dashscope.polling import DEFAULT_DEADLINE, DEFAULT_QUEUE_DEADLINE, PollSchedule
from kf2v_tasks.generation.ledger import Ledger
from kf2v_tasks.generation.pricing import PriceTable
from kf2v_tasks.generation.submit import AmbiguousPolicy

#: Name of the Prefect global concurrency limit that stands for the account's task quota.
DEFAULT_GLOBAL_LIMIT = "kf2v-dashscope-tasks"
#: Tasks queued at the service beyond the running ones (see ConcurrencySettings.queue_ahead).
DEFAULT_QUEUE_AHEAD = 1


class ConcurrencySettings(BaseModel):
    """The account quota this run must respect.

    Example:
        ```python
        from kf2v_tasks.batch.config import ConcurrencySettings
        quota = ConcurrencySettings(max_in_flight=4, submits_per_second=2.0)
        assert quota.queries_per_second == 20.0 and quota.at_service == 4 + quota.queue_ahead
        ```
    """

    # The UI shows the schema's description: one plain line, not this docstring's example.
    model_config = ConfigDict(
        json_schema_extra={"description": "The account quota this run must respect."}
    )

    max_in_flight: int = Field(
        default=2,
        ge=1,
        le=1024,
        description="Remote tasks submitted and not yet finished (the service default is 2).",
    )
    queue_ahead: int = Field(
        default=DEFAULT_QUEUE_AHEAD,
        ge=0,
        le=64,
        description=(
            "Tasks kept waiting (PENDING) at the service beyond max_in_flight, so the next "
            "one starts the moment a running one ends; 0 turns look-ahead off. Cancelled "
            "(free) if the run stops early."
        ),
    )
    submits_per_second: float = Field(
        default=2.0, gt=0, description="Create calls per second (the service default is 2)."
    )
    queries_per_second: float = Field(
        default=20.0, gt=0, description="Task queries per second (the service default is 20)."
    )
    global_limit: Optional[str] = Field(
        default=DEFAULT_GLOBAL_LIMIT,
        description=(
            "Prefect global concurrency limit shared by every run and worker on the same "
            "Prefect server; created with max_in_flight + queue_ahead when missing."
        ),
    )
    validate_concurrency: int = Field(
        default=8, ge=1, le=256, description="Frame pairs validated at the same time."
    )

    @property
    def at_service(self) -> int:
        """Tasks this run keeps at the service: running plus queued ahead."""
        return self.max_in_flight + self.queue_ahead


class PollingSettings(BaseModel):
    """How long to wait for each task.

    Example:
        ```python
        from kf2v_tasks.batch.config import PollingSettings
        polling = PollingSettings(deadline_seconds=3600)
        assert polling.queue_deadline_seconds > 0
        ```
    """

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
    """The output root as the batch uses it: no trailing slash on URLs.

    Example:
        ```python
        from kf2v_tasks.batch.config import normalize_output
        assert normalize_output("s3://bucket/out/") == "s3://bucket/out"
        assert normalize_output("out/") == "out/"
        ```
    """
    return output.rstrip("/") if "://" in output else output


@dataclass(frozen=True)
class RowConfig:
    """Everything a row step or a reporter needs to know about its run, and nothing more.

    ``storage_options`` may hold storage credentials resolved from a block: they are left
    out of ``repr`` (and so out of logs and tracebacks), as is the ledger, which holds them.

    Example:
        ```python
        from kf2v_tasks.batch.config import RowConfig
        config = RowConfig.build("out/", manifest_url="manifest.csv")
        assert config.ledger.root == "out/" and "storage_options" not in repr(config)
        ```
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
        """A config for ``output`` (normalised), with its ledger.

        Example:
            ```python
            from kf2v_tasks.batch.config import RowConfig
            config = RowConfig.build("s3://bucket/out/", storage_options={"anon": False})
            assert config.output == "s3://bucket/out"
            ```
        """
        return cls(
            output=normalize_output(output),
            manifest_url=manifest_url,
            ambiguous_policy=AmbiguousPolicy(ambiguous_policy),
            polling=polling or PollingSettings(),
            prices=prices,
            storage_options=storage_options,
        )
