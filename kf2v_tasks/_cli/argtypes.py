"""Option values checked while parsing, so a bad flag is named before anything starts.

Each function here is an argparse ``type``: it returns the converted value or raises
``argparse.ArgumentTypeError`` with a reason, which argparse turns into
``kf2v run: error: argument --concurrency: must be >= 1, got 0``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

from kf2v_tasks.dashscope.catalog_builtin import BUILTIN_MODELS
from kf2v_tasks.dashscope.models import DEFAULT_MODEL, SEED_MAX, Resolution

if TYPE_CHECKING:
    from kf2v_tasks.dashscope.catalog import ModelSpec


def integer(low: Optional[int] = None, high: Optional[int] = None) -> Callable[[str], int]:
    """An integer option within ``low..high`` (either bound may be open)."""
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
    """A finite number ``> above`` or ``>= at_least``."""
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
    """``--storage-options``: a JSON object (the value is never echoed: it may hold a secret)."""
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
    """``--storage-block``: ``<block-type-slug>/<block-name>``."""
    slug, _, name = text.strip().partition("/")
    if not slug or not name:
        raise argparse.ArgumentTypeError(
            f"must be '<block-type-slug>/<block-name>', e.g. 'aws-credentials/prod', got {text!r}"
        )
    return text.strip()


#: ``--duration``: whole seconds; what the model allows is checked with the model.
duration = integer(1, 3600)


def builtin_model_names() -> str:
    """The built-in models, for ``--help`` (reading them imports no Prefect)."""
    return ", ".join(spec.name for spec in BUILTIN_MODELS)


def model_name(text: str) -> str:
    """``--model``: a model the models table knows (a models file may add names).

    A built-in name (or a dated variant of one) is accepted without reading the models
    file; any other is looked up in the active table.
    """
    name = text.strip().lower()
    if name and any(spec.matches(name) for spec in BUILTIN_MODELS):
        return name
    from kf2v_tasks.dashscope.catalog import active_catalog  # may read the models file

    try:
        catalog = active_catalog()
    except ValueError as exc:  # an unreadable models file: say so, on the flag that needs it
        raise argparse.ArgumentTypeError(str(exc)) from None
    if name and catalog.find(name) is not None:
        return name
    raise argparse.ArgumentTypeError(
        f"{text.strip()!r} is not a known model (one of: {', '.join(catalog.names())}; "
        "a models file may add others)"
    )


def model_option_problem(
    model: Optional[str],
    resolution: Optional[str],
    seconds: Optional[int] = None,
    audio: Optional[str] = None,
) -> Optional[tuple[str, str]]:
    """``(flag, reason)`` when ``--model`` does not take the other options, else None.

    A missing ``--model`` or ``--resolution`` means the default (wan2.2-kf2v-flash, 720P),
    as the batch uses them; the models table says what each model takes. A local
    ``--audio`` must be a file of a format the model takes (its content is checked
    before anything is paid, as the flow does).
    """
    from kf2v_tasks.dashscope.catalog import get_model  # may read the models file

    name = model or DEFAULT_MODEL
    try:
        spec = get_model(name)
    except ValueError as exc:
        return "--model", str(exc)
    return (
        _resolution_problem(spec, name, resolution)
        or _duration_problem(spec, name, seconds)
        or _audio_problem(spec, name, audio)
    )


def _resolution_problem(
    spec: ModelSpec, name: str, resolution: Optional[str]
) -> Optional[tuple[str, str]]:
    # No --resolution: the batch's default, 720P, whatever the model's own default is.
    chosen = Resolution(resolution).value if resolution else Resolution.P720.value
    if chosen in spec.resolutions:
        return None
    names = ", ".join(sorted(spec.resolutions))
    if resolution:
        return "--resolution", f"{chosen} is not available for {name} (allowed: {names})"
    return "--model", (
        f"{name} does not offer the default resolution {chosen}; add --resolution ({names})"
    )


def _duration_problem(
    spec: ModelSpec, name: str, seconds: Optional[int]
) -> Optional[tuple[str, str]]:
    if seconds is None or spec.allows_duration(seconds):
        return None
    if spec.duration_min == spec.duration_max:
        allowed = f"its videos are always {spec.duration_min} s long"
    else:
        allowed = f"allowed: {spec.duration_text()} s"
    return "--duration", f"{seconds} s is not available for {name} ({allowed})"


def _audio_problem(spec: ModelSpec, name: str, audio: Optional[str]) -> Optional[tuple[str, str]]:
    if audio is None:
        return None
    if not audio.strip():
        return "--audio", "is empty; give an mp3 or wav file (path or URL)"
    if not spec.audio:
        from kf2v_tasks.dashscope.catalog import active_catalog

        takers = [s.name for s in active_catalog().models if s.audio]
        hint = f"; add --model {takers[0]}" if takers else ""
        return "--audio", f"{name} takes no driving audio{hint}"
    if "://" in audio:
        return None  # read (and checked) before anything is paid
    path = os.path.expanduser(audio)
    if not os.path.exists(path):
        return "--audio", f"{audio!r}: no such file"
    if os.path.isdir(path):
        return "--audio", f"{audio!r}: is a folder, not an audio file"
    return None


def lane(text: str) -> tuple[str, str]:
    """``MODEL=RUNNING[:CREATES]`` (``--lane``): a bad one exits 2 naming it."""
    from kf2v_tasks.settings_env import parse_lane_spec

    model, sep, spec = text.partition("=")
    if not sep or not model.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not MODEL=RUNNING[:CREATES]")
    try:
        parse_lane_spec(spec, model.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return model.strip(), spec.strip()
