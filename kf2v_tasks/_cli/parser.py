"""The ``kf2v`` argument parser: every option explained, every value checked while parsing.

Building it imports neither Prefect nor the simulator's server, so ``kf2v --help`` and
``kf2v --version`` answer at once.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

from kf2v_tasks._cli import argtypes
from kf2v_tasks._cli.errors import EXIT_CODES_HELP
from kf2v_tasks._version import __version__
from kf2v_tasks.dashscope.models import DEFAULT_MODEL, Resolution

#: Speed of the simulator ``run``/``generate`` start when no key is set.
EMBEDDED_SPEED = 60.0

_DESCRIPTION = """\
Wan kf2v (first-and-last-frame video) on Prefect.

With no DASHSCOPE_API_KEY (and no --credentials-block), `run` and `generate` start the
built-in DashScope simulator and say so: nothing is billed.
"""


class KfParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``kf2v run: error: argument --x: reason``.

    The usage block argparse would print first is left out: ``--help`` shows it.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def version_text() -> str:
    """``kf2v <version> (Prefect <version>)``, read without importing Prefect."""
    try:
        prefect = version("prefect")
    except PackageNotFoundError:  # pragma: no cover - prefect is a dependency
        prefect = "not installed"
    python = ".".join(str(n) for n in sys.version_info[:3])
    return f"kf2v {__version__} (Prefect {prefect}, Python {python})"


def _debug(p: argparse.ArgumentParser, default: object = argparse.SUPPRESS) -> None:
    # SUPPRESS on subcommands: their default must not undo a `kf2v --debug run ...`.
    p.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="Show the full traceback when something fails.",
    )


def _generation_options(p: argparse.ArgumentParser, *, per_row: bool = True) -> None:
    """What every row or video may override: model, resolution, length, seed, prompts, flags.

    ``per_row``: the values are defaults for a manifest's empty cells (said in the help).
    """
    default_for = " for rows that leave it empty" if per_row else ""
    p.add_argument(
        "--model",
        type=argtypes.model_name,
        metavar="MODEL",
        help=f"Model{default_for}: {argtypes.builtin_model_names()} (and dated variants "
        f"such as wan2.7-i2v-2026-04-25), or one a models file adds (default "
        f"{DEFAULT_MODEL}). The 2.1 plus models offer 720P only, wan2.7-i2v 720P and 1080P.",
    )
    p.add_argument(
        "--resolution",
        choices=[r.value for r in Resolution],
        help=f"Resolution tier{default_for} (default: the model's own, 720P for kf2v, 1080P "
        "for wan2.7-i2v); the aspect ratio follows the first frame.",
    )
    p.add_argument(
        "--duration",
        type=argtypes.duration,
        metavar="SECONDS",
        help=f"Video length in whole seconds{default_for} (default: the model's, 5). The "
        "kf2v models make 5 s only; wan2.7-i2v 2..15 s (the models table says).",
    )
    p.add_argument(
        "--seed", type=argtypes.seed, help="Seed in 0..2147483647 (default: random per task)."
    )
    p.add_argument("--negative-prompt", help="What to avoid (the service keeps 500 characters).")
    p.add_argument(
        "--no-prompt-extend", action="store_true", help="Do not let the service rewrite prompts."
    )
    p.add_argument("--watermark", action="store_true", help='Add the "AI生成" watermark.')


def _storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage-options",
        type=argtypes.json_object,
        help='Non-secret fsspec options as a JSON object, e.g. \'{"client_kwargs": '
        '{"endpoint_url": "http://127.0.0.1:9000"}}\'.',
    )
    p.add_argument(
        "--storage-block",
        type=argtypes.block_slug,
        help="Saved block with storage credentials, as <block-type-slug>/<name>, "
        "e.g. aws-credentials/prod.",
    )


def _service_options(p: argparse.ArgumentParser) -> None:
    """How ``run`` and ``generate`` reach DashScope (or the built-in simulator)."""
    p.add_argument(
        "--credentials-block",
        action="append",
        default=None,
        help="Saved DashScopeCredentials block name (default: DASHSCOPE_API_KEY, else the "
        "built-in simulator). `kf2v run` takes it more than once: an account pool, each "
        "account with its own lanes.",
    )
    p.add_argument(
        "--time-scale",
        type=argtypes.number(above=0),
        help="Divide every wait by this factor (KF2V_TIME_SCALE); for rehearsals on a "
        "simulator running at the same --speed.",
    )
    p.add_argument(
        "--simulator-speed",
        type=argtypes.number(above=0),
        default=EMBEDDED_SPEED,
        help=f"Speed of the built-in simulator (default {EMBEDDED_SPEED:g}); used only "
        "when no key and no --credentials-block is given.",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="Show Prefect's run logs on the terminal."
    )


def _add_run(sub) -> None:
    run = sub.add_parser(
        "run",
        help="Generate every row of a CSV manifest.",
        description="Generate every row "
        "of a CSV manifest; rows already made by an earlier run are skipped.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("manifest", help="CSV manifest (path or fsspec URL).")
    run.add_argument("--output", required=True, help="Output folder (path or fsspec URL).")
    _quota(run)
    run.add_argument("--prompt", help="Prompt for rows whose prompt cell is empty.")
    _max_cost(run)
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="Validate and estimate only; the table goes to results.dry-run.csv (results.csv "
        "is never touched).",
    )
    run.add_argument("--fail-fast", action="store_true", help="Submit nothing if a row is invalid.")
    run.add_argument(
        "--task-runs",
        choices=["per_step", "per_row"],
        default="per_step",
        help="Prefect task runs per row: one per step (default) or one per row (lighter).",
    )
    _extra_columns(run)
    _generation_options(run)
    _storage_options(run)
    _service_options(run)
    _debug(run)


def _lane_args(p: argparse.ArgumentParser) -> None:
    """The lanes' sizes: one for every model, or per model."""
    p.add_argument(
        "--concurrency",
        type=argtypes.integer(1, 1024),
        default=None,
        help="Running tasks of every model's lane (default: each model's own quota from the "
        "models table: kf2v 2, wan2.7-i2v 5).",
    )
    p.add_argument(
        "--lane",
        action="append",
        default=[],
        metavar="MODEL=RUNNING[:CREATES]",
        type=argtypes.lane,
        help="One model's lane, for an account with raised quotas (repeatable): "
        "--lane wan2.7-i2v=8:5 is 8 running tasks and 5 creates/s.",
    )
    p.add_argument(
        "--queue-ahead",
        type=argtypes.integer(0, 64),
        default=1,
        help="Tasks kept waiting at the service beyond each lane's running ones, so the next "
        "one starts the moment a running one ends (default 1; 0 turns it off). Cancelled, "
        "free, if the run stops early.",
    )


