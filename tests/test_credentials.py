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
from kf2v_tasks.settings import ENV_PREFIX

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
    for field in ("API_KEY", "BASE_URL", "WORKSPACE", "REGION"):
        monkeypatch.delenv(f"{ENV_PREFIX}{field}", raising=False)
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


def test_from_env_prefect_namespaced_names(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(f"{ENV_PREFIX}API_KEY", TEST_API_KEY)
    clean_env.setenv(f"{ENV_PREFIX}BASE_URL", "http://127.0.0.1:8001/api/v1")
    clean_env.setenv(f"{ENV_PREFIX}WORKSPACE", "ws-prefect")
    clean_env.setenv(API_KEY_ENV, "sk-the-other-one-0000")  # the namespaced name wins
    creds = DashScopeCredentials.from_env()
    assert creds.api_key.get_secret_value() == TEST_API_KEY
    assert creds.resolved_base_url == "http://127.0.0.1:8001/api/v1"
    assert creds.workspace == "ws-prefect"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_from_env_without_key(clean_env: pytest.MonkeyPatch, value: str | None) -> None:
    if value is not None:
        clean_env.setenv(API_KEY_ENV, value)
    with pytest.raises(ValueError) as info:
        DashScopeCredentials.from_env()
    assert str(info.value) == (
        "no DashScope credentials: set DASHSCOPE_API_KEY (and DASHSCOPE_HTTP_BASE_URL for "
        "another endpoint, e.g. the simulator) or pass a DashScopeCredentials block"
    )


def test_from_env_bad_region_is_named(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(API_KEY_ENV, TEST_API_KEY)
    clean_env.setenv(REGION_ENV, "mars")
    with pytest.raises(ValueError) as info:
        DashScopeCredentials.from_env()
    assert "region" in str(info.value) and TEST_API_KEY not in str(info.value)


def test_from_env_never_writes_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    import os

    clean_env.setenv(API_KEY_ENV, TEST_API_KEY)
    before = dict(os.environ)
    DashScopeCredentials.from_env()
    assert dict(os.environ) == before


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


# --------------------------------------------------------------------------- storage blocks


class AwsCredentials:  # duck-typed like prefect-aws's block (not installed here)
    def __init__(self) -> None:
        self.aws_access_key_id = "AKID"
        self.aws_secret_access_key = SecretStr("s3-secret")
        self.aws_session_token = None
        self.region_name = "eu-west-1"
        self.aws_client_parameters = type("P", (), {"endpoint_url": "http://127.0.0.1:9000"})()


def test_options_from_blocks() -> None:
    from prefect.blocks.system import Secret
    from prefect.filesystems import RemoteFileSystem

    from kf2v_tasks.storage.options import options_from_block

    assert options_from_block(AwsCredentials()) == {
        "key": "AKID",
        "secret": "s3-secret",
        "client_kwargs": {"region_name": "eu-west-1", "endpoint_url": "http://127.0.0.1:9000"},
    }
    fs_block = RemoteFileSystem(basepath="s3://b/", settings={"anon": True})
    assert options_from_block(fs_block) == {"anon": True}
    assert options_from_block(Secret(value='{"key": "k"}')) == {"key": "k"}
    with pytest.raises(ValueError, match="JSON object"):
        options_from_block(Secret(value='["not", "an", "object"]'))
    with pytest.raises(ValueError, match="not supported"):
        options_from_block(DashScopeCredentials(api_key=TEST_API_KEY))


async def test_resolve_storage_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.core import Block

    from kf2v_tasks.credentials import resolve_storage_options

    assert await resolve_storage_options(None, {"anon": True}) == {"anon": True}
    with pytest.raises(ValueError, match="<block-type-slug>/<block-name>"):
        await resolve_storage_options("prod", None)
    names: list[str] = []

    async def fake_aload(cls, name: str, **kwargs):
        names.append(name)
        return AwsCredentials()

    monkeypatch.setattr(Block, "aload", classmethod(fake_aload))
    opts = await resolve_storage_options(
        "aws-credentials/prod", {"client_kwargs": {"endpoint_url": "http://minio:9000"}}
    )
    assert names == ["aws-credentials/prod"]
    assert opts == {
        "key": "AKID",
        "secret": "s3-secret",
        "client_kwargs": {"region_name": "eu-west-1", "endpoint_url": "http://minio:9000"},
    }
