"""``kf2v simulator`` / ``python -m kf2v_tasks.simulator``: run the simulator in the foreground.

Once listening it prints the ``export`` lines a user's own flow or script needs (key,
base URL and the matching ``KF2V_TIME_SCALE``), then serves until Ctrl-C or SIGTERM.
Without the ``simulator`` extra it says how to install it, in one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO

from kf2v_tasks.simulator.config import RuntimeDistribution, SimulatorConfig
from kf2v_tasks.simulator.faults import FaultConfig

#: The key the printed ``export`` line suggests; any non-empty key is accepted by default.
SUGGESTED_API_KEY = "sk-simulator"
#: Default ``--speed``: one service minute per real second, as the simulator ``kf2v run``
#: starts when no key is set (and as the README's sample prints); ``--speed 1`` is real time.
DEFAULT_SPEED = 60.0


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], rule: str):
    """An argparse ``type`` that converts, then checks; errors read ``must be <rule>, got 'x'``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    parse.__name__ = rule  # argparse names the type in some messages
    return parse


def _spec(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` for specs whose parser raises ValueError with a reason."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


_PORT = _checked(int, lambda v: 0 <= v <= 65535, "a port in 0..65535")
_POSITIVE = _checked(float, lambda v: v > 0, "> 0")
_AT_LEAST_ONE = _checked(int, lambda v: v >= 1, ">= 1")
_NATURAL = _checked(int, lambda v: v >= 0, ">= 0")


def parse_model_limit(spec: str) -> tuple[str, tuple[int, float]]:
    """``"MODEL=RUNNING:CREATES"`` -> ``(MODEL, (RUNNING, CREATES))`` as ``--model-limit`` takes it.

    Example:
        ```python
        from kf2v_tasks.simulator.cli import parse_model_limit
        assert parse_model_limit("wan2.7-i2v=3:1.5") == ("wan2.7-i2v", (3, 1.5))
        ```
    """
    model, sep, figures = spec.partition("=")
    running, colon, creates = figures.partition(":")
    try:
        limits = (int(running), float(creates))
    except ValueError:
        limits = (0, 0.0)
    if not (sep and colon and model.strip()) or limits[0] < 1 or not limits[1] > 0:
        raise ValueError(
            f"model limit {spec!r} needs MODEL=RUNNING:CREATES with RUNNING >= 1 and "
            "CREATES > 0, e.g. wan2.7-i2v=3:1.5"
        )
    return model.strip(), limits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to ``parser`` (every option validated and explained).

    Example:
        ```python
        import argparse
        from kf2v_tasks.simulator.cli import add_arguments, config_from_args
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        config = config_from_args(parser.parse_args(["--port", "0", "--speed", "60"]))
        ```
    """
    parser.add_argument(
        "--host", default="127.0.0.1", help="Interface to bind (default: loopback only)."
    )
    parser.add_argument(
        "--port", type=_PORT, default=8910, help="Port (default 8910; 0 picks a free one)."
    )
    parser.add_argument(
        "--speed",
        type=_POSITIVE,
        default=DEFAULT_SPEED,
        help="Service seconds per real second: 60 runs a 5-minute task in 5 s; 1 is real "
        f"time (default {DEFAULT_SPEED:g}, as `kf2v run` with no key).",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="Accept only this key (default: any non-empty key, each its own account).",
    )
    parser.add_argument(
        "--faults",
        type=_spec(FaultConfig.parse),
        default=FaultConfig(),
        help='Fault probabilities, e.g. "query.error500=0.05,download.cut=0.1".',
    )
    parser.add_argument(
        "--seed", type=_NATURAL, default=0, help="Seed of every random choice (default 0)."
    )
    parser.add_argument(
        "--max-concurrent",
        type=_AT_LEAST_ONE,
        default=None,
        help="Tasks of each model an account may run at once (default: each model's own "
        "figure from the models table, as the service: kf2v 2, wan2.7-i2v 5).",
    )
    parser.add_argument(
        "--concurrency-mode",
        choices=["queue", "reject"],
        default="queue",
        help="Over a model's running limit: queue tasks as PENDING (default) or reject with 429.",
    )
    parser.add_argument(
        "--submits-per-second",
        type=_POSITIVE,
        default=None,
        help="Creates of each model allowed per second before 429 (default: each model's "
        "own figure from the models table, as the service: kf2v 2, wan2.7-i2v 5).",
    )
    parser.add_argument(
        "--model-limit",
        type=_spec(parse_model_limit),
        action="append",
        default=[],
        metavar="MODEL=RUNNING:CREATES",
        help="One model's running-at-once and creates/s, over the two options above; "
        "repeatable, e.g. wan2.7-i2v=3:1.5.",
    )
    parser.add_argument(
        "--no-runtime-scaling",
        action="store_true",
        help="Run every task the drawn time, whatever its duration and resolution.",
    )
    parser.add_argument(
        "--queries-per-second",
        type=_POSITIVE,
        default=20.0,
        help="Task queries allowed per second before 429 (default 20, as the service).",
    )
    parser.add_argument(
        "--rate-limits-real-time",
        action="store_true",
        help="Keep the rate limits per real second even when --speed compresses time.",
    )
    parser.add_argument(
        "--render",
        choices=["full", "tiny"],
        default="full",
        help="Render real-size H.264 videos (full) or small fast ones (tiny).",
    )
    parser.add_argument(
        "--runtime",
        type=_spec(RuntimeDistribution.parse),
        default=RuntimeDistribution(),
        help="How long a task runs, in service seconds: LOW:HIGH (uniform) or N (fixed).",
    )
    parser.add_argument(
        "--video-bytes",
        type=_NATURAL,
        default=None,
        help="Serve N seeded filler bytes instead of a rendered video (download tests).",
    )
    parser.add_argument(
        "--allow-remote-fetch",
        action="store_true",
        help="Let tasks fetch frame URLs from any host (default: loopback, data: URIs, uploads).",
    )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Build the :class:`SimulatorConfig` the parsed options describe.

    Example:
        ```python
        config = config_from_args(parser.parse_args(["--speed", "600"]))
        ```
    """
    faults = args.faults if isinstance(args.faults, FaultConfig) else FaultConfig.parse(args.faults)
    runtime = args.runtime
    if not isinstance(runtime, RuntimeDistribution):
        runtime = RuntimeDistribution.parse(runtime)
    return SimulatorConfig(
        host=args.host,
        port=args.port,
        speed=args.speed,
        api_key=args.api_key,
        faults=faults,
        seed=args.seed,
        max_concurrent=args.max_concurrent,
        concurrency_mode=args.concurrency_mode,
        submits_per_second=args.submits_per_second,
        model_limits=dict(getattr(args, "model_limit", None) or []),
        runtime_scaling=not getattr(args, "no_runtime_scaling", False),
        queries_per_second=args.queries_per_second,
        rate_limits_real_time=args.rate_limits_real_time,
        render=args.render,
        runtime=runtime,
        video_bytes=args.video_bytes,
        allow_remote_fetch=args.allow_remote_fetch,
    )


def client_environment(base_url: str, speed: float, api_key: str | None = None) -> list[str]:
    """The ``export`` lines a user's own flow needs to talk to a simulator at ``base_url``.

    A key given with ``--api-key`` is never printed: the line says where it comes from.

    Example:
        ```python
        from kf2v_tasks.simulator.cli import client_environment
        assert client_environment("http://127.0.0.1:8910/api/v1", 60) == [
            "export DASHSCOPE_API_KEY=sk-simulator",
            "export DASHSCOPE_HTTP_BASE_URL=http://127.0.0.1:8910/api/v1",
            "export KF2V_TIME_SCALE=60",
        ]
        ```
    """
    key = (
        f"export DASHSCOPE_API_KEY={SUGGESTED_API_KEY}"
        if api_key is None
        else "# export DASHSCOPE_API_KEY=<the key given with --api-key>"
    )
    return [
        key,
        f"export DASHSCOPE_HTTP_BASE_URL={base_url}",
        # The client's waits must run at the simulator's speed, or polling looks 60x slow.
        f"export KF2V_TIME_SCALE={speed:g}",
    ]


def run(
    args: argparse.Namespace, *, out: TextIO | None = None, prog: str = "kf2v simulator"
) -> int:
    """Serve until Ctrl-C / SIGTERM; returns the exit code (2: extra missing or bad options).

    Example:
        ```python
        import argparse, sys
        from kf2v_tasks.simulator.cli import add_arguments, run
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        sys.exit(run(parser.parse_args(["--port", "0", "--speed", "60"])))
        ```
    """
    from kf2v_tasks.simulator import INSTALL_HINT, missing_dependencies

    out = out or sys.stdout
    missing = missing_dependencies()
    if missing:
        print(
            f"{prog}: error: the simulator needs {', '.join(missing)}: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    from kf2v_tasks.simulator.server import Simulator

    try:
        sim = Simulator(config)
    except OSError as exc:  # the port is taken, or the host is not ours
        print(
            f"{prog}: error: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr
        )
        return 2
    lines = [
        f"kf2v simulator: DashScope kf2v API at {sim.base_url} "
        f"(speed {config.speed:g}x; nothing is billed)",
        f"admin: {sim.admin_url}/stats",
        "For your own flows and scripts, in another shell:",
        *client_environment(sim.base_url, config.speed, config.api_key),
        "Ctrl-C stops it.",
    ]
    print("\n".join(lines), file=out, flush=True)
    sim.serve_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m kf2v_tasks.simulator``.

    Example:
        ```python
        from kf2v_tasks.simulator.cli import main
        main(["--port", "0", "--speed", "60", "--render", "tiny"])   # serves until Ctrl-C
        ```
    """
    parser = argparse.ArgumentParser(
        prog="python -m kf2v_tasks.simulator",
        description="Serve the local DashScope kf2v simulator.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv), prog=parser.prog)
