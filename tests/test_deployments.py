"""deployments/prefect.yaml on a real Prefect server with two process workers, S3 and sharding.

Quick checks of the file itself (entry points by module, nothing that names the deploying
machine's folders, the commented Docker example), then one integration test (a couple of
minutes): a real ``prefect server start`` on a free loopback port with a temporary
PREFECT_HOME, a moto S3 server and the simulator; the blocks are registered and saved,
``prefect deploy --all`` deploys the YAML, two ``prefect worker start`` processes serve
the pool, and the batch deployment is triggered through the API the way the UI does, with
the manifest and the outputs on S3 and sharding on. Everything the test starts it stops.
tests/test_workers_multi.py runs the same file on workers that share no folder with it.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from kf2v_tasks._cli.stack import LocalStack, api, free_port, tail
from kf2v_tasks.lanes.names import DEFAULT_QUEUE_AHEAD
from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator

from conftest import TEST_API_KEY
from helpers import make_pairs, manifest_text

ROOT = Path(__file__).resolve().parents[1]
POOL = "kf2v-process"
SPEED = 600.0
ROWS = 8
SHARDS = 4
MAX_IN_FLIGHT = 2
WORKERS = ("kf2v-test-worker-a", "kf2v-test-worker-b")
CREDENTIALS_BLOCK = "kf2v-test-simulator"
STORAGE_SECRET = "kf2v-test-s3"
RUN_TIMEOUT = 300.0
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
#: The commented Docker work-pool example ends the file; its first line.
DOCKER_EXAMPLE = "  # - name: batch-docker"
#: Job variables of prefect-docker's Docker work pool (prefect_docker.worker) the example may set.
DOCKER_JOB_VARIABLES = {"image", "image_pull_policy", "auto_remove", "env", "networks", "volumes"}


def diagnostics(stack: LocalStack, extra: str = "") -> str:
    """``extra`` and the tail of every stack process's log, for an assertion message."""
    parts = [extra] if extra else []
    for p in stack.processes:
        parts.append(f"----- {p.name} (exit {p.proc.poll()}) {p.log}\n{tail(p.log, 80)}")
    return "\n".join(parts)


async def save_blocks(sim_url: str, s3_options: dict) -> None:
    """Save the simulator's credentials block and the S3 Secret block on the current server."""
    from prefect.blocks.system import Secret
    from pydantic import SecretStr

    from kf2v_tasks.credentials import DashScopeCredentials

    await DashScopeCredentials(api_key=SecretStr(TEST_API_KEY), base_url=sim_url).asave(
        CREDENTIALS_BLOCK, overwrite=True
    )
    # The storage secrets (S3 key and secret) live in a Secret block, never in parameters.
    await Secret(value=json.dumps(s3_options)).asave(STORAGE_SECRET, overwrite=True)


async def wait_final(client, flow_run_id, stack: LocalStack, timeout: float):
    """The flow run once final; fail with the logs if it takes too long or a worker dies."""
    deadline = time.monotonic() + timeout
    while True:
        run = await client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() > deadline:
            raise AssertionError(
                diagnostics(stack, f"flow run {run.name} still {run.state} after {timeout}s")
            )
        for w in stack.workers:
            if not w.alive():
                raise AssertionError(diagnostics(stack, f"{w.name} died"))
        await asyncio.sleep(2.0)


