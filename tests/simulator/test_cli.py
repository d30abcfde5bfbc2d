"""``python -m kf2v_tasks.simulator``: option parsing and a real foreground run."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import httpx

from kf2v_tasks.simulator.cli import add_arguments, config_from_args


def test_arguments_build_the_config():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--port",
            "0",
            "--speed",
            "50",
            "--faults",
            "query.error500=0.1",
            "--runtime",
            "5:9",
            "--render",
            "tiny",
            "--max-concurrent",
            "3",
            "--api-key",
            "sk-x",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.port, cfg.speed, cfg.max_concurrent, cfg.api_key) == (0, 50.0, 3, "sk-x")
    assert cfg.faults.rates == {"query.error500": 0.1}
    assert (cfg.runtime.kind, cfg.runtime.low, cfg.runtime.high) == ("uniform", 5.0, 9.0)


def test_module_runs_until_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "kf2v_tasks.simulator", "--port", "0", "--render", "tiny"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        base_url = line.strip().rsplit("=", 1)[1]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api/v1")
        health = base_url.replace("/api/v1", "/_sim/health")
        for _ in range(100):
            try:
                assert httpx.get(health).json() == {"ok": True}
                break
            except httpx.TransportError:
                time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
