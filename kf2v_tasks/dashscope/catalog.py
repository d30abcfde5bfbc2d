"""The models table: every model the plugin can drive, as data, with where each fact comes from.

Two protocols exist for first-and-last-frame video:

* ``kf2v``: ``POST /services/aigc/image2video/video-synthesis`` with ``first_frame_url`` and
  ``last_frame_url`` in ``input``; fixed 5 s, silent (the wan2.x kf2v models);
* ``media``: ``POST /services/aigc/video-generation/video-synthesis`` with a ``media`` list
  of ``{"type", "url"}`` items (``first_frame``, ``last_frame``, ``driving_audio``), any
  duration in a range, with sound (``wan2.7-i2v``; the official SDK's ``videos.py``).

Validation, the request builder, the fingerprint, the price estimate and the simulator
all read one :class:`ModelSpec` per model from here. A dated variant
(``wan2.7-i2v-2026-04-25``) matches its entry by name prefix, as the SDK routes it. Adding
a model that speaks either protocol is one entry: in a JSON or TOML file named by the
setting ``PREFECT_INTEGRATIONS_KF2V_MODELS_FILE`` (see :func:`load_models_file`), or in
Python with :func:`register_model`.

Every fact carries a :class:`FactSource`: ``sdk`` (the official SDK's source),
``official-doc`` (Model Studio's pages), ``third-party (UNCERTAIN)`` or
``assumed (UNCERTAIN)``; the README lists them.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kf2v_tasks.dashscope.catalog_builtin import BUILTIN_MODELS
from kf2v_tasks.dashscope.catalog_spec import (
    ANY_REGION,
    FACTS,
    KF2V_CREATE_PATH,
    MEDIA_CREATE_PATH,
    FactSource,
    ModelSpec,
    Protocol,
    UnknownModelError,
    by_region,
)
from kf2v_tasks.settings_env import may_be_set

__all__ = [
    "ANY_REGION",
    "BUILTIN_MODELS",
    "FACTS",
    "KF2V_CREATE_PATH",
    "MEDIA_CREATE_PATH",
    "MODELS_FILE_ENV",
    "FactSource",
    "ModelCatalog",
    "ModelSpec",
    "Protocol",
    "UnknownModelError",
    "active_catalog",
    "get_model",
    "load_models_file",
    "register_model",
    "reset_catalog",
]

#: The setting (environment variable) naming a models file that extends or patches the table.
MODELS_FILE_ENV = "PREFECT_INTEGRATIONS_KF2V_MODELS_FILE"


class ModelCatalog(BaseModel):
    """A models table: look a model up by name (dated variants by prefix)."""

    model_config = ConfigDict(frozen=True)

    models: tuple[ModelSpec, ...] = Field(default=BUILTIN_MODELS)

    def find(self, model: str) -> Optional[ModelSpec]:
        """The entry for ``model``: an exact name first, else the longest matching prefix."""
        name = str(getattr(model, "value", model)).strip()
        for spec in self.models:
            if spec.name == name:
                return spec
        prefixed = [s for s in self.models if s.matches(name)]
        return max(prefixed, key=lambda s: len(s.name)) if prefixed else None

    def get(self, model: str) -> ModelSpec:
        """Like :meth:`find`, but an unknown name raises :class:`UnknownModelError`."""
        spec = self.find(model)
        if spec is None:
            raise UnknownModelError(
                f"{str(getattr(model, 'value', model))!r} is not a known model "
                f"(one of: {', '.join(self.names())}; add others with a models file)"
            )
        return spec

    def names(self) -> list[str]:
        """Entry names, in table order."""
        return [s.name for s in self.models]

    def with_entries(self, entries: Iterable[Union[ModelSpec, Mapping[str, Any]]]) -> ModelCatalog:
        """A new table with ``entries`` added; a mapping naming an existing entry patches it."""
        models = list(self.models)
        for entry in entries:
            if isinstance(entry, ModelSpec):
                spec = entry
            else:
                patch = dict(entry)
                name = str(patch.get("name", "")).strip()
                old = next((m for m in models if m.name == name), None)
                base = old.model_dump() if old is not None else {}
                prices = patch.get("prices")
                if old is not None and isinstance(prices, Mapping):
                    prices = by_region(prices)  # a flat price replaces every region's
                    patch["prices"] = prices if ANY_REGION in prices else {**old.prices, **prices}
                touched = {k: FactSource.USER for k in _facts_of(patch)}
                sources = {**base.get("sources", {}), **touched, **patch.pop("sources", {})}
                spec = ModelSpec.model_validate({**base, **patch, "sources": sources})
            models = [m for m in models if m.name != spec.name] + [spec]
        return ModelCatalog(models=tuple(models))


_FACT_FIELDS = {
    "protocol": ("protocol",),
    "resolutions": ("resolutions", "default_resolution"),
    "durations": ("duration_min", "duration_max", "default_duration"),
    "frame_limits": ("min_side", "max_side", "max_frame_bytes", "max_aspect"),
    "audio": ("audio", "audio_formats", "audio_min_seconds", "audio_max_seconds"),
    "prompt": ("prompt_max_chars", "negative_prompt_max_chars"),
    "prices": ("prices", "currency"),
    "regions": ("regions",),
    "concurrency": ("concurrency", "creates_per_second"),
}


def _facts_of(patch: Mapping[str, Any]) -> list[str]:
    return [fact for fact, fields in _FACT_FIELDS.items() if any(f in patch for f in fields)]


def load_models_file(path: Union[str, Path], base: Optional[ModelCatalog] = None) -> ModelCatalog:
    """The table ``base`` (default: built-in) with the entries of a JSON or TOML file.

    The file holds ``{"models": [...]}`` (TOML: ``[[models]]`` tables); each entry is a full
    :class:`ModelSpec`, or a patch ``{"name": ..., <fields to change>}`` of an existing one.
    Fields a patch sets are sourced ``user`` unless it gives ``sources`` itself.

    Raises:
        ValueError: the file cannot be read or an entry is invalid (the message names it).
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"models file {p}: cannot read it ({exc.strerror or exc})") from None
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            doc: Any = tomllib.loads(text)
        else:
            doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"models file {p}: not valid {p.suffix or 'JSON'}: {exc}") from None
    entries = doc.get("models") if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"models file {p}: expected a list of tables under 'models'")
    catalog = base or ModelCatalog()
    for number, entry in enumerate(entries, start=1):
        try:
            catalog = catalog.with_entries([entry])
        except ValidationError as exc:
            what = "; ".join(
                f"{'.'.join(str(x) for x in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(
                f"models file {p}: entry {number} ({entry.get('name')!r}): {what}"
            ) from None
    return catalog


