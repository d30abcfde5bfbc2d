"""Which DashScope the CLI uses, without ever writing ``os.environ``, and what happens
without the ``simulator`` extra."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from kf2v_tasks import clock
from kf2v_tasks._cli.errors import UsageError
from kf2v_tasks._cli.service import SIMULATOR_API_KEY, dashscope_service
from kf2v_tasks.credentials import DashScopeCredentials

KF2V = str(Path(sys.executable).parent / "kf2v")


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("DASHSCOPE_HTTP_BASE_URL", raising=False)
    monkeypatch.delenv("KF2V_TIME_SCALE", raising=False)
    clock.set_time_scale(None)
    yield
    clock.set_time_scale(None)


def test_no_key_runs_a_simulator_and_hands_its_credentials_over_not_the_environment():
    environ = dict(os.environ)
    out = io.StringIO()
    with dashscope_service(None, simulator_speed=120, out=out) as credentials:
        assert isinstance(credentials, DashScopeCredentials)
        assert credentials.api_key.get_secret_value() == SIMULATOR_API_KEY
        base_url = credentials.resolved_base_url
        health = httpx.get(base_url.replace("/api/v1", "/_sim/health"), timeout=10)
        assert health.json() == {"ok": True}
        assert clock.time_scale() == 120  # the client waits at the simulator's speed
        assert dict(os.environ) == environ
    assert dict(os.environ) == environ
    assert clock.time_scale() == 1.0
    notice = out.getvalue()
    assert notice.count("\n") == 1 and base_url in notice and "120x speed" in notice
    with pytest.raises(httpx.TransportError):  # stopped with the block
        httpx.get(base_url.replace("/api/v1", "/_sim/health"), timeout=2)


def test_an_explicit_time_scale_wins_over_the_simulator_speed():
    with dashscope_service(None, simulator_speed=60, time_scale=30, out=io.StringIO()):
        assert clock.time_scale() == 30
    assert clock.time_scale() == 1.0


def test_a_block_name_or_a_key_means_no_simulator(monkeypatch: pytest.MonkeyPatch):
    out = io.StringIO()
    with dashscope_service("prod-dashscope", simulator_speed=60, out=out) as credentials:
        assert credentials == "prod-dashscope"
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-from-the-environment")
    with dashscope_service(None, simulator_speed=60, time_scale=5, out=out) as credentials:
        assert credentials is None  # the flow reads the environment itself
        assert clock.time_scale() == 5
    assert out.getvalue() == ""


def test_without_the_extra_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    import kf2v_tasks.simulator as simulator

    monkeypatch.setattr(simulator, "missing_dependencies", lambda: ["av"])
    with pytest.raises(UsageError) as info:
        with dashscope_service(None, simulator_speed=60, out=io.StringIO()):
            pytest.fail("the body must not run")
    assert 'pip install "kf2v-tasks[simulator]"' in str(info.value)
    assert "DASHSCOPE_API_KEY" in str(info.value)


@pytest.mark.slow  # a `kf2v` process per command: seconds of imports
@pytest.mark.parametrize(
    ("argv", "start"),
    [
        (["run", "MANIFEST", "--output", "OUT"],
         "kf2v run: error: no DASHSCOPE_API_KEY set and the built-in simulator is not "
         "installed: set DASHSCOPE_API_KEY (or --credentials-block), or pip install"),
        (["simulator", "--port", "0"], "kf2v simulator: error: the simulator needs av"),
        (["stack"], "kf2v stack: error: the stack runs the simulator, which needs av"),
    ],
)  # fmt: skip
def test_commands_without_the_extra_exit_two_in_one_line(tmp_path: Path, argv, start):
    """An install without PyAV (``sys.modules["av"] = None`` hides it, as if absent)."""
    (tmp_path / "sitecustomize.py").write_text('import sys\nsys.modules["av"] = None\n')
    (tmp_path / "m.csv").write_text("first_frame,last_frame\na.png,b.png\n")
    env = dict(
        os.environ,
        PYTHONPATH=str(tmp_path),
        HOME=str(tmp_path),
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    for name in ("DASHSCOPE_API_KEY", "PREFECT_API_URL"):
        env.pop(name, None)
    argv = [str(tmp_path / "m.csv") if a == "MANIFEST" else a for a in argv]
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    result = subprocess.run([KF2V, *argv], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(start), result.stderr
    assert 'pip install "kf2v-tasks[simulator]"' in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "prefect").glob("*.db"))  # no Prefect server was started
