"""What a batch will cost, by region (:mod:`~kf2v_tasks.generation.budget` keeps max_cost).

Every model is billed per generated second of video (kf2v: always 5 s; wan2.7-i2v: the
asked duration), on success only: failed tasks are free. Prices depend on the region
(reference §16): they come from the models table (:mod:`kf2v_tasks.dashscope.catalog`,
which a models file can patch), for the region of the credentials in use. A model the
price list does not list in that region has no price there: its rows are counted as
"price unknown", and ``max_cost`` does not run them (it cannot be kept without a price).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Protocol, Union

from pydantic import BaseModel, Field, field_validator

from kf2v_tasks.dashscope.catalog import MODELS_FILE_ENV, active_catalog
from kf2v_tasks.dashscope.models import (
    VIDEO_DURATION_SECONDS,
    GenerationOptions,
    Kf2vModel,
    Resolution,
)
from kf2v_tasks.settings_env import may_be_set

__all__ = [
    "CostEstimate",
    "PriceTable",
    "configured_region",
    "estimate",
    "estimate_row",
    "region_warning",
    "unknown_price",
    "video_cost",
]

_ModelLike = Union[Kf2vModel, str]
_ResolutionLike = Union[Resolution, str]


class _HasOptions(Protocol):
    """Anything that carries generation options (a manifest row, say)."""

    @property
    def options(self) -> GenerationOptions: ...


def configured_region() -> str:
    """The region of a key from the environment (``KF2V_REGION``; default singapore)."""
    for name in ("PREFECT_INTEGRATIONS_KF2V_REGION", "KF2V_REGION"):  # read first, no Prefect
        value = os.environ.get(name, "").strip().lower()
        if value in ("beijing", "singapore"):
            return value
    if not may_be_set("region", "kf2v_region"):  # no Prefect import for the default
        return "singapore"
    from kf2v_tasks.settings import get_settings

    try:
        return get_settings().region
    except Exception:  # an unreadable config: DashScopeCredentials' own default region
        return "singapore"


def unknown_price(model: str, resolution: str, region: Optional[str]) -> str:
    """Why a row has no price, and how to give it one (for messages)."""
    where = f" in {region} (Model Studio's price list has none)" if region else " in this table"
    key = region.split("+")[0] if region else "singapore"
    return (
        f"no price for model {model} at resolution {resolution}{where}; "
        f'give one in a models file ({MODELS_FILE_ENV}: name = "{model}", '
        f'prices = {{ {key} = {{ "{resolution}" = 0.2 }} }}) or the price_table parameter'
    )


def region_warning(models: Iterable[str], region: Optional[str]) -> Optional[str]:
    """One line naming the models the docs list only for another region; None if none.

    Not a refusal: the service may still take them (the docs disagree for kf2v-flash).
    """
    if not region:
        return None
    regions = region.split("+")
    found = []
    for model in dict.fromkeys(models):
        spec = active_catalog().find(model)
        if spec is not None and spec.regions and not set(regions) <= set(spec.regions):
            found.append(f"{model} is listed for {'/'.join(spec.regions)} only")
    if not found:
        return None
    return (
        f"{'; '.join(found)}, and this run is in {region}: the service may refuse "
        f"{'it' if len(found) == 1 else 'them'} (Model Studio's pricing and rate-limit pages)"
    )


class PriceTable(BaseModel):
    """Price per generated second, by model and resolution, in one region.

    Example:
        ```python
        from kf2v_tasks.generation.pricing import PriceTable
        assert PriceTable.default("beijing").price("wan2.2-kf2v-flash", "1080P") == 0.48
        assert PriceTable.default("singapore").find("wan2.2-kf2v-flash", "1080P") is None
        usd = PriceTable(currency="USD", per_second={"wan2.1-kf2v-plus": {"720P": 0.10}})
        ```
    """

    currency: str = Field(default="CNY", description="Currency of every price in the table.")
    per_second: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="model -> resolution -> price per generated second."
    )
    region: Optional[str] = Field(
        default=None,
        description="Where the prices hold (beijing+singapore: the dearest of both); "
        "empty: a table of your own.",
    )
    notes: dict[str, str] = Field(
        default_factory=dict, description="Where prices come from (documented or yours)."
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
    def default(cls, region: Union[str, Sequence[str], None] = None) -> PriceTable:
        """The CNY table of the active models table in ``region`` (default: :func:`configured_region`).

        Prices a models file sets (``PREFECT_INTEGRATIONS_KF2V_MODELS_FILE``) are included.
        Several regions (an account pool across regions): each price is the dearest of
        them, and one unknown in any of them is unknown.
        """
        regions = [region] if isinstance(region, str) else list(region or [configured_region()])
        per_second: dict[str, dict[str, float]] = {}
        notes: dict[str, str] = {}
        for spec in active_catalog().models:
            tiers = dict.fromkeys(r for by_res in spec.prices.values() for r in by_res)
            for res in tiers:
                found = [spec.price(r, res) for r in regions]
                if None not in found:
                    per_second.setdefault(spec.name, {})[res] = max(found)  # type: ignore[type-var]
            if spec.name in per_second:
                notes[spec.name] = spec.price_note or f"prices: {spec.source('prices').value}"
        return cls(per_second=per_second, region="+".join(regions), notes=notes)

    @classmethod
    def from_value(
        cls,
        value: Union[PriceTable, Mapping[str, Any], str, None] = None,
        region: Union[str, Sequence[str], None] = None,
    ) -> PriceTable:
        """Build a table from a flow parameter: a table, a dict, JSON text, or None.

        A *full* table (a mapping with ``per_second``) is used as given; a *bare*
        ``{model: {resolution: price}}`` mapping patches the default table of ``region``.

        Example:
            ```python
            from kf2v_tasks.generation.pricing import PriceTable
            t = PriceTable.from_value('{"wan2.2-kf2v-flash": {"1080P": 0.5}}', "beijing")
            assert t.price("wan2.2-kf2v-flash", "1080P") == 0.5
            assert t.price("wan2.2-kf2v-flash", "480P") == 0.10  # kept from the defaults
            ```
        """
        if value is None:
            return cls.default(region)
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
        table = cls.default(region)
        for model, by_res in patch.per_second.items():
            table.per_second.setdefault(model, {}).update(by_res)
            table.notes[model] = "overridden by the caller"
        return table

    def find(self, model: _ModelLike, resolution: _ResolutionLike) -> Optional[float]:
        """Price per generated second of ``model`` at ``resolution``; ``None``: unknown.

        A dated variant (``wan2.7-i2v-2026-04-25``) without a price of its own is priced
        as its models-table entry.
        """
        m = model.value if isinstance(model, Kf2vModel) else str(model)
        r = resolution.value if isinstance(resolution, Resolution) else str(resolution).upper()
        if m not in self.per_second:
            spec = active_catalog().find(m)
            m = spec.name if spec is not None and spec.name in self.per_second else m
        return self.per_second.get(m, {}).get(r)

    def price(self, model: _ModelLike, resolution: _ResolutionLike) -> float:
        """Like :meth:`find`, but an unknown price raises.

        Raises:
            ValueError: the table has no price for that combination (the message says
                how to give one).
        """
        found = self.find(model, resolution)
        if found is None:
            m = model.value if isinstance(model, Kf2vModel) else str(model)
            r = resolution.value if isinstance(resolution, Resolution) else str(resolution)
            raise ValueError(unknown_price(m, r.upper(), self.region))
        return found


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
    """
    if seconds < 0:
        raise ValueError(f"video length must be >= 0 seconds, got {seconds}")
    table = table or PriceTable.default()
    return round(seconds * table.price(model, resolution), 6)