async def runs_of(client, deployment_id) -> list:
    """Every flow run of the deployment (a sharded batch: the parent and its shards)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return await client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        limit=200,
    )


def _yaml(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def test_entry_points_are_modules_of_the_installed_package():
    """A flow run imports its flow by module, so it needs the package, not this folder."""
    from prefect.flows import load_flow_from_entrypoint

    flows = {}
    for d in _yaml(PREFECT_YAML.read_text())["deployments"]:
        module, _, function = d["entrypoint"].partition(":")
        assert module.startswith("kf2v_flows.") and "/" not in module, d["entrypoint"]
        flows[d["name"]] = load_flow_from_entrypoint(d["entrypoint"]).name
    assert flows == {
        "batch": "kf2v-generate-batch",
        "single": "kf2v-generate-video",
        "nightly": "kf2v-generate-batch",
        "retry-failed": "kf2v-retry-batch",
    }


def test_no_step_needs_the_deploying_machine():
    """No build step records a folder and the one pull step stays where the worker is."""
    text = PREFECT_YAML.read_text()
    config = _yaml(text)
    assert not config.get("build") and not config.get("push")
    assert config["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "."}}
    ]
    for d in config["deployments"]:
        assert not {"build", "push", "pull"} & set(d), d["name"]
    # No step output (a folder, an image tag) is templated in; triggers template events.
    plain = [{k: v for k, v in d.items() if k != "triggers"} for d in config["deployments"]]
    assert "{{" not in json.dumps({**config, "deployments": plain})


def test_commented_docker_example_is_a_valid_deployment():
    """Uncommented, the Docker example parses, names a Docker pool and takes valid parameters."""
    from prefect.flows import load_flow_from_entrypoint

    text = PREFECT_YAML.read_text()
    assert DOCKER_EXAMPLE in text
    head, example = text.split(DOCKER_EXAMPLE, 1)
    lines = (DOCKER_EXAMPLE + example).splitlines()
    assert all(line.startswith("  #") for line in lines), "the example must end the file"
    uncommented = "\n".join("  " + line[4:] for line in lines)
    config = _yaml(head + uncommented + "\n")
    docker = next(d for d in config["deployments"] if d["name"] == "batch-docker")
    batch = next(d for d in config["deployments"] if d["name"] == "batch")
    assert docker["entrypoint"] == batch["entrypoint"]
    pool = docker["work_pool"]
    assert pool["name"] == "kf2v-docker" and set(pool["job_variables"]) <= DOCKER_JOB_VARIABLES
    # The image is the one the Dockerfile's instructions build.
    image = pool["job_variables"]["image"]
    assert f"docker build -t {image} ." in (ROOT / "Dockerfile").read_text()
    flow = load_flow_from_entrypoint(docker["entrypoint"])
    flow.validate_parameters({"manifest": "m.csv", "output": "out", **docker["parameters"]})


def test_dockerfile_copies_every_package_folder():
    """The image's wheel is built from what the Dockerfile copies: every package folder."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = set(project["tool"]["setuptools"]["package-dir"].values())
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            copied.update(line.split()[1:-1])
    assert package_dirs | {"pyproject.toml", project["project"]["readme"]} <= copied, copied