_lock = threading.Lock()
_registered: list[ModelSpec] = []
_cache: Optional[tuple[Optional[str], ModelCatalog]] = None


def _models_file_setting() -> Optional[str]:
    value = os.environ.get(MODELS_FILE_ENV)
    if value is not None:
        return value.strip() or None
    if not may_be_set("models_file"):  # no Prefect import for the default
        return None
    try:  # lazily: kf2v --help and the simulator need no Prefect unless this is read
        from kf2v_tasks.settings import get_settings

        return get_settings().models_file
    except Exception:  # an unreadable Prefect config must not hide the built-in table
        return None


def active_catalog() -> ModelCatalog:
    """The table in use: built-in, then the models file setting, then :func:`register_model`.

    Cached; the cache follows a change of ``PREFECT_INTEGRATIONS_KF2V_MODELS_FILE`` in the
    environment.
    """
    global _cache
    key = os.environ.get(MODELS_FILE_ENV)
    cached = _cache
    if cached is not None and cached[0] == key:
        return cached[1]
    with _lock:
        path = _models_file_setting()
        catalog = load_models_file(path) if path else ModelCatalog()
        if _registered:
            catalog = catalog.with_entries(_registered)
        _cache = (key, catalog)
        return catalog


def get_model(model: str) -> ModelSpec:
    """The active table's entry for ``model`` (see :meth:`ModelCatalog.get`)."""
    return active_catalog().get(model)


def register_model(spec: Union[ModelSpec, Mapping[str, Any]]) -> ModelSpec:
    """Add (or patch) an entry of the active table for this process."""
    global _cache
    catalog = active_catalog().with_entries([spec])
    name = spec.name if isinstance(spec, ModelSpec) else str(spec.get("name", "")).strip()
    new = catalog.get(name)
    with _lock:
        _registered[:] = [s for s in _registered if s.name != new.name] + [new]
        _cache = None
    return new


def reset_catalog() -> None:
    """Forget :func:`register_model` entries and the cache (tests use this)."""
    global _cache
    with _lock:
        _registered.clear()
        _cache = None
