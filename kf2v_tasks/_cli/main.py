"""The ``kf2v`` command: run a manifest, generate one video or a storyboard, validate, serve.

It parses the options, checks what is cheap to check, and calls the flows. A failure is
one line on stderr (``kf2v run: error: ...``) with exit code 2 for bad input and 1 for
failed work; ``--debug`` shows the traceback instead. With no ``DASHSCOPE_API_KEY`` set,
``run`` and ``generate`` start the built-in simulator and say so in one line.

Nothing heavy is imported at module level: ``kf2v --help``, ``kf2v --version`` and
``kf2v validate`` start neither Prefect nor the simulator, and the flows are imported
only by the commands that run them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Optional

from kf2v_tasks._cli.argtypes import model_option_problem
from kf2v_tasks._cli.errors import describe, exit_code
from kf2v_tasks._cli.parser import build_parser


def _simulator(args: argparse.Namespace) -> int:
    """``kf2v simulator``: serve in the foreground (needs the simulator extra)."""
    from kf2v_tasks.simulator import cli as simulator_cli

    return simulator_cli.run(args)


def _stack(args: argparse.Namespace) -> int:
    """``kf2v stack``: a local Prefect server, workers and the simulator."""
    from kf2v_tasks._cli.stack_command import run_stack

    return run_stack(args)


def _limits(args: argparse.Namespace) -> int:
    """``kf2v limits apply|show``: each lane's Prefect global concurrency limit."""
    import asyncio

    from kf2v_tasks._cli.service import quiet_prefect
    from kf2v_tasks.lanes.gcl import apply_limits, show_limits

    with quiet_prefect(verbose=False):
        if args.limits_command == "apply":
            result = asyncio.run(_apply_lane_limits(args, apply_limits))
        else:
            result = asyncio.run(show_limits())
    print(json.dumps(result, indent=2))
    return 0


async def _apply_lane_limits(args: argparse.Namespace, apply_limits) -> list[dict]:
    """Each model's lane limit on the account, at running + queue-ahead slots."""
    from kf2v_tasks.batch.config import ConcurrencySettings
    from kf2v_tasks.credentials import aresolve_credentials
    from kf2v_tasks.dashscope.catalog import active_catalog
    from kf2v_tasks.lanes.account import account_label
    from kf2v_tasks.lanes.names import lane_limit_name

    lanes = dict(args.lane)
    models = args.model or list(
        dict.fromkeys([m.name for m in active_catalog().models] + list(lanes))
    )
    quotas = ConcurrencySettings(max_in_flight=args.concurrency, lanes=lanes).quotas(models)
    label = account_label(await aresolve_credentials(args.credentials_block))
    return [
        await apply_limits(
            lane_limit_name(args.prefix, label, model),
            quota.running,
            queue_ahead=args.queue_ahead,
        )
        for model, quota in quotas.items()
    ]


def _run(args: argparse.Namespace) -> int:
    """``kf2v run``: every row of a manifest."""
    from kf2v_tasks._cli.run import cmd_run

    return cmd_run(args)


def _generate(args: argparse.Namespace) -> int:
    """``kf2v generate``: one video."""
    from kf2v_tasks._cli.run import cmd_generate

    return cmd_generate(args)


def _storyboard(args: argparse.Namespace) -> int:
    """``kf2v storyboard``: N keyframes, one film."""
    from kf2v_tasks._cli.storyboard import cmd_storyboard

    return cmd_storyboard(args)


def _validate(args: argparse.Namespace) -> int:
    """``kf2v validate``: check and estimate, without Prefect."""
    from kf2v_tasks._cli.validate import cmd_validate

    return cmd_validate(args)


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "generate": _generate,
    "storyboard": _storyboard,
    "validate": _validate,
    "simulator": _simulator,
    "limits": _limits,
    "stack": _stack,
}


#: Commands that start Prefect (a temporary server, workers) or Prefect's client.
_PREFECT_COMMANDS = frozenset({"run", "generate", "storyboard", "limits", "stack"})


def _telemetry_off() -> None:
    """Prefect's telemetry off for this command and every server and worker it starts.

    Set before Prefect is imported, as defaults in the environment the temporary server
    and the stack's processes inherit (so no "Failed to send telemetry" from them, and no
    SDK analytics from this process); a user who set either variable keeps their value.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks that need two options at once; reported like argparse's own errors."""
    if hasattr(args, "resolution") and hasattr(args, "model"):
        problem = model_option_problem(
            args.model,
            args.resolution,
            getattr(args, "duration", None),
            getattr(args, "audio", None),
        )
        if problem:
            flag, reason = problem
            _subparser(parser, args.command).error(f"argument {flag}: {reason}")


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    return parser  # pragma: no cover - every command is a subparser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``kf2v`` console script and of ``python -m kf2v_tasks._cli.main``.

    Returns:
        0 done; 1 the work ran and something failed; 2 bad options or input (said in one
        line); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_combinations(parser, args)
    prog = f"kf2v {args.command}"
    if args.command in _PREFECT_COMMANDS:
        _telemetry_off()
        # Ctrl-C stays Python's own (asyncio.run cancels the flow run's task on it); inside
        # a flow run Prefect's SIGTERM handler applies (TerminationSignal).
        signal.signal(signal.SIGTERM, _on_signal)
    try:
        return _COMMANDS[args.command](args)
    except BaseException as exc:
        # A signal may surface as another error (a library wrapping it): it still decides.
        code = 128 + _RECEIVED[0] if _RECEIVED else _signal_exit_code(exc)
        if code is None:
            if not isinstance(exc, Exception) or getattr(args, "debug", False):
                raise
            code = exit_code(exc)
            hint = "" if code == 2 else " (--debug shows the traceback)"
            print(f"{prog}: error: {describe(exc)}{hint}", file=sys.stderr, flush=True)
            return code
        # Ctrl-C, SIGTERM: the run has stopped and said what is left.
        print(f"{prog}: {'interrupted' if code == 130 else 'terminated'}", file=sys.stderr)
        _release_claims()
        if argv is None:  # the command itself, not a caller in Python: stop in a blink
            _exit_now(code)
        return code


#: Signals this command received, first first.
_RECEIVED: list[int] = []


class _Terminated(BaseException):
    """SIGTERM outside a flow run (inside one, Prefect raises its ``TerminationSignal``)."""

    signal = signal.SIGTERM


def _on_signal(signum: int, frame: object) -> None:
    _RECEIVED.append(signum)
    raise _Terminated()


def _release_claims() -> None:
    """Claims still held (work started before the flow run, say) go with the command."""
    if "kf2v_tasks.generation.claim_lease" in sys.modules:
        from kf2v_tasks.generation.claim_lease import release_all

        release_all()


def _exit_now(code: int) -> None:
    """Exit without tearing the interpreter down (seconds on a busy machine: Prefect's heap).

    Only once everything is written and every child is stopped: the run's clean-up, the
    server's logs and events, and the files of results are done by then.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _signal_exit_code(exc: Optional[BaseException]) -> Optional[int]:
    """130 for Ctrl-C, 128 + the signal's number for SIGTERM (Prefect's or ours), else None;
    also when a library wrapped the signal into an error of its own (pydantic does)."""
    prefect_exceptions = sys.modules.get("prefect.exceptions")
    external: tuple[type[BaseException], ...] = (_Terminated,)
    if prefect_exceptions is not None:
        external += (prefect_exceptions.ExternalSignal,)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt):
            return 130
        if isinstance(exc, external) and isinstance(getattr(exc, "signal", None), int):
            return 128 + exc.signal
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
