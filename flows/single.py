"""The single-video flow: one first frame, one last frame, one prompt, one MP4."""

from __future__ import annotations

from typing import Annotated, Optional, Union

from prefect.logging import get_run_logger
from pydantic import Field

from kf2v_tasks._twins import twin_flow
from kf2v_tasks.credentials import DashScopeCredentials, resolve_storage_options
from kf2v_tasks.dashscope.models import GenerationOptions
from kf2v_tasks.dashscope.polling import PollSchedule
from kf2v_tasks.generation.fingerprint import request_fingerprint
from kf2v_tasks.generation.ledger import Ledger
from kf2v_tasks.generation.persisted import PersistedVideo, find_persisted
from kf2v_tasks.storage.paths import parent
from kf2v_tasks.tasks import apersist_video, apoll_until_done, asubmit_kf2v, avalidate_frames

__all__ = ["generate_video"]


@twin_flow(
    name="kf2v-generate-video",
    description="Generate one video that moves from a first frame to a last frame.",
)
async def generate_video(
    first_frame: Annotated[
        Optional[str],
        Field(description="First frame: a path or URL (s3://, https://); empty with first_clip."),
    ],
    last_frame: Annotated[
        Optional[str], Field(description="Last frame: a path or URL; optional with first_clip.")
    ],
    output: Annotated[str, Field(description="Where the MP4 goes: a path or URL ending in .mp4.")],
    prompt: Annotated[
        Optional[str], Field(description="What should happen (up to 800 characters).")
    ] = None,
    negative_prompt: Annotated[
        Optional[str], Field(description="What to avoid (up to 500 characters).")
    ] = None,
    options: GenerationOptions = GenerationOptions(),
    audio: Annotated[
        Optional[str],
        Field(
            description="Driving audio (mp3/wav, 2-30 s): a path or URL; only for models "
            "that take one (wan2.7-i2v). Empty: the model makes its own sound, if any."
        ),
    ] = None,
    first_clip: Annotated[
        Optional[str],
        Field(
            description="A clip to continue instead of a first frame (mp4/mov, 2-10 s): a path "
            "or URL; only for models that continue clips (wan2.7-i2v). The video lasts "
            "options.duration in total, and all of it is billed."
        ),
    ] = None,
    deadline_seconds: Annotated[
        float, Field(gt=0, description="Give up waiting for the video after this many seconds.")
    ] = 3 * 3600.0,
    credentials_block: Annotated[
        Union[DashScopeCredentials, str, None],
        Field(
            description="DashScope credentials: a saved block, or its name. Empty: the "
            "DASHSCOPE_API_KEY environment variable."
        ),
    ] = None,
    storage_block: Annotated[
        Optional[str],
        Field(
            description="A saved block with storage credentials, as `type/name`, e.g. "
            "`aws-credentials/prod` or `secret/kf2v-s3`."
        ),
    ] = None,
    storage_options: Annotated[
        Optional[dict], Field(description="Non-secret fsspec options, e.g. an S3 endpoint_url.")
    ] = None,
) -> PersistedVideo:
    """Validate the frames, submit, wait and keep the video (with a JSON sidecar).

    Re-running with the same inputs reuses the earlier task (or skips the download if
    the video is already there), so a retry never pays twice. Callable from a sync parent
    flow (it returns the video) and awaitable from an async one.

    Args:
        first_frame: first frame: local path, file://, http(s):// or any fsspec URL.
        last_frame: last frame, same forms.
        output: where the MP4 goes (local path or fsspec URL ending in .mp4).
        prompt: text prompt (up to 800 characters).
        negative_prompt: what to avoid (up to 500 characters).
        options: model, resolution, seed, prompt_extend, watermark, duration (kf2v: 5 s;
            wan2.7-i2v: 2..15 s).
        audio: a driving audio (mp3/wav) for models that take one (wan2.7-i2v).
        first_clip: a clip (mp4/mov) to continue up to ``options.duration`` in total,
            instead of a first frame (wan2.7-i2v); ``last_frame`` is then optional.
        deadline_seconds: total wait for the task, in service seconds.
        credentials_block: a DashScopeCredentials block or a saved block's name; empty
            for the DASHSCOPE_API_KEY environment variable.
        storage_block: a saved block with storage credentials, as `type/name`.
        storage_options: non-secret fsspec options.

    Returns:
        The persisted video: path, sha256, bytes, sidecar, model, resolution, cost.

    Example:
        ```python
        from prefect import flow
        from kf2v_flows.single import generate_video

        @flow
        def clip():
            video = generate_video("first.png", "last.png", "out/clip.mp4", "a slow pan")
            print(video.path, video.sha256)

        clip()
        ```
    """
    opts = await resolve_storage_options(storage_block, storage_options)
    ledger_root = parent(output)
    pair = await avalidate_frames(
        first_frame,
        last_frame,
        storage_options=opts,
        audio=audio,
        model=options.model,
        first_clip=first_clip,
    )
    fingerprint = request_fingerprint(pair, prompt, negative_prompt, options)
    kept = await find_persisted(
        Ledger(ledger_root, opts), fingerprint, output, storage_options=opts
    )
    if kept is not None:  # an earlier run kept exactly this video here: no API call at all
        get_run_logger().info("Already persisted at %s; nothing to do", output)
        return kept
    submission = await asubmit_kf2v(
        pair,
        prompt,
        negative_prompt,
        options,
        ledger_root=ledger_root,
        credentials=credentials_block,
        storage_options=opts,
    )
    state = await apoll_until_done(
        submission,
        credentials=credentials_block,
        schedule=PollSchedule(),
        deadline_seconds=deadline_seconds,
        ledger_root=ledger_root,
        storage_options=opts,
    )
    return await apersist_video(
        state,
        output,
        submission=submission,
        credentials=credentials_block,
        ledger_root=ledger_root,
        storage_options=opts,
    )
