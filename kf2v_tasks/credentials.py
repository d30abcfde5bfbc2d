"""The ``DashScopeCredentials`` block: API key, region, endpoint and workspace."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, Optional, Union

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, SecretStr

if TYPE_CHECKING:
    from kf2v_tasks.dashscope.client import Kf2vClient
    from kf2v_tasks.dashscope.limits import AccountLimits

REGION_BASE_URLS = {
    "singapore": "https://dashscope-intl.aliyuncs.com/api/v1",
    "beijing": "https://dashscope.aliyuncs.com/api/v1",
}

API_KEY_ENV = "DASHSCOPE_API_KEY"
BASE_URL_ENV = "DASHSCOPE_HTTP_BASE_URL"
WORKSPACE_ENV = "DASHSCOPE_WORKSPACE_ID"
REGION_ENV = "KF2V_REGION"


class DashScopeCredentials(CredentialsBlock):
    """Credentials and endpoint for Alibaba Model Studio (DashScope).

    The API key is a secret: it is only unwrapped inside :meth:`get_client`, and never
    appears in logs, parameters or results. With no block, :meth:`from_env` reads
    ``DASHSCOPE_API_KEY`` and ``DASHSCOPE_HTTP_BASE_URL`` as the official SDK does.

    Example:
        Load a saved block and get a client:
        ```python
        from kf2v_tasks import DashScopeCredentials
        credentials = DashScopeCredentials.load("BLOCK_NAME")
        async with credentials.get_client() as client:
            state = await client.get_task("a-task-id")
        ```
    """

    _block_type_name = "DashScope Credentials"
    _block_type_slug = "dashscope-credentials"
    _logo_url = "https://img.alicdn.com/imgextra/i4/O1CN01EfJVFQ1uZPd7W4W6i_!!6000000006051-2-tps-112-112.png"  # noqa: E501
    _documentation_url = "https://github.com/kf2v/kf2v-tasks#credentials"  # type: ignore[assignment]

    api_key: SecretStr = Field(
        default=...,
        title="API Key",
        description="DashScope API key (sk-...). Stored encrypted; never logged.",
    )
    region: Literal["singapore", "beijing"] = Field(
        default="singapore",
        description="Model Studio region; the key, endpoint and model must all be in it.",
    )
    base_url: Optional[str] = Field(
        default=None,
        title="Base URL",
        description="Override of the API base (…/api/v1), e.g. a workspace endpoint or a simulator.",
    )
    workspace: Optional[str] = Field(
        default=None,
        description="Workspace id, sent as the X-DashScope-WorkSpace header.",
    )

    @property
    def resolved_base_url(self) -> str:
        """The API base URL: the override if set, else the region's endpoint."""
        return (self.base_url or REGION_BASE_URLS[self.region]).rstrip("/")

    @classmethod
    def from_env(cls) -> DashScopeCredentials:
        """Credentials from ``DASHSCOPE_API_KEY`` / ``DASHSCOPE_HTTP_BASE_URL`` / ``DASHSCOPE_WORKSPACE_ID``.

        Raises:
            ValueError: when ``DASHSCOPE_API_KEY`` is not set.
        """
        key = os.environ.get(API_KEY_ENV, "").strip()
        if not key:
            raise ValueError(
                f"no DashScope credentials: set {API_KEY_ENV} or pass a DashScopeCredentials block"
            )
        region = os.environ.get(REGION_ENV, "singapore").strip().lower() or "singapore"
        return cls(
            api_key=SecretStr(key),
            region=region,  # type: ignore[arg-type]
            base_url=os.environ.get(BASE_URL_ENV) or None,
            workspace=os.environ.get(WORKSPACE_ENV) or None,
        )

    def get_client(self, limits: Optional[AccountLimits] = None, **kwargs) -> Kf2vClient:
        """A new :class:`~kf2v_tasks.dashscope.client.Kf2vClient` for these credentials.

        Args:
            limits: the account quota to respect (shared by every caller in a run).
            **kwargs: passed to :class:`~kf2v_tasks.dashscope.client.Kf2vClient`.
        """
        from kf2v_tasks.dashscope.client import Kf2vClient

        return Kf2vClient(
            api_key=self.api_key.get_secret_value(),
            base_url=self.resolved_base_url,
            workspace=self.workspace,
            limits=limits,
            **kwargs,
        )


async def aresolve_credentials(
    credentials: Union[DashScopeCredentials, str, None] = None,
) -> DashScopeCredentials:
    """Async :func:`resolve_credentials`: loads a saved block without blocking the loop."""
    if isinstance(credentials, str) and credentials:
        return await DashScopeCredentials.aload(credentials)  # type: ignore[return-value]
    return resolve_credentials(credentials)


def resolve_credentials(
    credentials: Union[DashScopeCredentials, str, None] = None,
) -> DashScopeCredentials:
    """A block instance, a saved block's name, or ``None`` for the environment.

    Example:
        ```python
        from kf2v_tasks.credentials import resolve_credentials
        creds = resolve_credentials("my-dashscope")   # loads the saved block
        ```
    """
    if isinstance(credentials, DashScopeCredentials):
        return credentials
    if isinstance(credentials, str) and credentials:
        # _sync: Block.load dispatches on the caller's context; this function is sync.
        return DashScopeCredentials.load(credentials, _sync=True)  # type: ignore[return-value]
    return DashScopeCredentials.from_env()
