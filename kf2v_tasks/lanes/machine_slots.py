"""The account's in-flight slots shared by every run on one machine, without a Prefect server.

With no ``PREFECT_API_URL`` (Prefect's ephemeral mode) there is no global concurrency
limit to share, yet two ``kf2v run`` on one machine use the same account. Each slot is a
lock file, ``<PREFECT_HOME>/kf2v/machine-slots/<limit name>/slot-<i>.lock``, held with an
exclusive ``flock`` for as long as the task is in flight. The kernel drops a lock when its
process dies, so a killed run never leaves a slot taken, and nothing needs cleaning up.
Runs that ask for different sizes share the slot files they have in common: together they
keep at most the largest size in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
from pathlib import Path
from typing import Optional

#: Real seconds between tries while every slot is taken (a task runs for minutes).
POLL_SECONDS = 0.05


def slot_folder(name: str) -> Path:
    """Where the lock files of the limit ``name`` live (under ``PREFECT_HOME``)."""
    from prefect.settings import get_current_settings

    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name) or "kf2v"
    return Path(get_current_settings().home) / "kf2v" / "machine-slots" / safe


class MachineSlot:
    """One held slot: an open lock file with an exclusive ``flock``."""

    def __init__(self, fd: int, index: int) -> None:
        self._fd: Optional[int] = fd
        self.index = index

    @classmethod
    def try_acquire(cls, folder: Path, size: int) -> Optional[MachineSlot]:
        """Take a free slot now, or ``None`` when all ``size`` are held."""
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(size):
            fd = os.open(folder / f"slot-{index}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            return cls(fd, index)
        return None

    @classmethod
    async def acquire(cls, folder: Path, size: int) -> MachineSlot:
        """Wait for a free slot (polling: ``flock`` has no async wait)."""
        while True:
            slot = cls.try_acquire(folder, size)
            if slot is not None:
                return slot
            await asyncio.sleep(POLL_SECONDS)

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
