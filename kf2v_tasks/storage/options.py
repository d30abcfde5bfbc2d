"""fsspec ``storage_options`` from a loaded Prefect block, so storage secrets are never parameters.

Loading a block by name needs Prefect, so it happens one layer up
(:func:`kf2v_tasks.credentials.resolve_storage_options`); this module reads a loaded block
by duck typing and imports nothing of Prefect. Understood: ``aws-credentials/<name>``
(prefect-aws ``AwsCredentials``), ``remote-file-system/<name>`` (its ``settings`` are
fsspec options) and ``secret/<name>`` (a JSON object of fsspec options). Non-secret
``storage_options`` given beside it are merged on top (e.g. an endpoint).
"""

from __future__ import annotations

import json
from typing import Any, Optional


def merge_options(base: dict, extra: Optional[dict]) -> dict:
    """``base`` with ``extra`` merged on top, nested dicts merged key by key."""
    out = dict(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_options(out[key], value)
        else:
            out[key] = value
    return out


def options_from_block(block: Any) -> dict:
    """fsspec options from a loaded block (see the module docstring for the kinds).

    Raises:
        ValueError: a block of another type, or a Secret that is not a JSON object.
    """
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
