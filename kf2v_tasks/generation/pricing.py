"""What a batch will cost, and a budget that stops submitting before it overspends.

Every model is billed per generated second of video (kf2v: always 5 s; wan2.7-i2v: the
asked duration), on success only: failed tasks are free (reference §9). The prices come
from the models table (:mod:`kf2v_tasks.dashscope.catalog`, which a models file can patch);
they are partly documented and partly assumed — see :data:`DEFAULT_NOTES` — so a run
that matters should pass its own table.

Example:
    ```python
    from kf2v_tasks.dashscope.models import GenerationOptions
    from kf2v_tasks.generation.pricing import Budget, PriceTable, estimate

    table = PriceTable.from_value({"wan2.2-kf2v-flash": {"720P": 0.25}})  # patch one price
    est = estimate([GenerationOptions(), GenerationOptions(resolution="480P")], table)
    assert est.total == 1.75  # 5 s x 0.25 + 5 s x 0.10

    budget = Budget(max_cost=2.0)
    assert budget.try_reserve(1.25) and not budget.try_reserve(1.25)
    ```
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Protocol, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kf2v_tasks.dashscope.catalog import (
    ASSUMED_CNY_PER_USD,
    BUILTIN_MODELS,
    ModelCatalog,
    active_catalog,
)
from kf2v_tasks.dashscope.models import (
    VIDEO_DURATION_SECONDS,
    GenerationOptions,
    Kf2vModel,
    Resolution,
)
from kf2v_tasks.errors import BudgetExceededError

__all__ = [
    "ASSUMED_CNY_PER_USD",
    "DEFAULT_NOTES",
    "DEFAULT_PRICES",
    "Budget",
    "CostEstimate",
    "PriceTable",
    "estimate",
    "estimate_row",
    "video_cost",
]

# Reference §9 and the models table. flash: third-party "official price" quote
# (UNCERTAIN); wan2.1 plus: documented $0.10/s (Singapore), converted at 7 CNY/USD;
# wanx2.1 plus: no published price, assumed equal to wan2.1 plus; wan2.7-i2v: assumed.
#: The built-in prices (CNY per generated second), by model and resolution.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    spec.name: dict(spec.prices) for spec in BUILTIN_MODELS
}

#: Where each default price comes from.
DEFAULT_NOTES: dict[str, str] = {spec.name: spec.price_note for spec in BUILTIN_MODELS}


def _catalog_table(catalog: ModelCatalog) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    prices = {s.name: dict(s.prices) for s in catalog.models if s.prices}
    notes = {s.name: s.price_note or f"prices: {s.source('prices').value}" for s in catalog.models}
    return prices, {m: n for m, n in notes.items() if m in prices}


_ModelLike = Union[Kf2vModel, str]
_ResolutionLike = Union[Resolution, str]


class _HasOptions(Protocol):
    """Anything that carries generation options (a manifest row, say)."""

    @property
    def options(self) -> GenerationOptions: ...


class PriceTable(BaseModel):
    """Price per generated second, by model and resolution.

    Example:
        ```python
        from kf2v_tasks.generation.pricing import PriceTable
        table = PriceTable.default()
        assert table.price("wan2.2-kf2v-flash", "1080P") == 0.48
        usd = PriceTable(currency="USD", per_second={"wan2.1-kf2v-plus": {"720P": 0.10}})
        ```
    """

    # One line for the Prefect UI form (the docstring carries an example).
    model_config = ConfigDict(
        json_schema_extra={"description": "Price per generated second, by model and resolution."}
    )

    currency: str = Field(default="CNY", description="Currency of every price in the table.")
    per_second: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="model -> resolution -> price per generated second."
    )
    notes: dict[str, str] = Field(
        default_factory=dict, description="Where prices come from (documented or assumed)."
    )

    @field_validator("per_second")
    @classmethod
    def _normalise(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for model, by_res in value.items():
            for res, price in by_res.items():
                if not math.isfinite(price) or price < 0:
                    raise ValueError(f"price for {model} at {res} must be >= 0, got {price}")
                out.setdefault(model.strip(), {})[res.strip().upper()] = float(price)
        return out

    @classmethod
    def default(cls) -> PriceTable:
        """The CNY table of the active models table (see :data:`DEFAULT_NOTES`).

        Prices a models file sets (``PREFECT_INTEGRATIONS_KF2V_MODELS_FILE``) are included.
        """
        prices, notes = _catalog_table(active_catalog())
        return cls(currency="CNY", per_second=prices, notes=notes)

    @classmethod
    def from_value(
        cls, value: Union[PriceTable, Mapping[str, Any], str, None] = None
    ) -> PriceTable:
        """Build a table from a flow parameter: a table, a dict, JSON text, or None.

        A *full* table (a mapping with ``per_second``) replaces the defaults; a *bare*
        ``{model: {resolution: price}}`` mapping patches the default (CNY) table.

        Example:
            ```python
            from kf2v_tasks.generation.pricing import PriceTable
            t = PriceTable.from_value('{"wan2.2-kf2v-flash": {"1080P": 0.5}}')
            assert t.price("wan2.2-kf2v-flash", "1080P") == 0.5
            assert t.price("wan2.2-kf2v-flash", "480P") == 0.10  # kept from the defaults
            ```
        """
        if value is None:
            return cls.default()
        if isinstance(value, PriceTable):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"price table is not valid JSON: {exc}") from None
        if not isinstance(value, Mapping):
            raise ValueError(f"price table must be a mapping, got {type(value).__name__}")
        if "per_second" in value:
            return cls.model_validate(dict(value))
        patch = cls(per_second=dict(value))  # validates and normalises
        table = cls.default()
        for model, by_res in patch.per_second.items():
            table.per_second.setdefault(model, {}).update(by_res)
            table.notes[model] = "overridden by the caller"
        return table

    def price(self, model: _ModelLike, resolution: _ResolutionLike) -> float:
        """Price per generated second of ``model`` at ``resolution``.

        A dated variant (``wan2.7-i2v-2026-04-25``) without a price of its own is priced
        as its models-table entry.

        Raises:
            ValueError: the table has no price for that combination.
        """
        m = model.value if isinstance(model, Kf2vModel) else str(model)
        r = resolution.value if isinstance(resolution, Resolution) else str(resolution).upper()
        if m not in self.per_second:
            spec = active_catalog().find(m)
            m = spec.name if spec is not None and spec.name in self.per_second else m
        try:
            return self.per_second[m][r]
        except KeyError:
            raise ValueError(
                f"no price for model {m} at resolution {r}; pass a price table"
            ) from None


def video_cost(
    model: _ModelLike,
    resolution: _ResolutionLike,
    seconds: int = VIDEO_DURATION_SECONDS,
    table: Optional[PriceTable] = None,
) -> float:
    """Cost of one kept video: ``seconds`` x the table's price per second (default table).

    Raises:
        ValueError: the table has no price for that model and resolution, or ``seconds``
            is negative.

    Example:
        ```python
        from kf2v_tasks.generation.pricing import video_cost
        assert video_cost("wan2.2-kf2v-flash", "480P", 5) == 0.5
        ```
    """
    if seconds < 0:
        raise ValueError(f"video length must be >= 0 seconds, got {seconds}")
    table = table or PriceTable.default()
    return round(seconds * table.price(model, resolution), 6)


def estimate_row(options: GenerationOptions, table: Optional[PriceTable] = None) -> float:
    """Cost of one successful generation: its duration x price per second.

    Example:
        ```python
        from kf2v_tasks.dashscope.models import GenerationOptions
        from kf2v_tasks.generation.pricing import estimate_row
        assert estimate_row(GenerationOptions(resolution="1080P")) == 2.4
        ```
    """
    seconds = options.duration or VIDEO_DURATION_SECONDS
    return video_cost(options.model, options.resolution, seconds, table)


class CostEstimate(BaseModel):
    """Expected cost of a batch if every row succeeds (failures are not billed).

    Example:
        ```python
        from kf2v_tasks.dashscope.models import GenerationOptions
        from kf2v_tasks.generation.pricing import estimate
        est = estimate([GenerationOptions(resolution="480P")] * 2)
        assert est.describe() == "2 rows, 10 s of video, about 1.00 CNY"
        ```
    """

    rows: int = Field(description="Rows counted.")
    seconds: int = Field(description="Video seconds that would be billed.")
    total: float = Field(description="Total cost, in currency.")
    currency: str
    by_model: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="model -> {rows, seconds, cost, resolutions: {res: rows}}.",
    )

    def describe(self) -> str:
        """One line for logs: ``"3 rows, 15 s of video, about 1.70 CNY"``."""
        return (
            f"{self.rows} rows, {self.seconds} s of video, about {self.total:.2f} {self.currency}"
        )


def estimate(
    rows: Sequence[Union[_HasOptions, GenerationOptions]],
    table: Optional[PriceTable] = None,
) -> CostEstimate:
    """Estimate a batch: ``rows`` are ManifestRows (anything with ``.options``) or options.

    Example:
        ```python
        from kf2v_tasks.dashscope.models import GenerationOptions
        from kf2v_tasks.generation.pricing import estimate
        est = estimate([GenerationOptions()] * 3)
        assert (est.rows, est.total, est.currency) == (3, 3.0, "CNY")
        ```
    """
    table = table or PriceTable.default()
    total = 0.0
    seconds = 0
    by_model: dict[str, dict[str, Any]] = {}
    for row in rows:
        options: GenerationOptions = row if isinstance(row, GenerationOptions) else row.options
        cost = estimate_row(options, table)
        secs = options.duration or VIDEO_DURATION_SECONDS
        total += cost
        seconds += secs
        entry = by_model.setdefault(
            options.model, {"rows": 0, "seconds": 0, "cost": 0.0, "resolutions": {}}
        )
        entry["rows"] += 1
        entry["seconds"] += secs
        entry["cost"] = round(entry["cost"] + cost, 6)
        res = entry["resolutions"]
        res[options.resolution.value] = res.get(options.resolution.value, 0) + 1
    return CostEstimate(
        rows=len(rows),
        seconds=seconds,
        total=round(total, 6),
        currency=table.currency,
        by_model=by_model,
    )


class Budget:
    """A spending cap shared by the tasks of one run.

    Reserve a row's cost before submitting it; :meth:`commit` it when the task succeeds
    (billed) or :meth:`release` it when the task fails (failed tasks are free). A row
    that would take ``spent + reserved`` over ``max_cost`` is refused. ``max_cost=None``
    never refuses but still tracks spending. The lock makes it safe from threads and,
    as the critical sections never await, from tasks of one event loop.

    Example:
        ```python
        from kf2v_tasks.generation.pricing import Budget
        b = Budget(max_cost=2.0)
        assert b.try_reserve(1.0) and b.try_reserve(1.0) and not b.try_reserve(1.0)
        b.release(1.0)              # that task failed: not billed
        b.commit(1.0)               # that one succeeded
        assert (b.spent, b.reserved) == (1.0, 0.0) and b.try_reserve(1.0)
        ```
    """

    #: Relative slack so that 10 x 0.2 fits a 2.0 budget despite float rounding.
    _EPSILON = 1e-9

    def __init__(self, max_cost: Optional[float] = None) -> None:
        if max_cost is not None and (not math.isfinite(max_cost) or max_cost < 0):
            raise ValueError(f"max_cost must be a number >= 0 or None, got {max_cost}")
        self.max_cost = None if max_cost is None else float(max_cost)
        self._spent = 0.0
        self._reserved = 0.0
        self._refused = 0
        self._lock = threading.Lock()

    @property
    def spent(self) -> float:
        """Cost of committed (succeeded, billed) rows."""
        return round(self._spent, 9)

    @property
    def reserved(self) -> float:
        """Cost of rows submitted and not yet finished."""
        return round(self._reserved, 9)

    @property
    def refused(self) -> int:
        """How many reservations were refused."""
        return self._refused

    @property
    def remaining(self) -> Optional[float]:
        """What can still be reserved (None: unlimited)."""
        if self.max_cost is None:
            return None
        with self._lock:
            return max(0.0, round(self.max_cost - self._spent - self._reserved, 9))

    def try_reserve(self, amount: float) -> bool:
        """Reserve ``amount`` if it fits under ``max_cost``; False (and nothing held) if not."""
        _check_amount(amount)
        with self._lock:
            if self.max_cost is not None:
                after = self._spent + self._reserved + amount
                if after > self.max_cost + self._EPSILON * max(1.0, self.max_cost):
                    self._refused += 1
                    return False
            self._reserved += amount
            return True

    def reserve(self, amount: float) -> None:
        """Like :meth:`try_reserve`, but raise :class:`BudgetExceededError` when it does not fit."""
        if not self.try_reserve(amount):
            raise BudgetExceededError(
                f"a row costing {amount:g} would exceed max_cost {self.max_cost:g} "
                f"(spent {self.spent:g}, reserved {self.reserved:g})"
            )

    def commit(self, amount: float) -> None:
        """A reserved row succeeded and is billed: move ``amount`` from reserved to spent."""
        _check_amount(amount)
        with self._lock:
            self._reserved = max(0.0, self._reserved - amount)
            self._spent += amount

    def release(self, amount: float) -> None:
        """A reserved row failed or was never submitted: it is not billed, free its reservation."""
        _check_amount(amount)
        with self._lock:
            self._reserved = max(0.0, self._reserved - amount)

    def __repr__(self) -> str:
        return f"Budget(max_cost={self.max_cost}, spent={self.spent}, reserved={self.reserved})"


def _check_amount(amount: float) -> None:
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"amount must be a finite number >= 0, got {amount}")
