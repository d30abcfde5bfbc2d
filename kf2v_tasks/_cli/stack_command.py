"""The ``kf2v stack`` command: a :class:`~kf2v_tasks._cli.stack.LocalStack` with the
simulator, a saved credentials block and process workers, until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kf2v_tasks._cli.stack import (
    DEFAULT_POOL,
    SIMULATOR_API_KEY,
    SIMULATOR_BLOCK,
    LocalStack,
    api,
    run,
)


async def save_simulator_credentials(
    api_url: str, base_url: str, name: str = SIMULATOR_BLOCK, api_key: str = SIMULATOR_API_KEY
) -> None:
    """Save a DashScopeCredentials block ``name`` that points at a simulator."""
    from pydantic import SecretStr

    from kf2v_tasks.credentials import DashScopeCredentials

    with api(api_url):
        await DashScopeCredentials(api_key=SecretStr(api_key), base_url=base_url).asave(
            name, overwrite=True
        )


def project_dir() -> Path:
    """The repository root when run from a checkout (where deployments/prefect.yaml is)."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (base / "deployments" / "prefect.yaml").exists():
            return base
    return Path.cwd()


def next_steps(stack: LocalStack, pool: str, sim_url: str) -> str:
    """What to type next, printed once the stack is up."""
    root = project_dir()
    return f"""
kf2v stack is up (Ctrl-C stops everything):
  Prefect UI         {stack.ui_url}
  Prefect API        {stack.api_url}
  simulator          {sim_url}   (block "{SIMULATOR_BLOCK}"; the workers also use it by default)
  work pool          {pool}  ({len(stack.workers)} process worker(s))
  logs               {stack.logs}

In another shell, from {root}:
  export PREFECT_API_URL={stack.api_url}
  prefect deploy --all --prefect-file deployments/prefect.yaml
  prefect deployment run kf2v-generate-batch/batch --watch \\
      --param manifest={root / "examples" / "manifest.csv"} \\
      --param output={root / "out" / "stack-example"} --param shards=2
(the workers' environment points at the simulator; to use the block instead add
 --param credentials_block={SIMULATOR_BLOCK}).
Or open the UI, Deployments -> batch -> Run -> Custom run, and fill in the form.
"""


def run_stack(args: Any) -> int:
    """Entry point of ``kf2v stack`` (args: prefect_port, simulator_port, speed, pool, workers).

    Returns 2 at once, in one line, when the ``simulator`` extra is missing.
    """
    from kf2v_tasks.simulator import INSTALL_HINT, missing_dependencies

    missing = missing_dependencies()
    if missing:  # say it before a Prefect server is started for nothing
        print(
            f"kf2v stack: error: the stack runs the simulator, which needs "
            f"{', '.join(missing)}: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    home_env = os.environ.get("KF2V_STACK_HOME")
    home = Path(home_env) if home_env else Path(tempfile.mkdtemp(prefix="kf2v-stack-"))
    pool = getattr(args, "pool", None) or DEFAULT_POOL
    speed = float(getattr(args, "speed", 60.0) or 60.0)
    workers = max(1, int(getattr(args, "workers", 1) or 1))
    stop = {"signal": None}

    def _on_signal(signum, _frame):
        stop["signal"] = signum
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _on_signal)
    stack = LocalStack(home=home, prefect_port=int(args.prefect_port))
    code = 0
    try:
        print(f"Starting Prefect server on {stack.ui_url} (PREFECT_HOME={home}) ...", flush=True)
        stack.start_server()
        stack.start_simulator(int(args.simulator_port), speed)
        sim_url = f"http://{stack.host}:{args.simulator_port}/api/v1"
        stack.prepare(pool=pool)
        run(save_simulator_credentials(stack.api_url, sim_url))
        worker_env = {
            "KF2V_TIME_SCALE": f"{speed:g}",
            "DASHSCOPE_API_KEY": SIMULATOR_API_KEY,
            "DASHSCOPE_HTTP_BASE_URL": sim_url,
        }
        for i in range(workers):
            stack.start_worker(pool, name=f"kf2v-worker-{i + 1}", limit=4, env=worker_env)
        print(next_steps(stack, pool, sim_url), flush=True)
        while True:
            time.sleep(1.0)
            stack.check_alive()
    except KeyboardInterrupt:
        print("\nStopping the kf2v stack ...", flush=True)
    except Exception as exc:  # a process died or a step failed: say what, then clean up
        print(f"kf2v stack failed: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        stack.close()
        signal.signal(signal.SIGTERM, previous)
        if not home_env:
            shutil.rmtree(home, ignore_errors=True)
    return code
