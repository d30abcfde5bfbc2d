"""The built-in rows of the models table, each fact with its source.

The kf2v rows say what the plugin always used (reference §1.3, §4); the wan2.7-i2v row's
protocol is the official SDK's (``dashscope/v2/resources/videos.py``), its limits and quota
come from Model Studio's own pages (reference §16). Every price, per region, is Model
Studio's pricing page's (reference §16); a region it does not list a model in has no price
(unknown). All overridable (see :mod:`kf2v_tasks.dashscope.catalog`).
"""

from __future__ import annotations

from kf2v_tasks.dashscope.catalog_spec import FACTS, MIB, FactSource, ModelSpec, Protocol

__all__ = ["BUILTIN_MODELS"]

_SDK, _DOC = FactSource.SDK, FactSource.OFFICIAL_DOC
_3P = FactSource.THIRD_PARTY
_ALL_DOC = dict.fromkeys(FACTS, _DOC)
#: Where the prices come from (reference §16).
_PRICE_PAGE = "Model Studio's pricing page (2026)"

#: The built-in table: the kf2v models as the plugin has always used them, and wan2.7-i2v.
BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="wan2.2-kf2v-flash",
        protocol=Protocol.KF2V,
        resolutions=("480P", "720P", "1080P"),
        # Not on the price list for Singapore, though the kf2v page's Singapore samples
        # use it: priced unknown there, and a run there is warned (§16 UNCERTAIN).
        prices={"beijing": {"480P": 0.10, "720P": 0.20, "1080P": 0.48}},
        regions=("beijing",),
        price_note=f"{_PRICE_PAGE}: Beijing only; no Singapore price",
        concurrency=2,
        creates_per_second=2.0,
        sources=_ALL_DOC,
    ),
    ModelSpec(
        name="wanx2.1-kf2v-plus",  # Beijing name
        protocol=Protocol.KF2V,
        resolutions=("720P",),
        prices={"beijing": {"720P": 0.70}},
        regions=("beijing",),
        price_note=f"{_PRICE_PAGE}: Beijing only",
        concurrency=2,
        creates_per_second=2.0,
        sources=_ALL_DOC,
    ),
    ModelSpec(
        name="wan2.1-kf2v-plus",  # Singapore (international) name
        protocol=Protocol.KF2V,
        resolutions=("720P",),
        prices={"singapore": {"720P": 0.733924}},
        regions=("singapore",),
        price_note=f"{_PRICE_PAGE}: Singapore only",
        concurrency=2,
        creates_per_second=2.0,
        sources={**_ALL_DOC, "resolutions": _3P},
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
        # Dated variants (wan2.7-i2v-2026-04-25) are priced as wan2.7-i2v (§16).
        prices={
            "beijing": {"720P": 0.6, "1080P": 1.0},
            "singapore": {"720P": 0.733924, "1080P": 1.100886},
        },
        regions=("beijing", "singapore"),
        price_note=f"{_PRICE_PAGE}",
        # Model Studio's rate-limit page (reference §16): each model, and each dated
        # variant, has its own 5 running and 5 creates/s per main account.
        concurrency=5,
        creates_per_second=5.0,
        sources={**_ALL_DOC, "protocol": _SDK},
    ),
)
