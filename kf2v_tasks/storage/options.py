"""fsspec ``storage_options`` from a saved Prefect block, so storage secrets are never parameters.

``storage_block`` is ``"<block-type-slug>/<block-name>"`` of a block the user already has:

* ``aws-credentials/<name>`` — prefect-aws ``AwsCredentials`` (key, secret, session
  token, region, endpoint URL from its client parameters);
* ``remote-file-system/<name>`` — Prefect's ``RemoteFileSystem``; its ``settings`` are
  fsspec options;
* ``secret/<name>`` — a Prefect ``Secret`` holding a JSON object of fsspec options.

Non-secret ``storage_options`` given beside it are merged on top (e.g. an endpoint).
"""

from __future__ import annotations

import json
from typing import Any, Optional


def _merge(base: dict, extra: Optional[dict]) -> dict:
    out = dict(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def options_from_block(block: Any) -> dict:
    """fsspec options from a loaded block (see the module docstring for the kinds)."""
    kind = type(block).__name__
    if kind == "AwsCredentials":
        opts: dict[str, Any] = {}
        if getattr(block, "aws_access_key_id", None):
            opts["key"] = block.aws_access_key_id
        secret = getattr(block, "aws_secret_access_key", None)
        if secret is not None:
            opts["secret"] = secret.get_secret_value()
        if getattr(block, "aws_session_token", None):
            opts["token"] = block.aws_session_token
        client_kwargs: dict[str, Any] = {}
        if getattr(block, "region_name", None):
            client_kwargs["region_name"] = block.region_name
        params = getattr(block, "aws_client_parameters", None)
        endpoint = getattr(params, "endpoint_url", None) if params is not None else None
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        return opts
    if kind == "RemoteFileSystem":
        return dict(block.settings or {})
    if kind == "Secret":
        value = block.get()
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict):
            raise ValueError(
                "a Secret used as storage_block must hold a JSON object of fsspec options"
            )
        return value
    raise ValueError(
        f"storage_block of type {kind} is not supported; use aws-credentials/<name>, "
        "remote-file-system/<name> or secret/<name>"
    )


async def resolve_storage_options(
    storage_block: Optional[str], storage_options: Optional[dict]
) -> Optional[dict]:
    """Load ``storage_block`` (``"slug/name"``) and merge ``storage_options`` on top.

    Example:
        ```python
        opts = await resolve_storage_options("aws-credentials/prod", {"client_kwargs": {}})
        ```
    """
    if not storage_block:
        return storage_options
    from prefect.blocks.core import Block

    if "/" not in storage_block:
        raise ValueError(
            f"storage_block {storage_block!r} must be '<block-type-slug>/<block-name>', "
            "e.g. 'aws-credentials/prod'"
        )
    block = await Block.aload(storage_block)
    return _merge(options_from_block(block), storage_options)
