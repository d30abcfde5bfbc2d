"""Turn parsed options into the library's inputs, and check the cheap things first.

A manifest that cannot be read, or whose header is wrong, fails here in one line,
before a Prefect server or the simulator is started.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any, Optional

from kf2v_tasks.batch.manifest import RowDefaults


def defaults_from_args(args: argparse.Namespace) -> RowDefaults:
    """The :class:`RowDefaults` that ``--model``, ``--seed``, ``--prompt`` … describe.

    Example:
        ```python
        from kf2v_tasks._cli.inputs import defaults_from_args
        from kf2v_tasks._cli.parser import build_parser
        args = build_parser().parse_args(["validate", "m.csv", "--seed", "7"])
        assert defaults_from_args(args).seed == 7
        ```
    """
    values: dict[str, Any] = {}
    for name in ("model", "resolution", "seed", "negative_prompt", "prompt", "duration"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    if args.no_prompt_extend:
        values["prompt_extend"] = False
    if args.watermark:
        values["watermark"] = True
    return RowDefaults(**values)


async def storage_options_from_args(args: argparse.Namespace) -> Optional[dict]:
    """``--storage-options``, merged over the options of ``--storage-block`` when given.

    Loading a block needs the Prefect API; without ``--storage-block`` nothing is loaded.

    Example:
        ```python
        import asyncio
        opts = asyncio.run(storage_options_from_args(args))
        ```
    """
    if not args.storage_block:
        return args.storage_options
    from kf2v_tasks.credentials import resolve_storage_options

    return await resolve_storage_options(args.storage_block, args.storage_options)


def check_manifest(args: argparse.Namespace, defaults: RowDefaults) -> None:
    """Read and parse the manifest now, so a file-level problem is one line, not a failed run.

    Skipped with ``--storage-block`` (reading would need the Prefect API); the flow then
    reports the same error.

    Raises:
        ManifestFileError: the file cannot be read, is not UTF-8 text, or its header is wrong
            (a required column missing, an unknown column without ``--extra-columns``).

    Example:
        ```python
        check_manifest(args, defaults_from_args(args))
        ```
    """
    if args.storage_block:
        return
    from kf2v_tasks.batch.manifest import load_manifest

    asyncio.run(
        load_manifest(
            args.manifest,
            defaults=defaults,
            storage_options=args.storage_options,
            extra_columns=getattr(args, "extra_columns", False),
        )
    )


def concurrency_from_args(args: argparse.Namespace) -> Any:
    """The account quota of ``--concurrency``, ``--lane``, ``--queue-ahead`` and the rates.

    Example:
        ```python
        from kf2v_tasks._cli.parser import build_parser
        args = build_parser().parse_args(["run", "m.csv", "--output", "o", "--queue-ahead", "0"])
        assert concurrency_from_args(args).queue_ahead == 0
        ```
    """
    from kf2v_tasks.batch.config import ConcurrencySettings

    return ConcurrencySettings(
        max_in_flight=args.concurrency,
        lanes=dict(getattr(args, "lane", None) or []),
        queue_ahead=args.queue_ahead,
        submits_per_second=args.submits_per_second,
        queries_per_second=args.queries_per_second,
    )