def _quota(p: argparse.ArgumentParser) -> None:
    """The account quota a run keeps to: a lane per model, creates and queries per second."""
    _lane_args(p)
    p.add_argument(
        "--submits-per-second",
        type=argtypes.number(above=0),
        default=None,
        help="Create calls per second of every lane (default: each model's own, 2 or 5).",
    )
    p.add_argument(
        "--queries-per-second",
        type=argtypes.number(above=0),
        default=20.0,
        help="Task queries per second (default 20, the account default).",
    )
    p.add_argument(
        "--order",
        choices=["longest", "manifest"],
        default="longest",
        help="longest (default): within each lane, rows start longest first (predicted from "
        "duration, resolution and the run times this output has seen), for the shortest "
        "tail; manifest: in manifest order.",
    )


def _max_cost(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-cost",
        type=argtypes.number(at_least=0),
        help="Budget in the price table's currency. Rows are counted in manifest order; the "
        "plan printed before anything is spent names those that do not fit, which are never "
        "submitted (over_budget, exit code 3).",
    )


def _extra_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--extra-columns",
        action="store_true",
        help="Accept manifest columns of your own and copy them into the results file, after "
        "its own columns (without it, an unknown column is an error).",
    )


def _add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="Generate one video.", description="Generate one video.")
    gen.add_argument("--first", required=True, help="First frame (path or URL).")
    gen.add_argument("--last", required=True, help="Last frame (path or URL).")
    gen.add_argument("--prompt", help="Text prompt (the service keeps 800 characters).")
    gen.add_argument("--output", required=True, help="Output .mp4 (path or fsspec URL).")
    gen.add_argument(
        "--audio",
        metavar="AUDIO",
        help="Driving audio, mp3 or wav (path or URL), for models that take one "
        "(wan2.7-i2v, 2..30 s); checked before anything is paid. Without it such a model "
        "makes its own sound.",
    )
    _generation_options(gen, per_row=False)
    _storage_options(gen)
    _service_options(gen)
    _debug(gen)


