"""``kf2v storyboard``: N keyframes become one film of N-1 transitions.

The arguments are checked here, before a Prefect server or the simulator starts; the
flow (and with it Prefect's engine) is imported only inside the command.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from kf2v_tasks._cli.errors import UsageError
from kf2v_tasks._cli.inputs import concurrency_from_args, defaults_from_args
from kf2v_tasks._cli.service import flow_service


def check_storyboard_args(args: argparse.Namespace) -> None:
    """Refuse what cannot make a film, naming the argument and the reason.

    Raises:
        UsageError: fewer than 2 keyframes, a --prompt-each count that is not one per
            transition, a local keyframe that does not exist, an --output that is not .mp4.
    """
    from kf2v_tasks.storage.paths import is_url

    frames = args.frames
    if len(frames) < 2:
        raise UsageError(
            f"argument FRAME: a storyboard needs at least 2 keyframes, got {len(frames)}"
        )
    if args.prompt_each is not None and len(args.prompt_each) != len(frames) - 1:
        raise UsageError(
            f"argument --prompt-each: expected {len(frames) - 1} prompts (one per transition "
            f"between {len(frames)} keyframes), got {len(args.prompt_each)}"
        )
    if not args.output.lower().endswith(".mp4"):
        raise UsageError(f"argument --output: the film must end in .mp4, got {args.output!r}")
    for i, frame in enumerate(frames, start=1):
        if is_url(frame):
            continue  # read (and checked) by the flow, before anything is spent
        path = os.path.expanduser(frame)
        if not os.path.exists(path):
            raise UsageError(f"argument FRAME: keyframe {i} {frame!r}: no such file")
        if os.path.isdir(path):
            raise UsageError(f"argument FRAME: keyframe {i} {frame!r}: is a folder, not an image")


def cmd_storyboard(args: argparse.Namespace) -> int:
    """Generate the transitions and stitch the film; 0 made, 1 failed, 3 over max_cost."""
    from rich.console import Console
    from rich.markup import escape

    from kf2v_tasks._cli.errors import summary_exit_code
    from kf2v_tasks._cli.report import print_summary, progress
    from kf2v_tasks.errors import StoryboardFailedError

    check_storyboard_args(args)
    defaults = defaults_from_args(args)
    if args.continue_clips:  # a chain the model cannot make is said before anything starts
        from kf2v_tasks.storyboard.plan import continuation_step

        try:
            continuation_step(list(args.frames), defaults)
        except ValueError as exc:
            raise UsageError(
                f"argument --continue: {exc}".replace("continue_clips: ", "")
            ) from None
    concurrency = concurrency_from_args(args)
    console = Console(stderr=True, soft_wrap=True)
    with flow_service(args) as credentials:
        from kf2v_flows.storyboard import generate_storyboard

        with progress(console):
            state = asyncio.run(
                generate_storyboard(
                    frames=list(args.frames),
                    output=args.output,
                    prompt=args.prompt,
                    prompts=args.prompt_each,
                    defaults=defaults,
                    concurrency=concurrency,
                    max_cost=args.max_cost,
                    credentials_block=credentials,
                    storage_block=args.storage_block,
                    storage_options=args.storage_options,
                    continue_clips=args.continue_clips,
                    return_state=True,
                )
            )
    value = state.result(raise_on_failure=False)
    if isinstance(value, StoryboardFailedError):
        print_summary(console, value.summary)
        console.print(f"[red]storyboard failed[/red] {escape(str(value))}")
        return summary_exit_code(value.summary) or 1
    if isinstance(value, BaseException):
        raise value
    print_summary(console, value.batch)
    for film in value.films:
        s = film.stitch
        how = f"re-encoded: {s.reencode_reason}" if s.reencoded else "remuxed, not re-encoded"
        reused = " (intact from an earlier run)" if film.status == "reused" else ""
        console.print(
            f"film: {film.path}{reused}: {s.frames} frames from {s.clips} clips, {how}",
            markup=False,
        )
    return 0
