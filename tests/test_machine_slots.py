"""Runs on one machine without a Prefect server share the account through locked files."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from kf2v_tasks.lanes.machine_slots import MachineSlot
from kf2v_tasks.lanes.slots import SlotPool


async def test_two_runs_on_one_machine_keep_the_accounts_two_slots(tmp_path):
    a = SlotPool(2, machine_folder=tmp_path)
    b = SlotPool(2, machine_folder=tmp_path)  # another run: its own pool, the same files
    held, peak = 0, 0
    release = asyncio.Event()

    async def row(pool):
        nonlocal held, peak
        async with pool.slot():
            held += 1
            peak = max(peak, held)
            await release.wait()
            held -= 1

    rows = [asyncio.ensure_future(row(p)) for p in (a, b, a, b, b)]
    await asyncio.sleep(0.3)
    assert peak == 2 and held == 2  # the other three wait, whichever run they belong to
    release.set()
    await asyncio.gather(*rows)
    await a.close()
    await b.close()
    assert peak == 2
    assert MachineSlot.try_acquire(tmp_path, 2) is not None  # all given back


def test_a_killed_run_leaves_no_slot_taken(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib\n"
            "from kf2v_tasks.lanes.machine_slots import MachineSlot\n"
            f"s = MachineSlot.try_acquire(pathlib.Path({str(tmp_path)!r}), 1)\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert MachineSlot.try_acquire(tmp_path, 1) is None
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        deadline = time.monotonic() + 5
        slot = None
        while slot is None and time.monotonic() < deadline:
            slot = MachineSlot.try_acquire(tmp_path, 1)
        assert slot is not None
        slot.release()
    finally:
        if holder.poll() is None:
            holder.kill()


async def test_without_a_server_the_pool_uses_machine_slots(tmp_path):
    with temporary_settings(updates={PREFECT_API_URL: None, PREFECT_HOME: str(tmp_path)}):
        pool = await SlotPool.create(2, "kf2v-dashscope-tasks")
    assert pool.gcl_name is None
    assert pool.machine_folder == Path(tmp_path) / "kf2v" / "machine-slots" / "kf2v-dashscope-tasks"
    async with pool.slot():
        assert len(list(pool.machine_folder.glob("slot-*.lock"))) >= 1
    await pool.close()
