"""Turn parsed options into the library's inputs, and check the cheap things first.

A manifest that cannot be read, or whose header is wrong, and an output that cannot be
written (read-only, an unknown protocol, ``s3://`` without credentials) fail here in one
line, before a Prefect server or the simulator is started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from typing import Any, Optional

from kf2v_tasks._cli.errors import UsageError
from kf2v_tasks.batch.manifest import RowDefaults


def defaults_from_args(args: argparse.Namespace) -> RowDefaults:
    """The :class:`RowDefaults` that ``--model``, ``--seed``, ``--prompt`` … describe."""
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


def check_output(args: argparse.Namespace, *, folder: bool = True) -> None:
    """``--output`` can be written: a known protocol, credentials for ``s3://``, a local
    folder (``folder=False``: a file's folder) this process can write in.

    Skipped with ``--storage-block`` (its options need the Prefect API).

    Raises:
        UsageError: one line naming ``--output``, the reason and the fix (exit 2).
    """
    import fsspec

    from kf2v_tasks.storage.paths import is_url

    output = args.output
    if getattr(args, "storage_block", None):
        return
    protocol = output.split("://", 1)[0].lower() if is_url(output) else "file"
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise UsageError(
            f"argument --output: unknown protocol {protocol}:// in {output!r}: give a local "
            "folder or a URL fsspec knows (s3://bucket/prefix, gs://, az://, ...)"
        ) from None
    except ImportError as exc:
        raise UsageError(f"argument --output: {protocol}:// cannot be used here: {exc}") from None
    if protocol in ("s3", "s3a"):
        _check_s3_credentials(output, args.storage_options)
    elif protocol in ("file", "local"):
        path = os.path.abspath(os.path.expanduser(output.split("://", 1)[-1]))
        _check_writable(path if folder else os.path.dirname(path))


def _check_s3_credentials(output: str, options: Optional[dict]) -> None:
    """The credentials s3fs would find (options, environment, AWS config), found now."""
    o = options or {}
    if o.get("anon") or o.get("key") or o.get("token") or o.get("session"):
        return
    import botocore.exceptions
    import botocore.session

    try:
        found = botocore.session.Session(profile=o.get("profile")).get_credentials()
    except botocore.exceptions.BotoCoreError as exc:  # e.g. a profile that is not there
        raise UsageError(f"argument --output: {output}: {exc}") from None
    if found is None:
        raise UsageError(
            f"argument --output: no AWS credentials found for {output}: set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass "
            "--storage-block aws-credentials/<name>"
        )


def _check_writable(folder: str) -> None:
    """A file can be made in ``folder``, or in its nearest existing parent (nothing is left)."""
    probe = folder
    while not os.path.isdir(probe):
        if os.path.exists(probe):
            raise UsageError(
                f"argument --output: {probe} is a file, not a folder: give a folder path"
            )
        probe = os.path.dirname(probe)
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".kf2v-probe-"):
            pass
    except OSError as exc:
        raise UsageError(
            f"argument --output: cannot write in {probe} ({exc.strerror or exc}): give a "
            "folder you can write to"
        ) from None


def concurrency_from_args(args: argparse.Namespace) -> Any:
    """The account quota of ``--concurrency``, ``--lane``, ``--queue-ahead`` and the rates."""
    from kf2v_tasks.batch.config import ConcurrencySettings

    return ConcurrencySettings(
        max_in_flight=args.concurrency,
        lanes=dict(getattr(args, "lane", None) or []),
        queue_ahead=args.queue_ahead,
        submits_per_second=args.submits_per_second,
        queries_per_second=args.queries_per_second,
    )
