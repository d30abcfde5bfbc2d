"""Small builders shared by tests: frame images and manifests."""

from __future__ import annotations

import csv
import io
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageDraw


def make_frame(path: Path, size: tuple[int, int] = (320, 240), colour=(200, 80, 40), fmt=None):
    """A simple gradient image with a shape, saved at ``path``."""
    w, h = size
    img = Image.new("RGB", size, colour)
    d = ImageDraw.Draw(img)
    for x in range(0, w, max(1, w // 16)):
        d.line([(x, 0), (x, h)], fill=(x * 255 // w, 255 - colour[1], colour[2]), width=3)
    d.ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=(255 - colour[0], colour[1], 200))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def make_pairs(folder: Path, n: int, size=(320, 240)) -> list[tuple[str, str]]:
    """``n`` distinct frame pairs as paths relative to ``folder``."""
    pairs = []
    for i in range(n):
        a = make_frame(folder / "frames" / f"f{i:03d}_a.png", size, ((i * 37) % 256, 90, 40))
        b = make_frame(folder / "frames" / f"f{i:03d}_b.png", size, (30, (i * 53) % 256, 160))
        pairs.append((str(a.relative_to(folder)), str(b.relative_to(folder))))
    return pairs


def manifest_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """CSV text for ``rows`` (dicts of column → value)."""
    columns = columns or sorted({k for r in rows for k in r})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in columns})
    return buf.getvalue()


#: Time compression of the batch tests' simulators and of the client that talks to them.
SPEED = 600.0


@contextmanager
def fast_service(runtime, seed: int):
    """A simulator for batch tests: tiny renders at SPEED, 8 tasks at once, generous rates."""
    from kf2v_tasks.simulator import SimulatorConfig, run_simulator

    cfg = SimulatorConfig(
        speed=SPEED,
        runtime=runtime,
        render="tiny",
        max_concurrent=8,
        submits_per_second=20,
        queries_per_second=200,
        seed=seed,
    )
    with run_simulator(cfg) as sim:
        yield sim


@contextmanager
def pointed_at(sim, monkeypatch):
    """The environment a user's flow reads (key, base URL) and the client's time scale."""
    from kf2v_tasks import clock

    from conftest import TEST_API_KEY

    monkeypatch.setenv("DASHSCOPE_API_KEY", TEST_API_KEY)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", sim.base_url)
    clock.set_time_scale(SPEED)
    try:
        yield
    finally:
        clock.set_time_scale(None)


def peak_running(rows: list[dict], keep=lambda row: True) -> int:
    """Most tasks RUNNING at once in a simulator timeline (``/_sim/tasks`` rows ``keep`` says)."""
    edges = []
    for r in rows:
        if r["started"] is not None and keep(r):
            edges += [(r["started"], 1), (r["ended"], -1)]
    level = peak = 0
    for _, step in sorted(edges):
        level += step
        peak = max(peak, level)
    return peak
