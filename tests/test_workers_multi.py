"""Workers that share nothing but the Prefect server and the bucket (issue 14, "Done when").

``deployments/prefect.yaml`` is deployed from a temporary copy of the repository, and the
copy is deleted before any flow runs. Then a 2-shard batch runs on two process workers.
Each worker starts in its own folder, with its own PREFECT_HOME, from its own virtualenv
where kf2v-tasks is installed from a wheel (not editable) built from that copy. The two
share only the Prefect server and a moto S3 bucket (manifest, frames, outputs, ledger);
the DashScope side is the simulator, which counts every create and download. Every video
must be delivered once, creates must equal rows, and the account's limits (tasks in
flight, creates and queries per second) must hold across the shards.

How the virtualenvs are made, and why: a full ``pip install`` of the wheel with its
dependencies downloads about 60 MB from the package index (about 20 s per virtualenv here)
and fails offline. So the package itself is installed from the wheel with ``--no-deps``
into a fresh ``venv --without-pip`` (kf2v_tasks and kf2v_flows then come from that
virtualenv's site-packages), and its third-party dependencies are added read-only from
this interpreter's site-packages by a path line in a ``.pth`` file. Python processes a
path line without reading the ``.pth`` files in that folder, so the repository's editable
install (its import finder is loaded by such a ``.pth`` file) is never active there: the
test checks that each worker's interpreter imports the package from its own virtualenv
and cannot see the repository.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from test_deployments import (
    CREDENTIALS_BLOCK,
    STORAGE_SECRET,
    diagnostics,
    runs_of,
    save_blocks,
    wait_final,
)

from kf2v_tasks._cli.stack import LocalStack, StackProcess, api, free_port, prefect_env, spawn
from kf2v_tasks.lanes.names import DEFAULT_QUEUE_AHEAD
from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator

from conftest import TEST_API_KEY
from helpers import make_pairs, manifest_text

ROOT = Path(__file__).resolve().parents[1]
POOL = "kf2v-process"
SPEED = 600.0
ROWS = 8
SHARDS = 2
#: The account quota (Model Studio defaults), for the runs and the simulator alike.
MAX_IN_FLIGHT = 2
SUBMITS_PER_SECOND = 2.0
QUERIES_PER_SECOND = 20.0
WORKERS = ("kf2v-wheel-worker-a", "kf2v-wheel-worker-b")
RUN_TIMEOUT = 300.0
#: Not part of a checkout: the virtualenv, caches, build output, local results.
NOT_COPIED = {".git", ".venv", "venv", "build", "dist", ".prefect", ".hypothesis", "__pycache__"}

#: Run by each worker's interpreter, in its folder, with its environment.
PROBE = """
import importlib.metadata, json, sys
import kf2v_flows.batch, kf2v_flows.single, kf2v_tasks
dist = importlib.metadata.distribution("kf2v-tasks")
print(json.dumps({
    "kf2v_tasks": kf2v_tasks.__file__,
    "kf2v_flows": kf2v_flows.__file__,
    "direct_url": dist.read_text("direct_url.json") or "",
    "path": sys.path,
    "finders": [type(f).__module__ for f in sys.meta_path],
}))
"""


def _ignore(folder: str, names: list[str]) -> set[str]:
    """What ``shutil.copytree`` leaves out of the checkout (see NOT_COPIED)."""
    ignored = {n for n in names if n in NOT_COPIED or n.endswith((".egg-info", ".pyc"))}
    ignored |= {n for n in names if n.startswith(".") and n.endswith("_cache")}
    if Path(folder) == ROOT / "bench":
        ignored |= {"results"} & set(names)
    return ignored


def _can_build_offline() -> bool:
    """Whether this interpreter has the build backend pyproject.toml asks for.

    ``setuptools>=68`` plus ``bdist_wheel`` (from the ``wheel`` package, or inside
    setuptools from 70.1). Without them pip builds in an isolated environment and fetches
    them from the package index.
    """
    import setuptools

    major_minor = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
    has_bdist_wheel = major_minor >= (70, 1) or importlib.util.find_spec("wheel") is not None
    return major_minor >= (68, 0) and has_bdist_wheel


def build_wheel(source: Path, out: Path) -> Path:
    """One wheel of kf2v-tasks (with kf2v_flows), built by pip from ``source``."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out)]
    if _can_build_offline():
        cmd.append("--no-build-isolation")
    result = subprocess.run(
        [*cmd, str(source)], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    (wheel,) = out.glob("kf2v_tasks-*.whl")
    return wheel


def _run(cmd: list[str], **kwargs) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def worker_venv(folder: Path, wheel: Path) -> Path:
    """A virtualenv in ``folder`` with ``wheel`` installed; returns its python.

    See the module docstring for why the dependencies are a ``.pth`` path line.
    """
    venv = folder / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        + ["--no-index", "--quiet", str(wheel)]
    )
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).strip()
    )
    # Only after the install: pip must never see (nor uninstall) the editable install.
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "kf2v-test-dependencies.pth").write_text("".join(f"{d}\n" for d in deps))
    return python