@pytest.mark.slow
def test_batch_deployment_sharded_on_two_workers_with_s3(tmp_path, s3_server):
    started = time.monotonic()
    # ------------------------------------------------------------------ inputs on S3
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
    manifest_url = f"s3://{bucket}/batch/manifest.csv"
    output_url = f"s3://{bucket}/batch/out"

    # Non-secret S3 options may be parameters; the key and secret may not.
    public_options = {"client_kwargs": dict(s3_server.storage_options["client_kwargs"])}
    worker_env = {"KF2V_TIME_SCALE": f"{SPEED:g}"}

    sim_config = SimulatorConfig(
        speed=SPEED,
        max_concurrent=8,  # above the account limit, so a violation would be visible
        runtime=RuntimeDistribution(kind="uniform", low=60, high=120),
        render="tiny",
        seed=5,
    )
    home = tmp_path / "prefect-home"
    with (
        run_simulator(sim_config) as sim,
        LocalStack(home=home, prefect_port=free_port(), ui=False) as stack,
    ):
        # -------------------------------------------------------------- server and setup
        stack.start_server()
        registered = stack.prepare(pool=POOL)
        assert "DashScope Credentials" in registered, registered
        with api(stack.api_url):
            asyncio.run(save_blocks(sim.base_url, s3_server.storage_options))
        deploy_out = stack.deploy(ROOT)
        assert "kf2v-generate-batch/batch" in deploy_out, deploy_out
        for name in WORKERS:
            stack.start_worker(POOL, name=name, limit=2, env=worker_env)
        setup_seconds = time.monotonic() - started

        parameters = {
            "manifest": manifest_url,
            "output": output_url,
            "defaults": {"resolution": "480P"},
            "concurrency": {
                "max_in_flight": MAX_IN_FLIGHT,
                "submits_per_second": 20.0,
                "queries_per_second": 200.0,
            },
            "credentials_block": CREDENTIALS_BLOCK,
            "storage_block": f"secret/{STORAGE_SECRET}",
            "storage_options": public_options,
            "shards": SHARDS,
        }

        async def scenario():
            from prefect.client.orchestration import get_client
            from prefect.deployments import run_deployment

            async with get_client() as client:
                # Trigger the deployment like the UI's "Custom run" does.
                parent = await run_deployment(
                    "kf2v-generate-batch/batch", parameters=parameters, timeout=0
                )
                parent = await wait_final(client, parent.id, stack, RUN_TIMEOUT)
                # No credentials_block, and none in the workers' environment.
                bare = {k: v for k, v in parameters.items() if k != "credentials_block"}
                bare.update(output=f"{output_url}-bare", shards=1)
                uncredentialed = await run_deployment(
                    "kf2v-generate-batch/batch", parameters=bare, timeout=0
                )
                uncredentialed = await wait_final(client, uncredentialed.id, stack, RUN_TIMEOUT)
                batch = await client.read_deployment_by_name("kf2v-generate-batch/batch")
                runs = await runs_of(client, batch.id)
                nightly = await client.read_deployment_by_name("kf2v-generate-batch/nightly")
                single = await client.read_deployment_by_name("kf2v-generate-video/single")
                # The kf2v lane of the account: kf2v-<account>-wan2.2-kf2v-flash.
                (limit,) = [
                    x
                    for x in await client.read_global_concurrency_limits(limit=200, offset=0)
                    if x.name.startswith("kf2v-") and x.name.endswith("-wan2.2-kf2v-flash")
                ]
                return parent, batch, runs, nightly, single, limit, uncredentialed

        with api(stack.api_url):
            parent, batch, runs, nightly, single, limit, uncredentialed = asyncio.run(scenario())
        run_seconds = time.monotonic() - started - setup_seconds
        stats = sim.stats()
        diag = diagnostics(stack, f"parent: {parent.state}")

    # ------------------------------------------------------------------ the run
    assert parent.state.is_completed(), diag
    shard_runs = [r for r in runs if r.id not in (parent.id, uncredentialed.id)]
    assert sorted(r.name for r in shard_runs) == [
        f"shard-{i}-of-{SHARDS}" for i in range(1, SHARDS + 1)
    ], diag
    assert all(r.state.is_completed() for r in shard_runs), [(r.name, r.state) for r in shard_runs]
    # A shard learns its slice from its tag; nothing internal is a parameter.
    assert all(r.parameters["shards"] == 1 for r in shard_runs)
    assert not any({"shard_index", "shard_count", "results_name"} & set(r.parameters) for r in runs)
    shard_tags = sorted(t for r in shard_runs for t in r.tags if t.startswith("kf2v-shard:"))
    assert shard_tags == [f"kf2v-shard:{i}-of-{SHARDS}" for i in range(SHARDS)], shard_tags
    # The shards ran on both workers (the worker labels its flow runs with its name).
    ran_on = {r.labels.get("prefect.worker.name") for r in shard_runs}
    assert ran_on == set(WORKERS), (ran_on, diag)

    # Nothing secret is a parameter of any run.
    for r in runs:
        text = json.dumps(r.parameters)
        assert TEST_API_KEY not in text and '"secret"' not in text, r.parameters

    # ------------------------------------------------------------------ the account limit
    # The account's tasks at the service: running plus the default look-ahead queue.
    assert limit.limit == MAX_IN_FLIGHT + DEFAULT_QUEUE_AHEAD and limit.active
    assert stats["peak_concurrency"] <= MAX_IN_FLIGHT + DEFAULT_QUEUE_AHEAD, stats
    assert stats["creates"] == ROWS, stats
    assert sorted(stats["creates_by_fingerprint"].values()) == [1] * ROWS, stats

    # ------------------------------------------------------------------ outputs on S3
    fs.invalidate_cache()
    out = f"{bucket}/batch/out"
    mp4s = sorted(p for p in fs.find(out) if p.endswith(".mp4") and "/.kf2v/" not in p)
    assert mp4s == [f"{out}/{i}.mp4" for i in ids], mp4s
    for i in ids:
        side = json.loads(fs.cat_file(f"{out}/{i}.json"))
        assert side["bytes"] == fs.size(f"{out}/{i}.mp4") > 0

    from kf2v_tasks.batch.results import from_csv

    merged = from_csv(fs.cat_file(f"{out}/results.csv").decode())
    assert sorted(r.id for r in merged) == ids
    assert len(merged) == ROWS
    assert {r.status.value for r in merged} == {"succeeded"}, merged
    assert sorted(r.row for r in merged) == list(range(2, ROWS + 2))

    # ------------------------------------------------------------------ no credentials
    # The watching side gets the reason in one line; results.csv says it of every row.
    assert uncredentialed.state.is_failed(), uncredentialed.state
    assert "no DashScope credentials" in uncredentialed.state.message, uncredentialed.state
    assert "\n" not in uncredentialed.state.message.strip()
    bare_rows = from_csv(fs.cat_file(f"{out}-bare/results.csv").decode())
    assert len(bare_rows) == ROWS and {r.error_code for r in bare_rows} == {"NoCredentials"}
    assert all("no credentials" in r.error_message for r in bare_rows), bare_rows

    # ------------------------------------------------------------------ the schedule
    assert len(nightly.schedules) == 1, nightly.schedules
    schedule = nightly.schedules[0].schedule
    assert schedule.cron == "0 2 * * *" and schedule.timezone == "Asia/Singapore"
    assert nightly.schedules[0].active is False  # created paused: edit, then resume
    assert nightly.parameters["manifest"].startswith("s3://")
    assert nightly.parameters["shards"] == 2
    assert not batch.schedules

    # ------------------------------------------------------------------ the UI's form
    _check_batch_schema(batch.parameter_openapi_schema)
    _check_single_schema(single.parameter_openapi_schema)
    assert set(batch.tags) >= {"kf2v", "batch"} and batch.work_pool_name == POOL
    assert batch.parameters["concurrency"]["global_limit"] == "kf2v"
    assert single.global_concurrency_limit.limit == 4
    assert single.concurrency_options.collision_strategy.value == "ENQUEUE"

    print(
        f"\nsetup {setup_seconds:.1f}s, sharded run {run_seconds:.1f}s, "
        f"total {time.monotonic() - started:.1f}s; workers {sorted(ran_on)}; "
        f"peak concurrency {stats['peak_concurrency']}"
    )


