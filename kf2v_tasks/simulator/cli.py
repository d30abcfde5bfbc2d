"""``kf2v simulator`` / ``python -m kf2v_tasks.simulator``: run the simulator in the foreground."""

from __future__ import annotations

import argparse

from kf2v_tasks.simulator.config import RuntimeDistribution, SimulatorConfig
from kf2v_tasks.simulator.faults import FaultConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    parser.add_argument("--port", type=int, default=8910, help="port (0 picks a free one)")
    parser.add_argument("--speed", type=float, default=1.0, help="service seconds per real second")
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any)")
    parser.add_argument("--faults", default="", help='e.g. "query.error500=0.05,download.cut=0.1"')
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--concurrency-mode", choices=["queue", "reject"], default="queue")
    parser.add_argument("--submits-per-second", type=float, default=2.0)
    parser.add_argument("--queries-per-second", type=float, default=20.0)
    parser.add_argument("--rate-limits-real-time", action="store_true")
    parser.add_argument("--render", choices=["full", "tiny"], default="full")
    parser.add_argument(
        "--runtime", default="60:300", help="LOW:HIGH (uniform) or N (fixed), service s"
    )
    parser.add_argument(
        "--video-bytes", type=int, default=None, help="serve N filler bytes instead"
    )
    parser.add_argument("--allow-remote-fetch", action="store_true")


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Build the :class:`SimulatorConfig` the parsed options describe."""
    return SimulatorConfig(
        host=args.host,
        port=args.port,
        speed=args.speed,
        api_key=args.api_key,
        faults=FaultConfig.parse(args.faults or ""),
        seed=args.seed,
        max_concurrent=args.max_concurrent,
        concurrency_mode=args.concurrency_mode,
        submits_per_second=args.submits_per_second,
        queries_per_second=args.queries_per_second,
        rate_limits_real_time=args.rate_limits_real_time,
        render=args.render,
        runtime=RuntimeDistribution.parse(args.runtime),
        video_bytes=args.video_bytes,
        allow_remote_fetch=args.allow_remote_fetch,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C / SIGTERM; returns the exit code."""
    from kf2v_tasks.simulator.server import Simulator

    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    sim = Simulator(config)
    print(f"kf2v simulator listening; use DASHSCOPE_HTTP_BASE_URL={sim.base_url}", flush=True)
    print(f"admin: {sim.admin_url}/stats  speed={config.speed}", flush=True)
    sim.serve_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m kf2v_tasks.simulator``."""
    parser = argparse.ArgumentParser(prog="kf2v simulator", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
