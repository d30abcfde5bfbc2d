"""Option values checked while parsing, so a bad flag is named before anything starts.

Each function here is an argparse ``type``: it returns the converted value or raises
``argparse.ArgumentTypeError`` with a reason, which argparse turns into
``kf2v run: error: argument --concurrency: must be >= 1, got 0``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, Optional

from kf2v_tasks.dashscope.models import MODEL_RESOLUTIONS, SEED_MAX, Kf2vModel, Resolution


def integer(low: Optional[int] = None, high: Optional[int] = None) -> Callable[[str], int]:
    """An integer option within ``low..high`` (either bound may be open).

    Example:
        ```python
        from kf2v_tasks._cli.argtypes import integer
        assert integer(1)("3") == 3
        ```
    """
    if low is not None and high is not None:
        rule = f"an integer in {low}..{high}"
    elif low is not None:
        rule = f"an integer >= {low}"
    else:
        rule = f"an integer <= {high}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(*, above: Optional[float] = None, at_least: Optional[float] = None):
    """A finite number ``> above`` or ``>= at_least``.

    Example:
        ```python
        from kf2v_tasks._cli.argtypes import number
        assert number(above=0)("2.5") == 2.5
        ```
    """
    rule = f"> {above:g}" if above is not None else f">= {at_least:g}"

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {rule}, got {text!r}") from None
        too_small = (above is not None and not value > above) or (
            at_least is not None and not value >= at_least
        )
        if too_small or value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text.strip()}")
        return value

    parse.__name__ = "number"
    return parse


#: ``--seed``: what the service accepts.
seed = integer(0, SEED_MAX)
#: Ports a server can listen on.
port = integer(1, 65535)


def json_object(text: str) -> dict[str, Any]:
    """``--storage-options``: a JSON object (the value is never echoed: it may hold a secret).

    Example:
        ```python
        from kf2v_tasks._cli.argtypes import json_object
        assert json_object('{"anon": true}') == {"anon": True}
        ```
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"must be a JSON object, e.g. '{{\"anon\": true}}' ({exc.msg} at column {exc.colno})"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object, e.g. '{{\"anon\": true}}', got a JSON {type(value).__name__}"
        )
    return value


def block_slug(text: str) -> str:
    """``--storage-block``: ``<block-type-slug>/<block-name>``.

    Example:
        ```python
        from kf2v_tasks._cli.argtypes import block_slug
        assert block_slug("aws-credentials/prod") == "aws-credentials/prod"
        ```
    """
    slug, _, name = text.strip().partition("/")
    if not slug or not name:
        raise argparse.ArgumentTypeError(
            f"must be '<block-type-slug>/<block-name>', e.g. 'aws-credentials/prod', got {text!r}"
        )
    return text.strip()


def model_resolution_problem(
    model: Optional[str], resolution: Optional[str]
) -> Optional[tuple[str, str]]:
    """``(flag, reason)`` when ``--model`` and ``--resolution`` do not go together, else None.

    A missing flag means the default (wan2.2-kf2v-flash, 720P), as the batch uses it.

    Example:
        ```python
        from kf2v_tasks._cli.argtypes import model_resolution_problem
        assert model_resolution_problem("wan2.1-kf2v-plus", "1080P") == (
            "--resolution", "1080P is not available for wan2.1-kf2v-plus (allowed: 720P)")
        ```
    """
    chosen_model = Kf2vModel(model) if model else Kf2vModel.WAN22_FLASH
    chosen = Resolution(resolution) if resolution else Resolution.P720
    allowed = MODEL_RESOLUTIONS[chosen_model]
    if chosen in allowed:
        return None
    names = ", ".join(sorted(r.value for r in allowed))
    if resolution:
        return "--resolution", f"{chosen.value} is not available for {chosen_model.value} " + (
            f"(allowed: {names})"
        )
    return "--model", (
        f"{chosen_model.value} does not offer the default resolution {chosen.value}; "
        f"add --resolution ({names})"
    )
