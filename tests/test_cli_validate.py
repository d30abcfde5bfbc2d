"""``kf2v validate`` and the up-front manifest check, run as a user runs them.

Neither starts a Prefect server nor the simulator: every test here finishes in seconds,
and the fresh PREFECT_HOME never gets a database.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import make_pairs, manifest_text

KF2V = str(Path(sys.executable).parent / "kf2v")


def user_env(tmp_path: Path) -> dict[str, str]:
    """A user's shell: fresh HOME and PREFECT_HOME, no key, no Prefect server configured."""
    (tmp_path / "home").mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"))
    for name in ("DASHSCOPE_API_KEY", "DASHSCOPE_HTTP_BASE_URL", "PREFECT_API_URL"):
        env.pop(name, None)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env


def kf2v(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run(
        [KF2V, *args], env=user_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    took = time.monotonic() - started
    print(f"kf2v {' '.join(args[:1])}: {took:.2f} s")
    # Nothing here may start Prefect's server (it would leave a database) or take long.
    assert not list((tmp_path / "prefect").glob("*.db")), "a Prefect server was started"
    assert took < 30, f"{took:.1f} s: something heavy started"
    return result


def user_files(tmp_path: Path) -> list[Path]:
    """Everything under ``tmp_path`` but the fresh HOME and PREFECT_HOME."""
    return sorted(p for p in tmp_path.rglob("*") if not {"prefect", "home"} & set(p.parts))


def one_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr.rstrip("\n")


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    """A manifest with two good rows, a bad seed and a missing frame."""
    folder = tmp_path / "batch"
    pairs = make_pairs(folder, 3)
    rows = [
        {"id": "good1", "first_frame": pairs[0][0], "last_frame": pairs[0][1]},
        {"id": "bad_seed", "first_frame": pairs[1][0], "last_frame": pairs[1][1], "seed": "x"},
        {
            "id": "good2",
            "first_frame": pairs[2][0],
            "last_frame": pairs[2][1],
            "resolution": "1080P",
        },
        {"id": "no_frame", "first_frame": "frames/missing.png", "last_frame": pairs[0][1]},
    ]
    (folder / "m.csv").write_text(manifest_text(rows))
    return folder / "m.csv"


def test_validate_good_manifest_writes_nothing_and_exits_zero(tmp_path: Path):
    folder = tmp_path / "ok"
    pairs = make_pairs(folder, 2)
    rows = [{"id": f"r{i}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)]
    (folder / "m.csv").write_text(manifest_text(rows))
    before = user_files(tmp_path)
    result = kf2v(tmp_path, "validate", str(folder / "m.csv"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{folder / 'm.csv'}: 2 rows, 2 valid, 0 invalid",
        "estimated cost 2.00 CNY for 2 valid rows (wan2.2-kf2v-flash 720P x2) at beijing prices",
    ]
    assert user_files(tmp_path) == before  # nothing written


def test_validate_lists_every_invalid_row_and_exits_one(tmp_path: Path, batch: Path):
    result = kf2v(tmp_path, "validate", str(batch))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{batch}: 4 rows, 2 valid, 2 invalid"
    assert lines[1] == "row 3, column 'seed': 'x' is not an integer in 0..2147483647"
    assert lines[2].startswith("row 5, column 'first_frame': first frame ")
    assert "missing.png" in lines[2]
    # 720P and 1080P on wan2.2 flash: 1.00 + 2.40 (the default price table)
    assert lines[3].startswith("estimated cost 3.40 CNY for 2 valid rows (")
    assert result.stderr == ""


def test_validate_output_writes_a_dry_run_table_and_never_results_csv(tmp_path: Path, batch: Path):
    out = tmp_path / "plan"
    first = kf2v(tmp_path, "validate", str(batch), "--output", str(out))
    assert first.returncode == 1, first.stderr
    dry = out / "results.dry-run.csv"
    assert first.stdout.splitlines()[-1] == (
        f"results: {dry} (a dry run's table; results.csv is left as it is)"
    )
    results = list(csv.DictReader(dry.open()))
    assert [(r["row"], r["status"]) for r in results] == [
        ("2", "planned"), ("3", "invalid"), ("4", "planned"), ("5", "invalid"),
    ]  # fmt: skip
    assert results[0]["output"] == str(out / "good1.mp4") and results[0]["cost"] == "1.0"
    assert "column 'seed'" in results[1]["error_message"]
    assert not (out / "results.csv").exists()

    # A run's results.csv there is never touched; the dry-run table is simply rewritten.
    (out / "results.csv").write_text("row,id,status\n2,good1,succeeded\n")
    again = kf2v(tmp_path, "validate", str(batch), "--output", str(out))
    assert again.returncode == 1 and again.stderr == ""
    assert (out / "results.csv").read_text() == "row,id,status\n2,good1,succeeded\n"
    assert len(list(csv.DictReader(dry.open()))) == 4


def test_validate_max_cost_names_the_rows_over_budget_and_exits_three(tmp_path: Path):
    folder = tmp_path / "ok"
    pairs = make_pairs(folder, 3)
    rows = [{"id": f"r{i}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)]
    (folder / "m.csv").write_text(manifest_text(rows))
    out = tmp_path / "out"
    result = kf2v(tmp_path, "validate", str(folder / "m.csv"), "--max-cost", "2.5", "--output",
                  str(out))  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    assert (
        "budget: max_cost 2.50 CNY: 2 rows fit (2.00 CNY): 2 (r0), 3 (r1); "
        "1 row over budget, not submitted: 4 (r2)"
    ) in result.stdout.splitlines()
    table = list(csv.DictReader((out / "results.dry-run.csv").open()))
    assert [r["status"] for r in table] == ["planned", "planned", "over_budget"]
    assert "would exceed max_cost 2.50" in table[2]["error_message"]


def test_a_misspelt_column_is_one_line_with_a_did_you_mean(tmp_path: Path):
    (a, b) = make_pairs(tmp_path, 1)[0]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"first_frame,last_frame,promt\n{a},{b},a slow pan\n")
    for command in ("validate", "run"):
        extra = ["--output", str(tmp_path / "out")] if command == "run" else []
        result = kf2v(tmp_path, command, str(manifest), *extra)
        assert result.returncode == 2
        line = one_line(result)
        assert line.startswith(
            f"kf2v {command}: error: manifest {manifest}: line 1 (header): unknown column "
            "'promt' (did you mean 'prompt'?)"
        ), line
        assert line.endswith("pass extra_columns=True (kf2v: --extra-columns)")
        assert not (tmp_path / "out").exists()
    ok = kf2v(tmp_path, "validate", str(manifest), "--extra-columns")
    assert ok.returncode == 0, ok.stdout
    assert "warning: column 'promt' is carried through as your own column" in ok.stdout


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "no such file"),
        (b"id,first_frame,prompt\na,b.png,c\n",
         "line 1 (header): missing required column(s) last_frame "
         "(header has: 'id', 'first_frame', 'prompt')"),
        ("first_frame,last_frame\na.png,é.png\n".encode("latin-1"),
         "line 2 is not UTF-8 text (byte 0xe9 at offset 29); save the file as CSV UTF-8"),
    ],
)  # fmt: skip
def test_an_unusable_manifest_is_one_line_before_anything_starts(
    tmp_path: Path, command: str, content, reason: str
):
    manifest = tmp_path / "m.csv"
    if content is not None:
        manifest.write_bytes(content)
    extra = ["--output", str(tmp_path / "out")] if command == "run" else []
    result = kf2v(tmp_path, command, str(manifest), *extra)
    assert result.returncode == 2
    assert one_line(result) == f"kf2v {command}: error: manifest {manifest}: {reason}"
    assert result.stdout == ""  # the one stderr line is all: no simulator notice either
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path: Path):
    result = kf2v(tmp_path, "validate", str(tmp_path / "nope.csv"), "--debug")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ManifestFileError" in result.stderr


def test_generate_with_an_unusable_frame_is_one_line_before_anything_starts(tmp_path: Path):
    (first, last) = make_pairs(tmp_path, 1)[0]
    out = tmp_path / "clip.mp4"
    result = kf2v(
        tmp_path, "generate", "--first", str(tmp_path / "nope.png"), "--last",
        str(tmp_path / last), "--output", str(out),
    )  # fmt: skip
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith(f"kf2v generate: error: first frame '{tmp_path / 'nope.png'}': ")
    assert result.stdout == "" and not out.exists()


_PROBE = """
import sys
from kf2v_tasks._cli.main import main
code = main(["validate", sys.argv[1]])
heavy = ("kf2v_flows", "prefect.flow_engine", "prefect.server", "kf2v_tasks.simulator.server")
print(code, sorted(m for m in sys.modules if m.startswith(heavy)))
"""


def test_validate_loads_no_flow_engine_no_server_and_no_simulator(tmp_path: Path, batch: Path):
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(batch)],
        env=user_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "1 []"
