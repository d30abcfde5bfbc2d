"""The DashScopeCredentials block: Prefect block standards, env fallback, client wiring."""

from __future__ import annotations

import uuid

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr

import kf2v_tasks
from kf2v_tasks.credentials import (
    API_KEY_ENV,
    BASE_URL_ENV,
    REGION_BASE_URLS,
    REGION_ENV,
    WORKSPACE_ENV,
    DashScopeCredentials,
    resolve_credentials,
)
from kf2v_tasks.dashscope.client import Kf2vClient
from kf2v_tasks.dashscope.limits import AccountLimits
from kf2v_tasks.retry import RetryPolicy

from conftest import TEST_API_KEY


class TestDashScopeCredentialsStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[DashScopeCredentials]:
        return DashScopeCredentials

    @pytest.mark.skip(reason="fetches the logo over the internet (no network in tests)")
    def test_has_a_valid_image(self, block: type[DashScopeCredentials]) -> None:
        pass


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (API_KEY_ENV, BASE_URL_ENV, WORKSPACE_ENV, REGION_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_exported_from_package() -> None:
    assert kf2v_tasks.DashScopeCredentials is DashScopeCredentials
    assert DashScopeCredentials.get_block_type_slug() == "dashscope-credentials"


def test_secret_not_shown() -> None:
    creds = DashScopeCredentials(api_key=TEST_API_KEY, workspace="ws-1")
    assert isinstance(creds.api_key, SecretStr)
    for text in (repr(creds), str(creds), creds.model_dump_json(), repr(creds.model_dump())):
        assert TEST_API_KEY not in text


@pytest.mark.parametrize(
    "region, base_url, expected",
    [
        ("singapore", None, "https://dashscope-intl.aliyuncs.com/api/v1"),
        ("beijing", None, "https://dashscope.aliyuncs.com/api/v1"),
        ("beijing", "http://127.0.0.1:8000/api/v1/", "http://127.0.0.1:8000/api/v1"),
    ],
)
def test_resolved_base_url(region: str, base_url: str | None, expected: str) -> None:
    creds = DashScopeCredentials(api_key=TEST_API_KEY, region=region, base_url=base_url)
    assert creds.resolved_base_url == expected
    assert set(REGION_BASE_URLS) == {"singapore", "beijing"}


def test_region_validated() -> None:
    with pytest.raises(ValueError):
        DashScopeCredentials(api_key=TEST_API_KEY, region="mars")


async def test_get_client_wires_everything() -> None:
    limits = AccountLimits()
    retry = RetryPolicy(max_attempts=2)
    creds = DashScopeCredentials(
        api_key=TEST_API_KEY, base_url="http://127.0.0.1:9/api/v1", workspace="ws-7"
    )
    async with creds.get_client(limits=limits, retry=retry, user_agent="t/1") as client:
        assert isinstance(client, Kf2vClient)
        assert client.base_url == "http://127.0.0.1:9/api/v1"
        assert client.workspace == "ws-7"
        assert client.limits is limits and client.retry is retry
        assert TEST_API_KEY not in repr(client)
    assert client.is_closed


async def test_get_client_defaults() -> None:
    async with DashScopeCredentials(api_key=TEST_API_KEY).get_client() as client:
        assert client.base_url == REGION_BASE_URLS["singapore"]
        assert client.workspace is None and client.limits is None


def test_from_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(API_KEY_ENV, f"  {TEST_API_KEY}\n")
    clean_env.setenv(BASE_URL_ENV, "http://127.0.0.1:8000/api/v1")
    clean_env.setenv(WORKSPACE_ENV, "ws-env")
    clean_env.setenv(REGION_ENV, "Beijing")
    creds = DashScopeCredentials.from_env()
    assert creds.api_key.get_secret_value() == TEST_API_KEY
    assert creds.region == "beijing"
    assert creds.resolved_base_url == "http://127.0.0.1:8000/api/v1"
    assert creds.workspace == "ws-env"


def test_from_env_minimal(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(API_KEY_ENV, TEST_API_KEY)
    creds = DashScopeCredentials.from_env()
    assert creds.region == "singapore" and creds.base_url is None and creds.workspace is None
    assert creds.resolved_base_url == REGION_BASE_URLS["singapore"]


@pytest.mark.parametrize("value", [None, "", "   "])
def test_from_env_without_key(clean_env: pytest.MonkeyPatch, value: str | None) -> None:
    if value is not None:
        clean_env.setenv(API_KEY_ENV, value)
    with pytest.raises(ValueError, match=API_KEY_ENV):
        DashScopeCredentials.from_env()


def test_resolve_credentials_instance_and_env(clean_env: pytest.MonkeyPatch) -> None:
    creds = DashScopeCredentials(api_key=TEST_API_KEY)
    assert resolve_credentials(creds) is creds
    clean_env.setenv(API_KEY_ENV, TEST_API_KEY)
    for arg in (None, ""):
        got = resolve_credentials(arg)
        assert isinstance(got, DashScopeCredentials)
        assert got.api_key.get_secret_value() == TEST_API_KEY


def test_resolve_credentials_by_name_loads_block(monkeypatch: pytest.MonkeyPatch) -> None:
    creds = DashScopeCredentials(api_key=TEST_API_KEY)
    names: list[str] = []

    def fake_load(cls, name: str, **kwargs):
        names.append(name)
        return creds

    monkeypatch.setattr(DashScopeCredentials, "load", classmethod(fake_load))
    assert resolve_credentials("my-dashscope") is creds
    assert names == ["my-dashscope"]


def test_save_and_load_round_trip(prefect_server: None) -> None:
    """Against a Prefect test server: the secret survives a save/load, masked in the API."""
    name = f"kf2v-{uuid.uuid4().hex[:8]}"
    DashScopeCredentials(api_key=TEST_API_KEY, region="beijing", workspace="ws-9").save(name)
    loaded = resolve_credentials(name)
    assert loaded.api_key.get_secret_value() == TEST_API_KEY
    assert loaded.region == "beijing" and loaded.workspace == "ws-9"
    assert TEST_API_KEY not in repr(loaded)