def worker_env(home: Path, api_url: str, python: Path) -> dict[str, str]:
    """The worker's environment: its own PREFECT_HOME, its virtualenv first on PATH."""
    env = prefect_env(
        home,
        api_url,
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        PREFECT_WORKER_HEARTBEAT_SECONDS="10",
        KF2V_TIME_SCALE=f"{SPEED:g}",
    )
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    ours = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != ours]
    env["PATH"] = os.pathsep.join([str(python.parent), *path])
    return env


def start_worker(stack: LocalStack, name: str, folder: Path, python: Path) -> StackProcess:
    """``python -m prefect worker start`` from the worker's virtualenv, in its folder."""
    cmd = [str(python), "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process"]
    cmd += ["--name", name, "--install-policy", "never", "--limit", "2"]
    env = worker_env(folder / "prefect-home", stack.api_url, python)
    worker = spawn(name, cmd, env, stack.logs / f"{name}.log", cwd=folder)
    stack.processes.append(worker)  # stopped with the stack, by process id
    return worker


def _check_probe(folder: Path, python: Path, api_url: str) -> None:
    env = worker_env(folder / "prefect-home", api_url, python)
    seen = json.loads(_run([str(python), "-c", PROBE], cwd=folder, env=env))
    venv = str(folder / "venv")
    assert seen["kf2v_tasks"].startswith(venv) and seen["kf2v_flows"].startswith(venv), seen
    assert "editable" not in seen["direct_url"], seen["direct_url"]
    assert str(ROOT) not in seen["path"], seen["path"]
    assert not any("__editable__" in f for f in seen["finders"]), seen["finders"]


def _put_inputs(s3_server, tmp_path: Path) -> tuple[str, list[str]]:
    """Frames and a manifest on S3; returns the bucket and the row ids."""
    bucket = s3_server.new_bucket()
    fs = s3_server.filesystem()
    src = tmp_path / "src"
    pairs = make_pairs(src, ROWS)
    for a, b in pairs:
        for rel in (a, b):
            fs.put_file(str(src / rel), f"{bucket}/batch/{rel}")
    ids = [f"clip-{i:02d}" for i in range(ROWS)]
    rows = [
        {"id": ids[i], "first_frame": a, "last_frame": b, "prompt": f"scene {i}"}
        for i, (a, b) in enumerate(pairs)
    ]
    fs.pipe_file(f"{bucket}/batch/manifest.csv", manifest_text(rows).encode())
    return bucket, ids


