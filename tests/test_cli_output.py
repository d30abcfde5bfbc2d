"""An output that cannot be written is said before anything starts (issue 25 #4).

As a user runs it (the ``kf2v`` console script in a subprocess, no key, no Prefect server
configured): a read-only ``--output``, an ``s3://`` output without credentials and an
unknown protocol each give one line naming ``--output`` and the fix, exit 2, before the
simulator or a Prefect server is started, and leave nothing behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import make_pairs, manifest_text

KF2V = str(Path(sys.executable).parent / "kf2v")
STARTED = "built-in DashScope simulator"  # the line the simulator's start prints


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "home").mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"))
    for name in list(env):
        if name.startswith(("AWS_", "DASHSCOPE_")) or name in ("PREFECT_API_URL",):
            env.pop(name)
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # no instance role to find on a test machine
    return env


def _manifest(tmp_path: Path) -> str:
    pairs = make_pairs(tmp_path, 1)
    rows = [{"id": "a", "first_frame": pairs[0][0], "last_frame": pairs[0][1]}]
    (tmp_path / "m.csv").write_text(manifest_text(rows, ["id", "first_frame", "last_frame"]))
    return str(tmp_path / "m.csv")


def _read_only(folder: Path) -> list[str]:
    """A command prefix under which ``folder`` is read-only (root ignores mode bits)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    bind = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    prefix = ["unshare", "-rm", "sh", "-c", bind, str(folder)]
    if not shutil.which("unshare") or subprocess.run([*prefix, "true"]).returncode != 0:
        pytest.skip("no way to make a read-only folder here (root without user namespaces)")
    return prefix


def _one_line_exit_2(p: subprocess.CompletedProcess, *words: str, prog: str = "run") -> str:
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr[-2000:]
    assert lines[0].startswith(f"kf2v {prog}: error: argument --output: ")
    assert all(w in lines[0] for w in words), lines[0]
    assert STARTED not in p.stderr and "Traceback" not in p.stderr
    return lines[0]


def test_a_read_only_output_is_one_line_exit_2_before_start_up(tmp_path):
    manifest = _manifest(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    prefix = _read_only(out)
    started = time.monotonic()
    p = subprocess.run(
        [*prefix, KF2V, "run", manifest, "--output", str(out / "videos")],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    _one_line_exit_2(p, "cannot write in", str(out), "give a folder you can write to")
    assert took < 15  # no Prefect server, no simulator
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "validate"])
def test_s3_without_credentials_is_one_line_exit_2_before_start_up(tmp_path, command):
    p = subprocess.run(
        [KF2V, command, _manifest(tmp_path), "--output", "s3://kf2v-no-such-bucket/out"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_exit_2(p, "no AWS credentials", "AWS_ACCESS_KEY_ID", "--storage-block", prog=command)
    assert "NoCredentialsError" not in p.stderr


def test_an_unknown_protocol_is_one_line_exit_2(tmp_path):
    p = subprocess.run(
        [KF2V, "run", _manifest(tmp_path), "--output", "nosuch://bucket/out"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_exit_2(p, "unknown protocol nosuch://", "local folder")
