"""Today's frame limits (reference §16) through the batch flow, on the simulator: 4K pairs
are delivered on both protocols; on wan2.7-i2v a side over 8000 px, an aspect beyond 8:1
and a file over 20 MB are refused before any create, each naming row, column and limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kf2v_flows.batch import generate_batch
from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.errors import BatchFailedError
from kf2v_tasks.simulator import RuntimeDistribution

from helpers import fast_service, make_frame, manifest_text, pointed_at

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]
FAST = ConcurrencySettings(max_in_flight=4, submits_per_second=20, queries_per_second=200)
COLUMNS = ["id", "first_frame", "last_frame", "model", "resolution"]
W27 = "wan2.7-i2v"


def _noise_png(path: Path, size: tuple[int, int]) -> None:
    """A PNG that does not compress: its size in bytes is about 3 × width × height."""
    pixels = np.random.default_rng(7).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path, format="PNG", compress_level=0)


async def test_4k_is_delivered_and_what_is_beyond_the_limits_is_refused_first(tmp_path):
    src = tmp_path / "in"
    make_frame(src / "uhd_a.jpg", (3840, 2160), fmt="JPEG")
    make_frame(src / "uhd_b.jpg", (3840, 2160), (40, 160, 220), fmt="JPEG")
    make_frame(src / "wide.jpg", (8100, 1200), fmt="JPEG")  # a side over 8000 px (6.75:1)
    make_frame(src / "strip.jpg", (2700, 300), fmt="JPEG")  # 9:1, beyond 8:1
    _noise_png(src / "heavy.png", (2900, 2500))  # ~21.8 MB, over wan2.7-i2v's 20 MB
    assert (src / "heavy.png").stat().st_size > 20 * 1024 * 1024
    rows = [
        {"id": "uhd-kf2v", "first_frame": "uhd_a.jpg", "last_frame": "uhd_b.jpg"},
        {"id": "uhd-w27", "first_frame": "uhd_a.jpg", "last_frame": "uhd_b.jpg", "model": W27},
        {"id": "wide", "first_frame": "wide.jpg", "last_frame": "uhd_b.jpg", "model": W27},
        {"id": "strip", "first_frame": "uhd_a.jpg", "last_frame": "strip.jpg", "model": W27},
        {"id": "heavy", "first_frame": "heavy.png", "last_frame": "uhd_b.jpg", "model": W27},
    ]
    for row in rows:
        row["resolution"] = "720P"
    manifest = src / "m.csv"
    manifest.write_text(manifest_text(rows, COLUMNS))
    out = tmp_path / "out"
    with fast_service(RuntimeDistribution(kind="fixed", low=30), seed=41) as sim:
        with pytest.MonkeyPatch.context() as mp, pointed_at(sim, mp):
            with pytest.raises(BatchFailedError) as info:
                await generate_batch(str(manifest), str(out), concurrency=FAST)
        creates = sim.stats()["creates"]
    summary = info.value.summary
    assert summary.counts == {"succeeded": 2, "invalid": 3}
    assert creates == 2  # only the two 4K rows were ever sent
    assert (out / "uhd-kf2v.mp4").stat().st_size > 0 and (out / "uhd-w27.mp4").stat().st_size > 0
    errors = {r.id: r.error_message for r in summary.results if r.status.value == "invalid"}
    assert errors["wide"].startswith("row 4, column 'first_frame'") and "8000" in errors["wide"]
    assert errors["strip"].startswith("row 5, column 'last_frame'") and "8:1" in errors["strip"]
    assert errors["heavy"].startswith("row 6, column 'first_frame'") and "20" in errors["heavy"]
