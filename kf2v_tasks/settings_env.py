"""The parts of kf2v's settings that need no Prefect: may a setting be set, lane specs.

Reading :class:`kf2v_tasks.settings.Kf2vSettings` imports Prefect (about a second).
Commands that start no Prefect (``kf2v validate``, a run with nothing left to do) ask
here first: when neither the environment nor a file Prefect reads settings from
(``.env``, ``prefect.toml``, ``pyproject.toml``, the profiles file) can hold one of the
setting's names, its default is the answer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

__all__ = ["check_lane_specs", "may_be_set", "parse_lane_spec"]

_PREFIX = "prefect_integrations_kf2v_"


def may_be_set(name: str, *legacy: str) -> bool:
    """Whether setting ``name`` (or a ``legacy`` variable of it) may have a value."""
    names = {_PREFIX + name, *legacy}
    if any(key.lower() in names for key in os.environ):
        return True
    # What the files may name: the setting, a profiles file elsewhere, Prefect's table.
    files = {
        Path(".env"): ("kf2v", "profiles_path", *legacy),
        Path("prefect.toml"): ("kf2v", "profiles_path"),
        Path("pyproject.toml"): ("tool.prefect",),
        _profiles_path(): ("kf2v", *legacy),
    }
    return any(_mentions(path, words) for path, words in files.items())


def _profiles_path() -> Path:
    # As Prefect finds it (prefect.settings.sources._get_profiles_path), the files above
    # aside: a profiles_path they name makes the answer "may be set" anyway.
    if os.environ.get("PREFECT_PROFILES_PATH"):
        return Path(os.environ["PREFECT_PROFILES_PATH"])
    home = os.environ.get("PREFECT_HOME") or "~/.prefect"
    return Path(home).expanduser() / "profiles.toml"


def _mentions(path: Path, words: tuple[str, ...]) -> bool:
    try:
        text = path.read_text(errors="replace").lower()
    except OSError:  # absent or unreadable: Prefect would read nothing from it either
        return False
    return any(word in text for word in words)


def check_lane_specs(specs: dict[str, str]) -> dict[str, str]:
    """``specs`` as given, once each is a valid ``RUNNING[:CREATES]`` (else ValueError)."""
    for model, spec in specs.items():
        parse_lane_spec(spec, model)
    return specs


def parse_lane_spec(spec: str, model: str = "") -> tuple[int, Optional[float]]:
    """``"RUNNING[:CREATES]"`` as (running, creates/s or None); a bad one names the model."""
    running, _, creates = str(spec).strip().partition(":")
    try:
        n = int(running)
        rate = float(creates) if creates else None
    except ValueError:
        raise ValueError(
            f"lane {model!r}: {spec!r} is not RUNNING[:CREATES] (e.g. 5 or 5:5)"
        ) from None
    if n < 1 or (rate is not None and rate <= 0):
        raise ValueError(f"lane {model!r}: size must be >= 1 and creates/s > 0, got {spec!r}")
    return n, rate
