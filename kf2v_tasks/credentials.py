"""Credentials from Prefect blocks: the ``DashScopeCredentials`` block, and storage options.

``DashScopeCredentials`` holds the API key, region, endpoint and workspace;
:func:`resolve_storage_options` turns a saved storage block (AWS credentials, a remote
file system, a secret) into fsspec options, so storage secrets are never parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional, Union

from prefect.blocks.abstract import CredentialsBlock
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from kf2v_tasks.errors import PermanentError
from kf2v_tasks.settings import get_settings
from kf2v_tasks.storage.options import merge_options, options_from_block

if TYPE_CHECKING:
    from kf2v_tasks.dashscope.client import Kf2vClient
    from kf2v_tasks.dashscope.limits import AccountLimits

REGION_BASE_URLS = {
    "singapore": "https://dashscope-intl.aliyuncs.com/api/v1",
    "beijing": "https://dashscope.aliyuncs.com/api/v1",
}

# The variables users already set (read through kf2v_tasks.settings, which also accepts
# PREFECT_INTEGRATIONS_KF2V_API_KEY, _BASE_URL, _WORKSPACE and _REGION).
API_KEY_ENV = "DASHSCOPE_API_KEY"
BASE_URL_ENV = "DASHSCOPE_HTTP_BASE_URL"
WORKSPACE_ENV = "DASHSCOPE_WORKSPACE_ID"
REGION_ENV = "KF2V_REGION"

#: The error when neither a block nor a key in the environment is given.
NO_CREDENTIALS_MESSAGE = (
    f"no DashScope credentials: set {API_KEY_ENV} (and {BASE_URL_ENV} for another endpoint, "
    "e.g. the simulator) or pass a DashScopeCredentials block"
)


class MissingCredentialsError(PermanentError, ValueError):
    """Neither a credentials block nor a key where the flow runs (a worker's environment)."""

    code = "NoCredentials"
    #: What results.csv says of each row the run could not submit.
    row_message = f"not submitted: no credentials (pass credentials_block or set {API_KEY_ENV})"


class DashScopeCredentials(CredentialsBlock):
    """Credentials and endpoint for Alibaba Model Studio (DashScope).

    The API key is a secret: it is only unwrapped inside :meth:`get_client`, and never
    appears in logs, parameters or results. With no block, :meth:`from_env` reads
    ``DASHSCOPE_API_KEY`` and ``DASHSCOPE_HTTP_BASE_URL`` as the official SDK does
    (or their ``PREFECT_INTEGRATIONS_KF2V_*`` names, see :mod:`kf2v_tasks.settings`).

    Example:
        Save a block once (the key is stored as a secret), then use it by name:
        ```python
        from kf2v_tasks import DashScopeCredentials

        DashScopeCredentials(api_key="sk-...", region="singapore").save("BLOCK_NAME", overwrite=True)

        credentials = DashScopeCredentials.load("BLOCK_NAME")
        assert credentials.resolved_base_url == "https://dashscope-intl.aliyuncs.com/api/v1"
        # generate_batch(..., credentials_block="BLOCK_NAME")
        ```
    """

    _block_type_name = "DashScope Credentials"
    _block_type_slug = "dashscope-credentials"
    _logo_url = "https://img.alicdn.com/imgextra/i4/O1CN01EfJVFQ1uZPd7W4W6i_!!6000000006051-2-tps-112-112.png"  # noqa: E501
    _documentation_url = (  # type: ignore[assignment]
        "https://github.com/kf2v/kf2v-tasks#credentials"
    )

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
        description=(
            "Override of the API base (…/api/v1), e.g. a workspace endpoint or a simulator."
        ),
    )
    workspace: Optional[str] = Field(
        default=None,
        description="Workspace id, sent as the X-DashScope-WorkSpace header.",
    )
    account: Optional[str] = Field(
        default=None,
        description=(
            "Name of the Alibaba Cloud main account (not secret). The service's quota is per "
            "main account: blocks with different keys of one account give the same name."
        ),
    )

    @property
    def resolved_base_url(self) -> str:
        """The API base URL: the override if set, else the region's endpoint."""
        return (self.base_url or REGION_BASE_URLS[self.region]).rstrip("/")

    @classmethod
    def from_env(cls) -> DashScopeCredentials:
        """Credentials from the settings (:func:`kf2v_tasks.settings.get_settings`).

        The key comes from ``DASHSCOPE_API_KEY`` (or ``PREFECT_INTEGRATIONS_KF2V_API_KEY``),
        the endpoint from ``DASHSCOPE_HTTP_BASE_URL`` or ``KF2V_REGION``, the workspace
        from ``DASHSCOPE_WORKSPACE_ID``; also from ``.env`` and Prefect's config files.

        Raises:
            MissingCredentialsError: no API key is configured (the message says what to set).
            ValueError: a setting is invalid (the message names it).

        Example:
            ```python
            from kf2v_tasks.credentials import DashScopeCredentials

            # with DASHSCOPE_API_KEY (and, for the simulator, DASHSCOPE_HTTP_BASE_URL) set
            credentials = DashScopeCredentials.from_env()
            print(credentials.resolved_base_url)
            ```
        """
        settings = get_settings()
        if settings.api_key is None or not settings.api_key.get_secret_value():
            raise MissingCredentialsError(NO_CREDENTIALS_MESSAGE)
        return cls(
            api_key=settings.api_key,
            region=settings.region,
            base_url=settings.base_url,
            workspace=settings.workspace,
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
    """A block instance, a saved block's name, or ``None`` for the environment."""
    if isinstance(credentials, DashScopeCredentials):
        return credentials
    if isinstance(credentials, str) and credentials:
        # _sync: Block.load dispatches on the caller's context; this function is sync.
        return DashScopeCredentials.load(credentials, _sync=True)  # type: ignore[return-value]
    return DashScopeCredentials.from_env()


async def resolve_storage_options(
    storage_block: Optional[str], storage_options: Optional[dict]
) -> Optional[dict]:
    """Load ``storage_block`` (``"slug/name"``) and merge ``storage_options`` on top.

    ``storage_block`` names a saved ``aws-credentials``, ``remote-file-system`` or
    ``secret`` block (see :mod:`kf2v_tasks.storage.options`); without one,
    ``storage_options`` is returned as is.

    Raises:
        ValueError: ``storage_block`` is not ``"<block-type-slug>/<block-name>"``, or the
            block is of a kind that holds no storage options.
    """
    if not storage_block:
        return storage_options
    if "/" not in storage_block:
        raise ValueError(
            f"storage_block {storage_block!r} must be '<block-type-slug>/<block-name>', "
            "e.g. 'aws-credentials/prod'"
        )
    block = await Block.aload(storage_block)
    return merge_options(options_from_block(block), storage_options)
