"""Run a command that ends when the process that started it ends, even by SIGKILL.

``python tether.py FD -- CMD...``: FD is the read end of a pipe whose write end only the
starter holds. When the starter dies, however it dies, the pipe reads EOF and CMD's process
group is stopped (SIGTERM, then SIGKILL). Run by path, never as ``-m``: importing the package
would cost the start-up the tethered server is meant to save.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys

GRACE_SECONDS = 5.0


def main(argv: list[str]) -> int:
    fd, cmd = int(argv[0]), argv[2:]
    child = subprocess.Popen(cmd)  # same process group: a signal to the group reaches both
    # The starter's SIGTERM to the group reaches the child too: just wait for it.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while child.poll() is None:
            if sel.select(timeout=0.5) and not os.read(fd, 1):  # EOF: the starter is gone
                os.killpg(os.getpgrp(), signal.SIGTERM)  # ignored here, not by the child
                try:
                    child.wait(GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    os.killpg(os.getpgrp(), signal.SIGKILL)
                break
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