def estimate_row(options: GenerationOptions, table: Optional[PriceTable] = None) -> Optional[float]:
    """Cost of one successful generation: its duration x price per second; ``None``: unknown."""
    table = table or PriceTable.default()
    price = table.find(options.model, options.resolution)
    seconds = options.duration or VIDEO_DURATION_SECONDS
    return None if price is None else round(seconds * price, 6)


class CostEstimate(BaseModel):
    """Expected cost of what a run will make, if every row succeeds (failures are not billed).

    Rows whose price is unknown in the region are counted apart (``unpriced_rows``), as
    are videos an earlier run already kept (``kept_rows``, at what they cost then).
    """

    rows: int = Field(description="Rows counted.")
    seconds: int = Field(description="Video seconds that would be billed.")
    total: float = Field(description="Total cost of the priced rows, in currency.")
    currency: str
    region: Optional[str] = Field(default=None, description="Region of the prices.")
    by_model: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="model -> {rows, seconds, cost, resolutions: {res: rows}}.",
    )
    unpriced_rows: int = Field(default=0, description="Rows with no price in the region.")
    unpriced_seconds: int = Field(default=0, description="Their video seconds.")
    unpriced_models: list[str] = Field(default_factory=list)
    kept_rows: int = Field(default=0, description="Videos already kept: not made again.")
    kept_cost: float = Field(default=0.0, description="What the kept videos cost when made.")
    kept_unpriced: int = Field(default=0, description="Kept videos whose cost is unknown.")
    warning: Optional[str] = Field(
        default=None, description="Models the docs list only for another region."
    )

    def describe(self) -> str:
        """One line for logs: ``"3 rows, 15 s of video, about 1.70 CNY"`` (and the notes)."""
        return (
            f"{_rows(self.rows)}, {self.seconds} s of video, about {self.total:.2f} "
            f"{self.currency}{self.notes()}"
        )

    def notes(self) -> str:
        """What follows the total: the region, unpriced rows, kept videos (not counted)."""
        text = f" at {self.region} prices" if self.region else ""
        if self.unpriced_rows:
            text += (
                f"; price unknown for {_rows(self.unpriced_rows)} ({self.unpriced_seconds} s): "
                f"{', '.join(self.unpriced_models)} in {self.region or 'this table'}, not counted"
            )
        if self.kept_rows:
            made = f"made for {self.kept_cost:.2f} {self.currency}"
            if self.kept_unpriced:
                n = self.kept_unpriced
                made = (
                    "made at an unknown price"
                    if n == self.kept_rows
                    else f"{made}; {n} at an unknown price"
                )
            text += f"; {_rows(self.kept_rows)} already kept ({made}), not made again"
        return text