@pytest.mark.slow
def test_sharded_batch_on_two_workers_that_share_only_the_server_and_s3(tmp_path, s3_server):
    started = time.monotonic()
    # ------------------------------------------------- a checkout, its wheel, then no checkout
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=_ignore)
    wheel = build_wheel(checkout, tmp_path / "wheels")
    # The wheel holds every module and data file of both packages (a package missing from
    # [tool.setuptools] would only show up on a worker).
    import zipfile

    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n}
    for package, folder in (("kf2v_tasks", "kf2v_tasks"), ("kf2v_flows", "flows")):
        for f in (checkout / folder).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                rel = f"{package}/{f.relative_to(checkout / folder).as_posix()}"
                assert rel in shipped, f"{rel} is not in the wheel"

    bucket, ids = _put_inputs(s3_server, tmp_path)
    sim_config = SimulatorConfig(
        speed=SPEED,
        max_concurrent=8,  # above the account's in-flight quota, so a breach would show
        submits_per_second=SUBMITS_PER_SECOND,
        queries_per_second=QUERIES_PER_SECOND,
        runtime=RuntimeDistribution(kind="uniform", low=60, high=120),
        render="tiny",
        seed=14,
    )
    with (
        run_simulator(sim_config) as sim,
        LocalStack(home=tmp_path / "server", prefect_port=free_port(), ui=False) as stack,
    ):
        stack.start_server()
        stack.prepare(pool=POOL)
        with api(stack.api_url):
            asyncio.run(save_blocks(sim.base_url, s3_server.storage_options))
        deploy_out = stack.deploy(checkout)
        assert "kf2v-generate-batch/batch" in deploy_out, deploy_out
        shutil.rmtree(checkout)
        assert not checkout.exists()

        # ---------------------------------------------- two workers, each its own everything
        for name in WORKERS:
            folder = tmp_path / name
            folder.mkdir()
            python = worker_venv(folder, wheel)
            _check_probe(folder, python, stack.api_url)
            start_worker(stack, name, folder, python)
        setup_seconds = time.monotonic() - started

        parameters = {
            "manifest": f"s3://{bucket}/batch/manifest.csv",
            "output": f"s3://{bucket}/batch/out",
            "defaults": {"resolution": "480P"},
            "concurrency": {
                "max_in_flight": MAX_IN_FLIGHT,
                "submits_per_second": SUBMITS_PER_SECOND,
                "queries_per_second": QUERIES_PER_SECOND,
            },
            "credentials_block": CREDENTIALS_BLOCK,
            "storage_block": f"secret/{STORAGE_SECRET}",
            "storage_options": {"client_kwargs": dict(s3_server.storage_options["client_kwargs"])},
            "shards": SHARDS,
        }

        async def scenario():
            from prefect.client.orchestration import get_client
            from prefect.deployments import run_deployment

            async with get_client() as client:
                deployments = [
                    await client.read_deployment_by_name(name)
                    for name in (
                        "kf2v-generate-batch/batch",
                        "kf2v-generate-video/single",
                        "kf2v-generate-batch/nightly",
                    )
                ]
                parent = await run_deployment(
                    "kf2v-generate-batch/batch", parameters=parameters, timeout=0
                )
                parent = await wait_final(client, parent.id, stack, RUN_TIMEOUT)
                runs = await runs_of(client, deployments[0].id)
                return deployments, parent, runs

        with api(stack.api_url):
            deployments, parent, runs = asyncio.run(scenario())
        run_seconds = time.monotonic() - started - setup_seconds
        stats = sim.stats()
        diag = diagnostics(stack, f"parent: {parent.state}")

    # ------------------------------------------------------ the runs, on both workers
    assert parent.state.is_completed(), diag
    shard_runs = [r for r in runs if r.id != parent.id]
    assert sorted(r.name for r in shard_runs) == [f"shard-{i}-of-{SHARDS}" for i in (1, 2)], diag
    assert all(r.state.is_completed() for r in shard_runs), [(r.name, r.state) for r in runs]
    # Each worker holds at most 2 runs and the batch is 3 (the parent waits for its
    # shards), so both workers ran some of it.
    ran_on = {r.labels.get("prefect.worker.name") for r in runs}
    assert ran_on == set(WORKERS), (ran_on, diag)

    # ------------------------------------------------------ nothing points at the checkout
    for d in deployments:
        assert d.entrypoint.startswith("kf2v_flows."), d.entrypoint
        assert d.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": "."}}
        ], d.pull_steps
        assert str(checkout) not in d.model_dump_json(), d.name

    # ------------------------------------------------------ once each, within the account
    assert stats["creates"] == ROWS, stats
    assert sorted(stats["creates_by_fingerprint"].values()) == [1] * ROWS, stats
    assert stats["downloads"] == ROWS, stats  # every video fetched once
    # Tasks at the service: running plus the default look-ahead queue, across both shards.
    assert stats["peak_concurrency"] <= MAX_IN_FLIGHT + DEFAULT_QUEUE_AHEAD, stats
    assert stats["throttled"] == 0, stats  # creates/s and queries/s held across the shards

    fs = s3_server.filesystem()
    out = f"{bucket}/batch/out"
    mp4s = sorted(p for p in fs.find(out) if p.endswith(".mp4") and "/.kf2v/" not in p)
    assert mp4s == [f"{out}/{i}.mp4" for i in ids], mp4s
    for i in ids:
        side = json.loads(fs.cat_file(f"{out}/{i}.json"))
        assert side["bytes"] == fs.size(f"{out}/{i}.mp4") > 0

    from kf2v_tasks.batch.results import from_csv

    merged = from_csv(fs.cat_file(f"{out}/results.csv").decode())
    assert sorted(r.id for r in merged) == ids
    assert {r.status.value for r in merged} == {"succeeded"}, merged
    for r in runs:  # no run carries a secret
        text = json.dumps(r.parameters)
        assert TEST_API_KEY not in text and '"secret"' not in text, r.parameters
    print(
        f"\nsetup {setup_seconds:.1f}s (checkout, wheel, server, deploy, 2 virtualenvs), "
        f"sharded run {run_seconds:.1f}s; workers {sorted(ran_on)}; "
        f"peak concurrency {stats['peak_concurrency']}"
    )
