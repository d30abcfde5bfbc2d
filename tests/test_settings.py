"""Kf2vSettings: both variable names, validation, secrecy; and the clock's cached time scale."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from kf2v_tasks import clock
from kf2v_tasks.settings import ENV_PREFIX, Kf2vSettings, get_settings

from conftest import TEST_API_KEY

FIELDS = (
    "API_KEY",
    "BASE_URL",
    "REGION",
    "WORKSPACE",
    "TIME_SCALE",
    "MAX_IN_FLIGHT",
    "SUBMITS_PER_SECOND",
    "QUERIES_PER_SECOND",
    "LANES",
    "LEDGER",
    "MODELS_FILE",
)
LEGACY = {
    "api_key": "DASHSCOPE_API_KEY",
    "base_url": "DASHSCOPE_HTTP_BASE_URL",
    "region": "KF2V_REGION",
    "workspace": "DASHSCOPE_WORKSPACE_ID",
    "time_scale": "KF2V_TIME_SCALE",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[pytest.MonkeyPatch]:
    """No kf2v variable set, no ``.env`` in reach, and no clock override or cache."""
    for name in FIELDS:
        monkeypatch.delenv(f"{ENV_PREFIX}{name}", raising=False)
    for name in LEGACY.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    clock.set_time_scale(None)
    yield monkeypatch
    clock.set_time_scale(None)


def test_defaults(env: pytest.MonkeyPatch) -> None:
    s = get_settings()
    assert s.api_key is None and s.base_url is None and s.workspace is None
    assert s.region == "singapore" and s.time_scale == 1.0
    # Lane sizes come from the models table unless set: None means "each model's own".
    assert (s.max_in_flight, s.submits_per_second, s.queries_per_second) == (None, None, 20.0)
    assert s.lanes == {} and s.ledger is None


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("base_url", "http://127.0.0.1:8000/api/v1", "http://127.0.0.1:8000/api/v1"),
        ("region", " Beijing", "beijing"),
        ("workspace", "ws-1", "ws-1"),
        ("time_scale", "60", 60.0),
    ],
)
def test_legacy_names(env: pytest.MonkeyPatch, field: str, value: str, expected: object) -> None:
    env.setenv(LEGACY[field], value)
    assert getattr(get_settings(), field) == expected


@pytest.mark.parametrize(
    "name, value, field, expected",
    [
        ("API_KEY", TEST_API_KEY, "api_key", TEST_API_KEY),
        ("BASE_URL", "http://sim:9/api/v1", "base_url", "http://sim:9/api/v1"),
        ("REGION", "beijing", "region", "beijing"),
        ("WORKSPACE", "ws-2", "workspace", "ws-2"),
        ("TIME_SCALE", "600", "time_scale", 600.0),
        ("MAX_IN_FLIGHT", "5", "max_in_flight", 5),
        ("SUBMITS_PER_SECOND", "0.5", "submits_per_second", 0.5),
        ("QUERIES_PER_SECOND", "10", "queries_per_second", 10.0),
        ("LANES", '{"wan2.7-i2v": "8:5"}', "lanes", {"wan2.7-i2v": "8:5"}),
        ("LEDGER", "s3://bucket/ledger", "ledger", "s3://bucket/ledger"),
    ],
)
def test_prefect_namespaced_names(
    env: pytest.MonkeyPatch, name: str, value: str, field: str, expected: object
) -> None:
    env.setenv(f"{ENV_PREFIX}{name}", value)
    got = getattr(get_settings(), field)
    if isinstance(got, SecretStr):
        got = got.get_secret_value()
    assert got == expected


def test_namespaced_name_wins_over_legacy(env: pytest.MonkeyPatch) -> None:
    env.setenv("KF2V_TIME_SCALE", "5")
    env.setenv(f"{ENV_PREFIX}TIME_SCALE", "7")
    assert get_settings().time_scale == 7.0


def test_api_key_from_legacy_name_is_stripped(env: pytest.MonkeyPatch) -> None:
    env.setenv("DASHSCOPE_API_KEY", f"  {TEST_API_KEY}\n")
    key = get_settings().api_key
    assert key is not None and key.get_secret_value() == TEST_API_KEY


@pytest.mark.parametrize("name", ["DASHSCOPE_API_KEY", "DASHSCOPE_HTTP_BASE_URL"])
def test_blank_values_mean_unset(env: pytest.MonkeyPatch, name: str) -> None:
    env.setenv(name, "   ")
    s = get_settings()
    assert s.api_key is None and s.base_url is None


def test_keywords_win(env: pytest.MonkeyPatch) -> None:
    env.setenv("KF2V_TIME_SCALE", "5")
    assert Kf2vSettings(time_scale=9).time_scale == 9.0


@pytest.mark.parametrize(
    "name, value",
    [
        ("KF2V_TIME_SCALE", "0"),
        ("KF2V_TIME_SCALE", "-2"),
        ("KF2V_TIME_SCALE", "fast"),
        ("KF2V_REGION", "mars"),
        (f"{ENV_PREFIX}MAX_IN_FLIGHT", "0"),
        (f"{ENV_PREFIX}QUERIES_PER_SECOND", "0"),
    ],
)
def test_invalid_values_rejected(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv(name, value)
    with pytest.raises(ValueError):
        get_settings()


def test_key_never_shown(env: pytest.MonkeyPatch) -> None:
    env.setenv("DASHSCOPE_API_KEY", TEST_API_KEY)
    s = get_settings()
    assert s.api_key is not None and s.api_key.get_secret_value() == TEST_API_KEY
    for text in (repr(s), str(s), s.model_dump_json(), repr(s.model_dump())):
        assert TEST_API_KEY not in text


def test_every_field_is_described_with_its_variables() -> None:
    schema = Kf2vSettings.model_json_schema()["properties"]
    assert set(schema) == {n.lower() for n in FIELDS}
    for field, prop in schema.items():
        assert prop.get("description", "").endswith("."), field
        names = prop["supported_environment_variables"]
        assert f"{ENV_PREFIX}{field.upper()}" in names, field
        if field in LEGACY:
            assert LEGACY[field] in names, field


def test_reading_settings_never_writes_the_environment(env: pytest.MonkeyPatch) -> None:
    env.setenv("KF2V_TIME_SCALE", "60")
    before = dict(os.environ)
    get_settings()
    clock.time_scale()
    clock.set_time_scale(30)
    clock.set_time_scale(None)
    assert dict(os.environ) == before


# --------------------------------------------------------------------------- the clock


def test_clock_reads_settings_once_and_caches(env: pytest.MonkeyPatch) -> None:
    env.setenv("KF2V_TIME_SCALE", "60")
    assert clock.time_scale() == 60.0
    env.setenv("KF2V_TIME_SCALE", "5")
    assert clock.time_scale() == 60.0  # cached: not re-read on the hot path
    clock.set_time_scale(None)  # drops the cache
    assert clock.time_scale() == 5.0


def test_clock_reads_the_namespaced_name(env: pytest.MonkeyPatch) -> None:
    env.setenv(f"{ENV_PREFIX}TIME_SCALE", "120")
    assert clock.time_scale() == 120.0
    assert clock.real_seconds(60) == 0.5


def test_clock_override_wins_and_clears(env: pytest.MonkeyPatch) -> None:
    env.setenv("KF2V_TIME_SCALE", "60")
    clock.set_time_scale(600)
    assert clock.time_scale() == 600.0
    assert "KF2V_TIME_SCALE" in os.environ and os.environ["KF2V_TIME_SCALE"] == "60"
    clock.set_time_scale(None)
    assert clock.time_scale() == 60.0


@pytest.mark.parametrize("name", ["KF2V_TIME_SCALE", f"{ENV_PREFIX}TIME_SCALE"])
@pytest.mark.parametrize("value", ["fast", "0", "-1"])
def test_clock_bad_value_names_the_variable(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv(name, value)
    with pytest.raises(ValueError) as info:
        clock.time_scale()
    message = str(info.value)
    assert message.startswith(f"{name}={value!r}") and "number > 0" in message


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan"), "x", [1]])
def test_set_time_scale_rejects_bad_values(env: pytest.MonkeyPatch, value: object) -> None:
    with pytest.raises(ValueError, match="time scale must be"):
        clock.set_time_scale(value)  # type: ignore[arg-type]
    assert clock.time_scale() == 1.0  # the previous state is kept


def test_a_bad_lane_setting_names_the_model(env: pytest.MonkeyPatch) -> None:
    env.setenv(f"{ENV_PREFIX}LANES", '{"wan2.7-i2v": "zero"}')
    with pytest.raises(ValueError, match="lane 'wan2.7-i2v': 'zero' is not RUNNING"):
        get_settings()