def _rows(n: int) -> str:
    return f"{n} row{'' if n == 1 else 's'}"


def estimate(
    rows: Sequence[Union[_HasOptions, GenerationOptions]],
    table: Optional[PriceTable] = None,
    *,
    region: Optional[str] = None,
    kept: Sequence[Optional[float]] = (),
) -> CostEstimate:
    """Estimate a batch: ``rows`` are ManifestRows (anything with ``.options``) or options.

    ``table`` defaults to :meth:`PriceTable.default` of ``region``; ``kept`` are the costs
    (when made) of videos already kept, shown apart and not counted.
    """
    table = table or PriceTable.default(region)
    total = 0.0
    seconds = unpriced_seconds = 0
    by_model: dict[str, dict[str, Any]] = {}
    unpriced: dict[str, int] = {}
    for row in rows:
        options: GenerationOptions = row if isinstance(row, GenerationOptions) else row.options
        cost = estimate_row(options, table)
        secs = options.duration or VIDEO_DURATION_SECONDS
        if cost is None:
            unpriced[options.model] = unpriced.get(options.model, 0) + 1
            unpriced_seconds += secs
            continue
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
    models = [(r if isinstance(r, GenerationOptions) else r.options).model for r in rows]
    return CostEstimate(
        rows=len(rows) - sum(unpriced.values()),
        seconds=seconds,
        total=round(total, 6),
        currency=table.currency,
        region=table.region,
        by_model=by_model,
        unpriced_rows=sum(unpriced.values()),
        unpriced_seconds=unpriced_seconds,
        unpriced_models=list(unpriced),
        kept_rows=len(kept),
        kept_cost=round(sum(c for c in kept if c is not None), 6),
        kept_unpriced=sum(c is None for c in kept),
        warning=region_warning(models, table.region),
    )
