"""Prefect events for automations: what happened to each video and to each batch.

``kf2v.video.persisted`` (a video was kept), ``kf2v.video.failed`` (failed or cancelled;
whether it was billed), ``kf2v.video.possible-duplicate`` (an ambiguous create was
retried: a second billed task may exist), ``kf2v.batch.finished`` (once per batch) and
``kf2v.budget.exceeded`` (``max_cost`` left rows out).

The batch and the standalone tasks emit the same per-video events, so an automation works
whichever way the video was made. Related resources name the model and the batch; row id,
output and model are also resource labels so a trigger can match them. Every string is
redacted first (:mod:`kf2v_tasks.redaction`); emitting is best effort: logged, never
raised. Kept videos are also Prefect assets where ``prefect.assets`` exists
(:func:`emit_video_asset`), without a task run per video.
"""

from kf2v_tasks.events.assets import asset_key, emit_video_asset
from kf2v_tasks.events.batch import emit_batch_finished, emit_budget_exceeded
from kf2v_tasks.events.core import MAX_LISTED_ROWS, attempt_from_tags, attempt_tag, is_shard
from kf2v_tasks.events.video import (
    emit_possible_duplicate,
    emit_video_failed,
    emit_video_persisted,
)

__all__ = [
    "MAX_LISTED_ROWS",
    "asset_key",
    "attempt_from_tags",
    "attempt_tag",
    "emit_batch_finished",
    "emit_budget_exceeded",
    "emit_possible_duplicate",
    "emit_video_asset",
    "emit_video_failed",
    "emit_video_persisted",
    "is_shard",
]
