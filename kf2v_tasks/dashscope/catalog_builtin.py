"""The built-in rows of the models table, each fact with its source.

The kf2v rows say what the plugin always used (reference §1.3, §4, §9); the wan2.7-i2v row's
protocol is the official SDK's (``dashscope/v2/resources/videos.py``), its limits and quota
come from Model Studio's own pages (reference §16) and its prices are assumed (UNCERTAIN);
all overridable (see :mod:`kf2v_tasks.dashscope.catalog`).

Example:
    ```python
    from kf2v_tasks.dashscope.catalog_builtin import BUILTIN_MODELS
    assert [m.name for m in BUILTIN_MODELS][-1] == "wan2.7-i2v"
    ```
"""

from __future__ import annotations

from kf2v_tasks.dashscope.catalog_spec import MIB, FactSource, ModelSpec, Protocol

__all__ = ["ASSUMED_CNY_PER_USD", "BUILTIN_MODELS"]

_SDK, _DOC = FactSource.SDK, FactSource.OFFICIAL_DOC
_3P, _ASSUMED = FactSource.THIRD_PARTY, FactSource.ASSUMED
_KF2V_SOURCES = {
    "protocol": _DOC,
    "resolutions": _DOC,
    "durations": _DOC,
    "frame_limits": _DOC,
    "audio": _DOC,
    "prompt": _DOC,
    "concurrency": _DOC,
}
#: Assumed exchange rate for prices documented in USD only.
ASSUMED_CNY_PER_USD = 7.0

#: The built-in table: the kf2v models as the plugin has always used them, and wan2.7-i2v.
BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="wan2.2-kf2v-flash",
        protocol=Protocol.KF2V,
        resolutions=("480P", "720P", "1080P"),
        prices={"480P": 0.10, "720P": 0.20, "1080P": 0.48},
        price_note=(
            "0.10/0.20/0.48 CNY/s at 480P/720P/1080P from a third-party quote of the official "
            "price; UNCERTAIN"
        ),
        concurrency=2,
        creates_per_second=2.0,
        sources={**_KF2V_SOURCES, "prices": _3P},
    ),
    ModelSpec(
        name="wanx2.1-kf2v-plus",  # Beijing name
        protocol=Protocol.KF2V,
        resolutions=("720P",),
        prices={"720P": round(0.10 * ASSUMED_CNY_PER_USD, 4)},
        price_note="no published price; 0.70 CNY/s ASSUMED (same as wan2.1-kf2v-plus)",
        concurrency=2,
        creates_per_second=2.0,
        sources={**_KF2V_SOURCES, "prices": _ASSUMED},
    ),
    ModelSpec(
        name="wan2.1-kf2v-plus",  # Singapore (international) name
        protocol=Protocol.KF2V,
        resolutions=("720P",),
        prices={"720P": round(0.10 * ASSUMED_CNY_PER_USD, 4)},
        price_note="documented as USD 0.10/s (Singapore); 0.70 CNY/s ASSUMED at 7 CNY/USD",
        concurrency=2,
        creates_per_second=2.0,
        sources={**_KF2V_SOURCES, "resolutions": _3P, "prices": _ASSUMED},
    ),
    ModelSpec(
        name="wan2.7-i2v",
        match_prefix=True,  # wan2.7-i2v-2026-04-25 and other dated variants
        protocol=Protocol.MEDIA,
        resolutions=("720P", "1080P"),
        default_resolution="1080P",  # the service's own default (reference §16)
        duration_min=2,
        duration_max=15,
        default_duration=5,
        # Model Studio's wan2.7-i2v page (reference §16): 240..8000 px, 1:8..8:1, 20 MB.
        min_side=240,
        max_side=8000,
        max_frame_bytes=20 * MIB,
        max_aspect=8.0,
        audio=True,
        audio_formats=("mp3", "wav"),
        audio_min_seconds=2.0,
        audio_max_seconds=30.0,
        audio_max_bytes=15 * MIB,
        clip=True,  # first_clip and first_clip + last_frame (reference §16)
        prompt_max_chars=5000,
        negative_prompt_max_chars=500,
        prices={"720P": 0.60, "1080P": 1.00},
        price_note="no published price found; 0.60/1.00 CNY/s at 720P/1080P ASSUMED",
        # Model Studio's rate-limit page (reference §16): each model, and each dated
        # variant, has its own 5 running and 5 creates/s per main account.
        concurrency=5,
        creates_per_second=5.0,
        sources={
            "protocol": _SDK,
            "resolutions": _DOC,
            "durations": _DOC,
            "frame_limits": _DOC,
            "audio": _DOC,
            "prompt": _DOC,
            "prices": _ASSUMED,
            "concurrency": _DOC,
        },
    ),
)
