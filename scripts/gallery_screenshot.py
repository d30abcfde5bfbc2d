"""Make docs/gallery.png: a real batch on the local simulator, its gallery, a Chromium screenshot.

Nothing here is staged by hand: keyframes are drawn, a manifest is written, the batch runs
through :class:`~kf2v_tasks.batch.runner.BatchRunner` against the simulator (real H.264
videos, posters and strips made by the library) with a throwaway Prefect server, and the
``index.html`` it leaves is photographed by headless Chromium as a browser shows it.

Usage::

    .venv/bin/python scripts/gallery_screenshot.py            # writes docs/gallery.png
    .venv/bin/python scripts/gallery_screenshot.py --keep out  # also keep the batch's folder

Needs the ``[simulator]`` extra and Debian's ``chromium`` (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "gallery.png"

#: (id, prompt, first-frame palette, last-frame palette)
SHOTS = [
    ("sunrise", "the sun rises over a calm sea", ((20, 24, 60), (250, 150, 60)),
     ((120, 190, 240), (255, 240, 200))),
    ("forest", "a path through a pine forest, morning mist", ((20, 60, 30), (120, 170, 110)),
     ((40, 90, 50), (220, 230, 200))),
    ("city", "neon city street at night, light rain", ((10, 10, 30), (200, 40, 160)),
     ((20, 20, 50), (40, 200, 220))),
    ("<img src=x onerror=alert(1)>", "<img src=x onerror=alert(1)> stays text",
     ((60, 20, 20), (200, 120, 80)), ((30, 30, 70), (160, 160, 230))),
]  # fmt: skip


def keyframe(path: Path, top: tuple, bottom: tuple, sun: float, size=(640, 360)) -> None:
    """A vertical gradient with a disc whose height is ``sun`` (0 low .. 1 high)."""
    w, h = size
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y / (h - 1)
        draw.line(
            [(0, y), (w, y)],
            fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)),
        )
    cy = h * (0.85 - 0.6 * sun)
    r = h * 0.12
    draw.ellipse([w * 0.62 - r, cy - r, w * 0.62 + r, cy + r], fill=(255, 236, 170))
    for i in range(6):  # some hills, so frames differ in shape as well as colour
        x = w * i / 5
        draw.polygon(
            [(x - w * 0.3, h), (x, h * (0.72 + 0.05 * math.sin(i * 1.7))), (x + w * 0.3, h)],
            fill=tuple(max(0, c // 3) for c in top),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_manifest(folder: Path) -> Path:
    rows = []
    for name, prompt, first, last in SHOTS:
        safe = "hostile" if "<" in name else name
        keyframe(folder / f"{safe}_a.png", *first, sun=0.0)
        keyframe(folder / f"{safe}_b.png", *last, sun=1.0)
        rows.append(
            {"id": safe, "first_frame": f"{safe}_a.png", "last_frame": f"{safe}_b.png",
             "prompt": prompt}
        )  # fmt: skip
    rows.append(
        {"id": "missing", "first_frame": "sunrise_a.png", "last_frame": "nowhere.png",
         "prompt": "a row whose last frame does not exist"}
    )  # fmt: skip
    path = folder / "storyboard.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "first_frame", "last_frame", "prompt"])
        w.writeheader()
        w.writerows(rows)
    return path


async def run_batch(manifest: Path, out: Path) -> None:
    from kf2v_tasks import clock
    from kf2v_tasks.batch.config import ConcurrencySettings
    from kf2v_tasks.batch.reporting import PrefectReporter
    from kf2v_tasks.batch.runner import BatchRunner
    from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator

    speed = 600.0
    cfg = SimulatorConfig(
        speed=speed,
        runtime=RuntimeDistribution(kind="fixed", low=30),
        max_concurrent=8,
        submits_per_second=20,
        queries_per_second=200,
        seed=3,
    )
    with run_simulator(cfg) as sim:
        os.environ["DASHSCOPE_API_KEY"] = "sk-screenshot-not-a-real-key"
        os.environ["DASHSCOPE_HTTP_BASE_URL"] = sim.base_url
        clock.set_time_scale(speed)
        try:
            runner = BatchRunner(
                str(manifest),
                str(out),
                concurrency=ConcurrencySettings(max_in_flight=4, submits_per_second=20),
                observer=PrefectReporter(),
            )
            summary = await _in_flow(runner)
        finally:
            clock.set_time_scale(None)
    print(summary.headline())


async def _in_flow(runner):
    from prefect import flow

    @flow(name="kf2v-gallery-screenshot")
    async def shoot():
        return await runner.run()

    return await shoot()


def screenshot(page: Path, png: Path, chromium: str, size=(1280, 1200)) -> None:
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kf2v-chromium-") as profile:
        subprocess.run(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--force-color-profile=srgb",
                "--force-prefers-reduced-motion",
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
                f"--screenshot={png}",
                page.as_uri(),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument("--keep", type=Path, help="keep the batch's output folder here")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory(prefix="kf2v-gallery-") as tmp:
        work = Path(tmp)
        out = args.keep or work / "out"
        manifest = write_manifest(work / "in")
        with prefect_test_harness(server_startup_timeout=120):
            asyncio.run(run_batch(manifest, out))
        screenshot(out / "index.html", args.output, chromium)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
