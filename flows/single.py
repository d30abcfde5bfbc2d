"""The single-video flow: one first frame, one last frame, one prompt, one MP4."""

from __future__ import annotations

from typing import Optional

from prefect import flow
from prefect.logging import get_run_logger

from kf2v_tasks.batch.runner import PollingSettings
from kf2v_tasks.dashscope.models import GenerationOptions
from kf2v_tasks.generation.ledger import Ledger
from kf2v_tasks.generation.persist import PersistedVideo, find_persisted
from kf2v_tasks.generation.submit import request_fingerprint
from kf2v_tasks.storage.options import resolve_storage_options
from kf2v_tasks.storage.paths import parent
from kf2v_tasks.tasks import persist_video, poll_until_done, submit_kf2v, validate_frames


@flow(
    name="kf2v-generate-video",
    description="Generate one kf2v video from a first frame, a last frame and a prompt.",
)
async def generate_video(
    first_frame: str,
    last_frame: str,
    output: str,
    prompt: Optional[str] = None,
    negative_prompt: Optional[str] = None,
    options: GenerationOptions = GenerationOptions(),
    polling: PollingSettings = PollingSettings(),
    credentials_block: Optional[str] = None,
    storage_block: Optional[str] = None,
    storage_options: Optional[dict] = None,
) -> PersistedVideo:
    """Validate the frames, submit, wait and keep the video (with a JSON sidecar).

    Re-running with the same inputs reuses the earlier task (or skips the download if
    the video is already there), so a retry never pays twice.

    Args:
        first_frame: first frame: local path, file://, http(s):// or any fsspec URL.
        last_frame: last frame, same forms.
        output: where the MP4 goes (local path or fsspec URL ending in .mp4).
        prompt: text prompt (up to 800 characters).
        negative_prompt: what to avoid (up to 500 characters).
        options: model, resolution, seed, prompt_extend, watermark.
        polling: deadlines and polling schedule.
        credentials_block: name of a saved DashScopeCredentials block; empty for the
            DASHSCOPE_API_KEY environment variable.
        storage_block: a saved block with storage credentials, as
            '<block-type-slug>/<name>', e.g. 'secret/kf2v-s3' or 'aws-credentials/prod'.
        storage_options: non-secret fsspec options.

    Returns:
        The persisted video: path, sha256, bytes and sidecar path.

    Example:
        ```python
        import asyncio
        from kf2v_flows.single import generate_video

        video = asyncio.run(generate_video("first.png", "last.png", "out/clip.mp4", "a slow pan"))
        print(video.path, video.sha256)
        ```
    """
    opts = await resolve_storage_options(storage_block, storage_options)
    ledger_root = parent(output)
    pair = await validate_frames(first_frame, last_frame, storage_options=opts)
    fingerprint = request_fingerprint(pair, prompt, negative_prompt, options)
    kept = await find_persisted(
        Ledger(ledger_root, opts), fingerprint, output, storage_options=opts
    )
    if kept is not None:  # an earlier run kept exactly this video here: no API call at all
        get_run_logger().info("Already persisted at %s; nothing to do", output)
        return kept
    submission = await submit_kf2v(
        pair,
        prompt,
        negative_prompt,
        options,
        ledger_root=ledger_root,
        credentials=credentials_block,
        storage_options=opts,
    )
    state = await poll_until_done(
        submission.task_id,
        credentials=credentials_block,
        schedule=polling.schedule,
        deadline_seconds=polling.deadline_seconds,
        queue_deadline_seconds=polling.queue_deadline_seconds,
        ledger_root=ledger_root,
        fingerprint=submission.fingerprint,
        storage_options=opts,
    )
    return await persist_video(
        state,
        output,
        submission=submission,
        credentials=credentials_block,
        ledger_root=ledger_root,
        storage_options=opts,
    )
