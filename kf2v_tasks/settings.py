"""Settings in Prefect's namespace: ``PREFECT_INTEGRATIONS_KF2V_*``, or the names users know.

Each field is read, first match wins, from an explicit keyword argument, then
``PREFECT_INTEGRATIONS_KF2V_<NAME>``, then the environment variable users of DashScope
and of this package already set (``DASHSCOPE_API_KEY``, ``DASHSCOPE_HTTP_BASE_URL``,
``DASHSCOPE_WORKSPACE_ID``, ``KF2V_REGION``, ``KF2V_TIME_SCALE``), then a ``.env`` file,
then ``prefect.toml`` / ``pyproject.toml`` (``[integrations.kf2v]`` /
``[tool.prefect.integrations.kf2v]``) and the active Prefect profile. Nothing in this
package writes these variables: a process override (the CLI's ``--time-scale``) goes
through :func:`kf2v_tasks.clock.set_time_scale`.

This is the one base module that imports Prefect (for ``PrefectBaseSettings``).
"""

from __future__ import annotations

from typing import Literal, Optional

from prefect.settings.base import PrefectBaseSettings, build_settings_config
from pydantic import AliasChoices, AliasPath, Field, SecretStr, field_validator

from kf2v_tasks.settings_env import check_lane_specs

__all__ = ["ENV_PREFIX", "Kf2vSettings", "get_settings"]

#: Prefix of this package's variables in Prefect's namespace.
ENV_PREFIX = "PREFECT_INTEGRATIONS_KF2V_"


def _aliases(name: str, *legacy: str) -> AliasChoices:
    # AliasPath(name): keyword arguments and TOML tables; then the Prefect-namespaced
    # variable; then the names users already set. Matching is case-insensitive.
    return AliasChoices(AliasPath(name), f"{ENV_PREFIX.lower()}{name}", *legacy)


class Kf2vSettings(PrefectBaseSettings):
    """Configuration of the kf2v client, read from the environment and Prefect's config.

    The API key is a ``SecretStr``: it never appears in ``repr``, ``str`` or a dump of
    the settings; unwrap it with ``.get_secret_value()`` only where a client is built.
    """

    model_config = build_settings_config(("integrations", "kf2v"))

    api_key: Optional[SecretStr] = Field(
        default=None,
        description="DashScope API key (sk-...). Also read from DASHSCOPE_API_KEY.",
        validation_alias=_aliases("api_key", "dashscope_api_key"),
    )
    base_url: Optional[str] = Field(
        default=None,
        description="Override of the API base URL (…/api/v1), e.g. a workspace endpoint or "
        "the simulator. Also read from DASHSCOPE_HTTP_BASE_URL.",
        validation_alias=_aliases("base_url", "dashscope_http_base_url"),
    )
    region: Literal["singapore", "beijing"] = Field(
        default="singapore",
        description="Model Studio region whose endpoint is used when no base URL is set. "
        "Also read from KF2V_REGION.",
        validation_alias=_aliases("region", "kf2v_region"),
    )
    workspace: Optional[str] = Field(
        default=None,
        description="Workspace id, sent as the X-DashScope-WorkSpace header. Also read from "
        "DASHSCOPE_WORKSPACE_ID.",
        validation_alias=_aliases("workspace", "dashscope_workspace_id"),
    )
    time_scale: float = Field(
        default=1.0,
        gt=0,
        description="Divide every wait by this factor (60: one service minute per real "
        "second), for rehearsals on the simulator. Also read from KF2V_TIME_SCALE.",
        validation_alias=_aliases("time_scale", "kf2v_time_scale"),
    )
    max_in_flight: Optional[int] = Field(
        default=None,
        ge=1,
        description="Running tasks of every model's lane (default: each model's own quota, "
        "from the models table: kf2v 2, wan2.7-i2v 5).",
        validation_alias=_aliases("max_in_flight"),
    )
    submits_per_second: Optional[float] = Field(
        default=None,
        gt=0,
        description="Creates per second of every model's lane (default: the table's).",
        validation_alias=_aliases("submits_per_second"),
    )
    lanes: dict[str, str] = Field(
        default_factory=dict,
        description='Per-model quota for accounts with raised limits: {"wan2.7-i2v": "8:5"} '
        "is 8 running tasks and 5 creates/s (RUNNING[:CREATES]).",
        validation_alias=_aliases("lanes"),
    )
    ledger: Optional[str] = Field(
        default=None,
        description="Where the public tasks keep their ledger when given no ledger_root "
        "(default: <PREFECT_HOME>/kf2v/ledger); an s3:// URL shares it between machines.",
        validation_alias=_aliases("ledger"),
    )
    queries_per_second: float = Field(
        default=20.0,
        gt=0,
        description="Task queries per second allowed for the account.",
        validation_alias=_aliases("queries_per_second"),
    )

    models_file: Optional[str] = Field(
        default=None,
        description="A JSON or TOML file of model entries that extends or patches the built-in "
        "models table (kf2v_tasks.dashscope.catalog): a dated variant, a new model, prices.",
        validation_alias=_aliases("models_file"),
    )

    @field_validator("region", mode="before")
    @classmethod
    def _normalise_region(cls, value: object) -> object:
        # "Singapore " from a shell is the same region; "" means "not set".
        if isinstance(value, str):
            return value.strip().lower() or "singapore"
        return value

    _lane_specs = field_validator("lanes")(lambda cls, value: check_lane_specs(value))

    @field_validator("api_key", "base_url", "workspace", "models_file", "ledger", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # An exported-but-empty variable (DASHSCOPE_API_KEY=) means "not set".
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value


def get_settings() -> Kf2vSettings:
    """Read the settings now (environment, ``.env``, Prefect config): a fresh object.

    Reading costs well under a millisecond after the first import; hot paths (the
    clock's time scale) cache what they need instead of calling this per use.
    """
    return Kf2vSettings()