def _add_storyboard(sub) -> None:
    board = sub.add_parser(
        "storyboard",
        help="Chain N keyframes into one film of N-1 transitions.",
        description="Generate a transition between every two consecutive keyframes and "
        "stitch them into one MP4 (the duplicated boundary frames dropped). The clips, "
        "their manifest and results.csv are kept in <film>.storyboard/ beside the film; a "
        "re-run pays only for transitions not made yet.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    board.add_argument(
        "frames", nargs="+", metavar="FRAME", help="The keyframes in order (2 or more)."
    )
    board.add_argument("--prompt", help="Prompt of every transition without its own.")
    board.add_argument(
        "--prompt-each",
        nargs="+",
        metavar="P",
        help="One prompt per transition (N-1 for N keyframes), in order.",
    )
    board.add_argument("--output", required=True, help="The film, .mp4 (path or fsspec URL).")
    board.add_argument(
        "--continue",
        dest="continue_clips",
        action="store_true",
        help="Continue each clip toward the next keyframe (a model that continues clips, "
        "e.g. --model wan2.7-i2v) instead of stitching separate transitions.",
    )
    _quota(board)
    _max_cost(board)
    _generation_options(board)
    _storage_options(board)
    _service_options(board)
    _debug(board)


def _add_validate(sub) -> None:
    val = sub.add_parser(
        "validate",
        help="Check a manifest and its frames and estimate the cost; submits nothing.",
        description="Check every row and frame of a manifest and estimate its cost. Starts "
        "neither Prefect nor the simulator.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    val.add_argument("manifest", help="CSV manifest (path or fsspec URL).")
    val.add_argument(
        "--output",
        help="The run's output folder: rows already made there show as skipped, and the "
        "table of planned, skipped, over-budget and invalid rows is written to "
        "results.dry-run.csv there (default: write nothing). results.csv is never touched.",
    )
    val.add_argument("--prompt", help="Prompt for rows whose prompt cell is empty.")
    _max_cost(val)
    _extra_columns(val)
    _generation_options(val)
    _storage_options(val)
    _debug(val)


def _add_simulator(sub) -> None:
    from kf2v_tasks.simulator import cli as simulator_cli  # its options only: no server code

    sim = sub.add_parser(
        "simulator",
        help="Serve the local DashScope simulator (needs the simulator extra).",
        description="Serve the local DashScope simulator and print the environment a flow "
        'needs to use it. Needs: pip install "kf2v-tasks[simulator]".',
    )
    simulator_cli.add_arguments(sim)
    _debug(sim)


def _add_limits(sub) -> None:
    limits = sub.add_parser(
        "limits",
        help="Prefect global concurrency limits for the account.",
        description="Prefect global concurrency limits that hold the account's quota across "
        "runs and workers.",
    )
    _debug(limits)
    limits_sub = limits.add_subparsers(
        dest="limits_command", required=True, metavar="ACTION", help="What to do."
    )
    apply = limits_sub.add_parser(
        "apply",
        help="Create or update each model's lane limit for the account (idempotent).",
        description="Create or update the Prefect global concurrency limit of each model's "
        "lane, <prefix>-<account>-<model>, at running + queue-ahead slots.",
    )
    _lane_args(apply)
    apply.add_argument(
        "--credentials-block",
        default=None,
        help="The account (its block's name); default: DASHSCOPE_API_KEY.",
    )
    apply.add_argument(
        "--model",
        action="append",
        default=[],
        help="Only this model's lane (repeatable; default: every model of the models table "
        "and every --lane).",
    )
    apply.add_argument("--prefix", default="kf2v", help="Limit name prefix (default kf2v).")
    _debug(apply)
    show = limits_sub.add_parser("show", help="Show the limits.")
    _debug(show)


def _add_stack(sub) -> None:
    stack = sub.add_parser(
        "stack",
        help="Start a local Prefect server, workers and the simulator.",
        description="Start a local Prefect server, process workers and the simulator; "
        "Ctrl-C stops them all.",
    )
    stack.add_argument(
        "--prefect-port", type=argtypes.port, default=4200, help="Prefect server port."
    )
    stack.add_argument("--simulator-port", type=argtypes.port, default=8910, help="Simulator port.")
    stack.add_argument(
        "--speed",
        type=argtypes.number(above=0),
        default=EMBEDDED_SPEED,
        help=f"Simulator speed; the workers' KF2V_TIME_SCALE matches it (default "
        f"{EMBEDDED_SPEED:g}).",
    )
    stack.add_argument("--pool", default="kf2v-process", help="Work pool name.")
    stack.add_argument(
        "--workers",
        type=argtypes.integer(1, 64),
        default=1,
        help="Process workers to start (default 1).",
    )
    _debug(stack)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kf2v``."""
    parser = KfParser(
        prog="kf2v",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=version_text(), help="Show the versions and exit."
    )
    _debug(parser, default=False)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="What to do."
    )
    _add_run(sub)
    _add_generate(sub)
    _add_storyboard(sub)
    _add_validate(sub)
    _add_simulator(sub)
    _add_limits(sub)
    _add_stack(sub)
    return parser
