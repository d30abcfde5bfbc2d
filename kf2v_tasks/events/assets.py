"""Kept videos as Prefect assets, materialized from their frames and audio."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from kf2v_tasks.events.core import MATERIALIZED_BY
from kf2v_tasks.redaction import redact_url, scrub

logger = logging.getLogger("kf2v_tasks.events")


# Characters Prefect refuses in asset keys (prefect.types.names), and the URI shape it wants.
_KEY_REFUSED = re.compile(r"[\s#?&%\"'<>\[\]{}|\\^`\0]")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def asset_key(location: Optional[str]) -> Optional[str]:
    """The asset key of a stored file: its URL without query, a local path as ``file://``.

    Characters Prefect does not allow in keys (spaces, ``%``, ``#``...) become ``_``;
    ``None`` when nothing usable is left or the key would be too long.
    """
    if not location:
        return None
    url = redact_url(location)
    m = _SCHEME.match(url)
    if m:
        key = m.group(1).lower() + url[len(m.group(1)) :]
    else:
        key = "file://" + os.path.abspath(url).replace(os.sep, "/")
    key = _KEY_REFUSED.sub("_", key)
    return key if len(key) <= 512 and "://" in key else None


def emit_video_asset(
    location: str,
    *,
    upstream: Iterable[Optional[str]] = (),
    name: Optional[str] = None,
    metadata: Optional[Mapping[str, Any]] = None,
) -> bool:
    """Record a kept video as a Prefect asset materialized from its frames (and audio).

    Emits what a ``@materialize`` task would (``prefect.asset.referenced`` for each
    upstream asset, ``prefect.asset.materialization.succeeded`` for the video, with the
    upstream assets as related resources), from the running task or flow, without a
    task run of its own. Does nothing (returns False) where Prefect has no assets.
    """
    try:
        from prefect.assets import Asset, AssetProperties
        from prefect.context import AssetContext
        from prefect.states import Completed
    except ImportError:  # Prefect before assets: nothing to show them in
        return False
    try:
        key = asset_key(location)
        if key is None:
            return False
        ups = {Asset(key=k) for k in (asset_key(u) for u in upstream) if k and k != key}
        video = Asset(key=key, properties=AssetProperties(name=name) if name else None)
        ctx = AssetContext(
            downstream_assets={video},
            direct_asset_dependencies=ups,
            materialized_by=MATERIALIZED_BY,
            materialization_metadata={key: scrub(dict(metadata or {}))},
        )
        ctx.emit_events(Completed())
        return True
    except Exception:  # assets are a view of the work, never a reason to fail it
        logger.warning("could not record %s as an asset", redact_url(location), exc_info=True)
        return False
