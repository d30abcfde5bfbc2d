"""kf2v_tasks.settings_env: a setting's default is known without Prefect when nothing can set it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kf2v_tasks.settings_env import may_be_set


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """A working folder and a Prefect home with no config, and no kf2v variable set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)
    for key in list(os.environ):
        if key.lower().startswith("prefect_integrations_kf2v_") or key.lower() == "kf2v_region":
            monkeypatch.delenv(key)
    return tmp_path


def test_nothing_configured_means_the_default(bare):
    assert not may_be_set("region", "kf2v_region")


@pytest.mark.parametrize(
    "where, text",
    [
        ("env", "kf2v_region"),
        ("env", "PREFECT_INTEGRATIONS_KF2V_REGION"),
        (".env", "KF2V_REGION=beijing\n"),
        (".env", "DASHSCOPE_API_KEY=sk-x\n"),
        ("prefect.toml", "[integrations.kf2v]\nregion = 'beijing'\n"),
        ("pyproject.toml", "[tool.prefect.integrations.kf2v]\nregion = 'beijing'\n"),
        ("home/profiles.toml", "[profiles.x]\nPREFECT_INTEGRATIONS_KF2V_REGION = 'beijing'\n"),
    ],
)
def test_any_place_prefect_reads_counts(bare, monkeypatch, where, text):
    if where == "env":
        monkeypatch.setenv(text, "beijing")
    else:
        (bare / where).parent.mkdir(exist_ok=True)
        (bare / where).write_text(text)
    key = "DASHSCOPE_API_KEY" in text
    assert may_be_set(*(("api_key", "dashscope_api_key") if key else ("region", "kf2v_region")))


def test_a_project_pyproject_without_prefect_settings_does_not_count(bare):
    (bare / "pyproject.toml").write_text("[project]\nname = 'kf2v-tasks'\n")
    assert not may_be_set("models_file")


def test_the_price_table_and_models_table_need_no_prefect(bare):
    code = (
        "import sys\n"
        "from kf2v_tasks.generation.pricing import PriceTable\n"
        "PriceTable.default()\n"
        "assert not [m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("prefect_integ")}
    run = subprocess.run([sys.executable, "-c", code], cwd=bare, env=env, capture_output=True)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
