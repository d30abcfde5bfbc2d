"""The ``kf2v`` parser as a user meets it: help on every option, ``--version``, bad flags
named in one line, and ``--help`` that loads neither Prefect nor the simulator."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kf2v_tasks._cli.main import main
from kf2v_tasks._cli.parser import build_parser
from kf2v_tasks._version import __version__

KF2V = str(Path(sys.executable).parent / "kf2v")
COMMANDS = ["run", "generate", "storyboard", "validate", "simulator", "limits", "stack"]


def user_env(tmp_path: Path) -> dict[str, str]:
    """A user's shell: fresh HOME and PREFECT_HOME, no key, no Prefect server configured."""
    env = dict(os.environ, HOME=str(tmp_path), PREFECT_HOME=str(tmp_path / "prefect"))
    for name in ("DASHSCOPE_API_KEY", "DASHSCOPE_HTTP_BASE_URL", "PREFECT_API_URL"):
        env.pop(name, None)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env


def kf2v(*args: str, env: dict[str, str], module: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "kf2v_tasks._cli.main"] if module else [KF2V]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=120)


def _parsers(parser: argparse.ArgumentParser, name: str = "kf2v"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_option_of_every_command_has_help():
    seen = []
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{where} has no help"
            seen.append(where)
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:  # the one-line help of each command
                    assert choice.help and choice.help.strip(), f"{name} {choice.dest}"
    assert len(seen) > 60  # the walk really went through every subcommand


@pytest.mark.slow  # two `kf2v` processes: seconds of imports
def test_version_from_the_script_and_the_module(tmp_path):
    env = user_env(tmp_path)
    for result in (kf2v("--version", env=env), kf2v("--version", env=env, module=True)):
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"kf2v {__version__} (Prefect 3.")
        assert result.stderr == ""


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["run", "m.csv", "--output", "o", "--concurrency", "0"],
         "kf2v run: error: argument --concurrency: must be >= 1, got 0"),
        (["run", "m.csv", "--output", "o", "--submits-per-second", "0"],
         "kf2v run: error: argument --submits-per-second: must be > 0, got 0"),
        (["run", "m.csv", "--output", "o", "--queries-per-second", "-2"],
         "kf2v run: error: argument --queries-per-second: must be > 0, got -2"),
        (["run", "m.csv", "--output", "o", "--max-cost", "-1"],
         "kf2v run: error: argument --max-cost: must be >= 0, got -1"),
        (["run", "m.csv", "--output", "o", "--time-scale", "0"],
         "kf2v run: error: argument --time-scale: must be > 0, got 0"),
        (["generate", "--first", "a", "--last", "b", "--output", "c.mp4", "--seed", "-1"],
         "kf2v generate: error: argument --seed: must be >= 0, got -1"),
        (["validate", "m.csv", "--seed", "2147483648"],
         "kf2v validate: error: argument --seed: must be <= 2147483647, got 2147483648"),
        (["validate", "m.csv", "--seed", "many"],
         "kf2v validate: error: argument --seed: must be an integer in 0..2147483647, "
         "got 'many'"),
        (["generate", "--first", "a", "--last", "b", "--output", "c.mp4",
          "--model", "wan2.1-kf2v-plus", "--resolution", "1080P"],
         "kf2v generate: error: argument --resolution: 1080P is not available for "
         "wan2.1-kf2v-plus (allowed: 720P)"),
        (["run", "m.csv", "--output", "o", "--storage-options", "[1, 2]"],
         "kf2v run: error: argument --storage-options: must be a JSON object, e.g. "
         "'{\"anon\": true}', got a JSON list"),
        (["run", "m.csv", "--output", "o", "--storage-options", "{'key': 'sk-x'}"],
         "kf2v run: error: argument --storage-options: must be a JSON object, e.g. "
         "'{\"anon\": true}' (Expecting property name enclosed in double quotes at column 2)"),
        (["run", "m.csv", "--output", "o", "--storage-block", "prod"],
         "kf2v run: error: argument --storage-block: must be '<block-type-slug>/<block-name>', "
         "e.g. 'aws-credentials/prod', got 'prod'"),
        (["stack", "--workers", "0"], "kf2v stack: error: argument --workers: must be >= 1, got 0"),
        (["limits", "apply", "--concurrency", "0"],
         "kf2v limits apply: error: argument --concurrency: must be >= 1, got 0"),
        (["run", "m.csv", "--output", "o", "--lane", "wan2.7-i2v=0"],
         "kf2v run: error: argument --lane: lane 'wan2.7-i2v': size must be >= 1 and "
         "creates/s > 0, got '0'"),
        (["run", "m.csv", "--output", "o", "--order", "random"],
         "kf2v run: error: argument --order: invalid choice: 'random' (choose from "
         "'longest', 'manifest')"),
        (["simulator", "--speed", "-1"],
         "kf2v simulator: error: argument --speed: must be > 0, got '-1'"),
    ],
)  # fmt: skip
def test_a_bad_flag_is_named_in_one_line(argv, line, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == line + "\n" and captured.out == ""


@pytest.mark.slow  # a `kf2v` process per flag: seconds of imports
def test_bad_flags_from_the_script_are_one_line_without_traceback(tmp_path):
    env = user_env(tmp_path)
    for argv, flag in [
        (["run", "m.csv", "--output", "o", "--concurrency", "0"], "--concurrency"),
        (["generate", "--first", "a", "--last", "b", "--output", "c.mp4",
          "--model", "wan2.1-kf2v-plus", "--resolution", "1080P"], "--resolution"),
    ]:  # fmt: skip
        result = kf2v(*argv, env=env)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and f"argument {flag}:" in result.stderr
        assert "Traceback" not in result.stderr and "pydantic" not in result.stderr


_PROBE = """
import sys, time
started = time.perf_counter()
from kf2v_tasks._cli.main import main
for argv in ([], {commands}, ["limits", "apply"], ["limits", "show"]):
    try:
        main([*argv, "--help"] if argv != [] else ["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0, (argv, exit_.code)
print("SECONDS", round(time.perf_counter() - started, 3), file=sys.stderr)
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in {{"prefect", "kf2v_flows",
      "uvicorn", "av", "numpy"}} or m.startswith("kf2v_tasks.simulator.server"))), file=sys.stderr)
"""


def _help_everywhere(tmp_path: Path) -> tuple[set[str], float]:
    probe = _PROBE.format(commands=", ".join(f"[{c!r}]" for c in COMMANDS))
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env=user_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    at = max(i for i, line in enumerate(lines) if line.startswith("SECONDS "))
    seconds = float(lines[at].split()[1])
    print(f"--help of every command: {seconds:.2f} s in one process")
    modules = lines[at + 1] if at + 1 < len(lines) else ""
    return set(modules.split()), seconds


def test_help_loads_no_flow_no_simulator_server_and_no_video_codec(tmp_path):
    loaded, _ = _help_everywhere(tmp_path)
    assert not {m for m in loaded if m.split(".")[0] in {"kf2v_flows", "uvicorn", "av", "numpy"}}
    assert "kf2v_tasks.simulator.server" not in loaded


def test_help_does_not_import_prefect(tmp_path):
    loaded, _ = _help_everywhere(tmp_path)
    assert not {m for m in loaded if m.split(".")[0] == "prefect"}, sorted(loaded)[:10]


def test_importing_the_package_loads_no_prefect():
    probe = "import sys, kf2v_tasks; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_the_script_answers_help_quickly(tmp_path):
    started = time.monotonic()
    result = kf2v("validate", "--help", env=user_env(tmp_path))
    took = time.monotonic() - started
    print(f"kf2v validate --help: {took:.2f} s")
    assert result.returncode == 0 and "--output" in result.stdout


def test_queue_ahead_defaults_to_the_librarys_and_is_checked():
    from kf2v_tasks.lanes.names import DEFAULT_QUEUE_AHEAD

    parser = build_parser()
    args = parser.parse_args(["run", "m.csv", "--output", "out"])
    assert args.queue_ahead == DEFAULT_QUEUE_AHEAD
    assert (
        parser.parse_args(["run", "m.csv", "--output", "o", "--queue-ahead", "0"]).queue_ahead == 0
    )
    limits = parser.parse_args(
        ["limits", "apply", "--lane", "wan2.7-i2v=8:5", "--queue-ahead", "2"]
    )
    assert (limits.lane, limits.queue_ahead) == ([("wan2.7-i2v", "8:5")], 2)
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "m.csv", "--output", "o", "--queue-ahead", "-1"])