def _enum_of(schema: dict, name: str) -> list:
    return schema["definitions"][name]["enum"]


def _check_batch_schema(schema: dict) -> None:
    props = schema["properties"]
    assert schema["required"] == ["manifest", "output"]
    for field in (
        "manifest",
        "output",
        "defaults",
        "concurrency",
        "polling",
        "dry_run",
        "max_cost",
        "fail_fast",
        "credentials_block",
        "storage_block",
        "storage_options",
        "shards",
    ):
        assert props[field].get("description"), f"{field} has no description"
    assert not {"shard_index", "shard_count", "results_name"} & set(props)
    assert {"$ref": "#/definitions/DashScopeCredentials"} in props["credentials_block"]["anyOf"]
    assert "fsspec URL" in props["manifest"]["description"]
    assert props["defaults"]["$ref"] == "#/definitions/RowDefaults"
    row_defaults = schema["definitions"]["RowDefaults"]["properties"]
    # Models are data (a models file may add one), so the form takes any name and offers
    # the built-in ones as examples; the run refuses an unknown one, naming the row.
    assert row_defaults["model"]["type"] == "string"
    assert {"wan2.2-kf2v-flash", "wan2.7-i2v"} <= set(row_defaults["model"]["examples"])
    # Empty: each row's model's own default (kf2v 720P, wan2.7-i2v 1080P).
    assert {"$ref": "#/definitions/Resolution"} in row_defaults["resolution"]["anyOf"]
    assert _enum_of(schema, "Resolution") == ["480P", "720P", "1080P"]
    assert set(_enum_of(schema, "AmbiguousPolicy")) == {"retry_once", "fail"}
    conc = schema["definitions"]["ConcurrencySettings"]["properties"]
    for field in (
        "max_in_flight",
        "lanes",
        "submits_per_second",
        "queries_per_second",
        "global_limit",
    ):
        assert conc[field].get("description"), f"concurrency.{field} has no description"
    assert set(_enum_of(schema, "Order")) == {"longest", "manifest"}


def _check_single_schema(schema: dict) -> None:
    props = schema["properties"]
    assert schema["required"] == ["first_frame", "last_frame", "output"]
    for field in ("first_frame", "last_frame", "output", "prompt", "options"):
        assert props[field].get("description"), f"{field} has no description"
    assert "Resolution" in schema["definitions"]
