"""``kf2v simulator`` / ``python -m kf2v_tasks.simulator``: options, the printed environment,
and a user's own script that uses nothing but that environment."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from kf2v_tasks.simulator.cli import add_arguments, client_environment, config_from_args

KF2V = str(Path(sys.executable).parent / "kf2v")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(p)
    return p


def test_arguments_build_the_config():
    args = parser().parse_args(
        [
            "--port", "0", "--speed", "50", "--faults", "query.error500=0.1",
            "--runtime", "5:9", "--render", "tiny", "--max-concurrent", "3", "--api-key", "sk-x",
        ]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert (cfg.port, cfg.speed, cfg.max_concurrent, cfg.api_key) == (0, 50.0, 3, "sk-x")
    assert cfg.faults.rates == {"query.error500": 0.1}
    assert (cfg.runtime.kind, cfg.runtime.low, cfg.runtime.high) == ("uniform", 5.0, 9.0)


def test_the_default_speed_is_the_one_the_readme_sample_and_kf2v_run_use():
    from kf2v_tasks._cli.parser import EMBEDDED_SPEED

    cfg = config_from_args(parser().parse_args([]))
    assert cfg.speed == EMBEDDED_SPEED == 60.0
    # README: "`kf2v simulator` prints what a flow of your own needs to use it:" + sample.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    after = readme.split("`kf2v simulator` prints what a flow of your own needs", 1)[1]
    sample = after.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert sample == client_environment("http://127.0.0.1:8910/api/v1", cfg.speed)
    assert "kf2v simulator --port 8910" in readme


def test_limits_default_to_the_models_table_and_take_per_model_overrides():
    cfg = config_from_args(parser().parse_args([]))
    assert (cfg.max_concurrent, cfg.submits_per_second, cfg.model_limits) == (None, None, {})
    assert cfg.runtime_scaling
    argv = ["--model-limit", "wan2.7-i2v=3:1.5", "--model-limit", "wan2.2-kf2v-flash=1:0.5"]
    cfg = config_from_args(parser().parse_args([*argv, "--no-runtime-scaling"]))
    assert cfg.model_limits == {"wan2.7-i2v": (3, 1.5), "wan2.2-kf2v-flash": (1, 0.5)}
    assert not cfg.runtime_scaling


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "argument --port: must be a port in 0..65535, got '70000'"),
        (["--speed", "0"], "argument --speed: must be > 0, got '0'"),
        (["--max-concurrent", "0"], "argument --max-concurrent: must be >= 1, got '0'"),
        (["--queries-per-second", "-1"], "argument --queries-per-second: must be > 0"),
        (["--model-limit", "wan2.7-i2v=0:1"], "argument --model-limit: model limit 'wan2.7-"),
        (["--model-limit", "wan2.7-i2v"], "argument --model-limit: model limit 'wan2.7-i2v' "),
        (["--runtime", "9:5"], "argument --runtime: runtime needs 0 <= low <= high"),
        (["--faults", "query.error500"], "argument --faults: fault 'query.error500' needs"),
        (["--video-bytes", "x"], "argument --video-bytes: must be >= 0, got 'x'"),
    ],
)
def test_bad_options_name_the_option(argv, message):
    with pytest.raises(argparse.ArgumentError) as info:
        parser().parse_args(argv)
    assert str(info.value).startswith(message)


def test_every_option_is_explained():
    for action in parser()._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help and action.help.strip(), action.option_strings


def test_the_printed_environment_never_shows_a_chosen_key():
    lines = client_environment("http://127.0.0.1:1/api/v1", 0.5, api_key="sk-secret-choice")
    assert not any("sk-secret-choice" in line for line in lines)
    assert lines[0].startswith("#") and lines[2] == "export KF2V_TIME_SCALE=0.5"


def _read_exports(proc: subprocess.Popen, timeout: float = 60.0) -> dict[str, str]:
    """The ``export NAME=VALUE`` lines the simulator prints, read as a user would."""
    exports: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while "KF2V_TIME_SCALE" not in exports:
        assert time.monotonic() < deadline, "the simulator did not print its environment"
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, f"the simulator exited ({proc.poll()})"
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").strip().partition("=")
            exports[name] = value
    return exports


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


@pytest.mark.slow  # a simulator process: seconds of imports
def test_module_runs_until_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "kf2v_tasks.simulator", "--port", "0", "--render", "tiny"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        base_url = _read_exports(proc)["DASHSCOPE_HTTP_BASE_URL"]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api/v1")
        health = base_url.replace("/api/v1", "/_sim/health")
        for _ in range(100):
            try:
                assert httpx.get(health).json() == {"ok": True}
                break
            except httpx.TransportError:
                time.sleep(0.05)
    finally:
        assert _stop(proc) == 0


# A user's own script: it knows nothing of the simulator, only the environment.
USER_SCRIPT = textwrap.dedent(
    """
    import asyncio, base64, io, os
    from PIL import Image
    from kf2v_tasks import clock
    from kf2v_tasks.dashscope.client import Kf2vClient
    from kf2v_tasks.dashscope.models import GenerationOptions, Kf2vRequest

    def frame(colour):
        buf = io.BytesIO()
        Image.new("RGB", (320, 240), colour).save(buf, "PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    async def main():
        key, url = os.environ["DASHSCOPE_API_KEY"], os.environ["DASHSCOPE_HTTP_BASE_URL"]
        async with Kf2vClient(key, base_url=url) as client:
            task = await client.create_task(Kf2vRequest(
                first_frame_url=frame((200, 40, 40)), last_frame_url=frame((40, 40, 200)),
                prompt="a slow pan", options=GenerationOptions(resolution="480P")))
            started = clock.now()
            while not (state := await client.get_task(task.task_id)).status.is_terminal:
                assert clock.now() - started < 600, "still running after 10 service minutes"
                await clock.sleep(5)
            print(clock.time_scale(), state.status.value, bool(state.video_url))

    asyncio.run(main())
    """
)


@pytest.mark.slow  # a `kf2v simulator` process and a client process
def test_printed_environment_is_all_a_users_own_script_needs(tmp_path):
    """``kf2v simulator`` prints export lines; applied to a fresh process, they let plain
    client code create a task and poll it to the end at the simulator's speed."""
    home = dict(os.environ, HOME=str(tmp_path), PREFECT_HOME=str(tmp_path / "prefect"))
    for name in ("DASHSCOPE_API_KEY", "DASHSCOPE_HTTP_BASE_URL", "KF2V_TIME_SCALE"):
        home.pop(name, None)
    proc = subprocess.Popen(
        [KF2V, "simulator", "--port", "0", "--speed", "600", "--render", "tiny"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=home,
        start_new_session=True,
    )
    try:
        exports = _read_exports(proc)
        assert exports["DASHSCOPE_API_KEY"] == "sk-simulator"
        assert exports["KF2V_TIME_SCALE"] == "600"
        started = time.monotonic()
        user = subprocess.run(
            [sys.executable, "-c", USER_SCRIPT],
            env={**home, **exports},
            capture_output=True,
            text=True,
            timeout=120,
        )
        took = time.monotonic() - started
    finally:
        assert _stop(proc) == 0
    assert user.returncode == 0, user.stderr[-2000:]
    assert user.stdout.split() == ["600.0", "SUCCEEDED", "True"]
    # A task runs 1-5 service minutes: at the printed scale the poll loop takes seconds.
    assert took < 60, took
