"""A tethered process (the temporary Prefect server of `kf2v run`) ends with its starter,
even when the starter is killed with SIGKILL and cannot clean up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STARTER = """
import sys, time
from pathlib import Path
from kf2v_tasks._cli.processes import spawn
p = spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], {}, Path(sys.argv[1]),
          tethered=True)
print(p.proc.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (its parent, the tether, has not reaped it yet).
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}").exists() else ""
    return bool(stat) and stat.split(")")[-1].split()[0] != "Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return any(
        _alive(int(p.name))
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _pgid(int(p.name)) == pgid
    )


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_a_tethered_process_ends_when_its_starter_is_killed(tmp_path):
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(tmp_path / "log")], stdout=subprocess.PIPE, text=True
    )
    tether = int(starter.stdout.readline())  # its own session: pgid == pid
    assert _group_alive(tether)
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    deadline = time.monotonic() + 10
    while _group_alive(tether) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(tether), "the tethered process outlived its killed starter"


def test_a_tethered_process_is_stopped_by_its_starter_like_any_other(tmp_path):
    from kf2v_tasks._cli.processes import spawn, stop_process

    cmd = [sys.executable, "-c", "import sys, time; time.sleep(120)"]
    p = spawn("sleeper", cmd, dict(os.environ), tmp_path / "log", tethered=True)
    assert p.alive()
    stop_process(p.proc, timeout=5.0)
    assert not p.alive() and not _group_alive(p.proc.pid)
