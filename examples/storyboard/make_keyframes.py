"""Regenerate the storyboard keyframes (python examples/storyboard/make_keyframes.py).

Drawn with Pillow only: a day over the sea in four keyframes (``day-1`` .. ``day-4``) and
a moon's orbit in three (``moon-1`` .. ``moon-3``). ``storyboard.csv`` chains them: each
row's last frame is the next row's first frame, one film per ``sequence``.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent
W, H = 640, 480


def sky(top, bottom) -> Image.Image:
    img = Image.new("RGB", (W, H))
    d = ImageDraw.Draw(img)
    for y in range(H):
        t = y / (H - 1)
        d.line(
            [(0, y), (W, y)],
            fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)),
        )
    return img


def day(height: float, top, bottom, sun) -> Image.Image:
    img = sky(top, bottom)
    d = ImageDraw.Draw(img)
    cy = int(H * height)
    d.ellipse([W // 2 - 45, cy - 45, W // 2 + 45, cy + 45], fill=sun)
    d.rectangle([0, int(H * 0.7), W, H], fill=(20, 40, 90))  # the sea hides a low sun
    for i in range(8):
        y = int(H * 0.72) + i * 16
        d.line([(W // 2 - 60 + i * 5, y), (W // 2 + 60 - i * 5, y)], fill=sun, width=2)
    return img


def moon(angle: float) -> Image.Image:
    img = sky((5, 5, 25), (30, 10, 60))
    d = ImageDraw.Draw(img)
    d.ellipse([W // 2 - 70, H // 2 - 70, W // 2 + 70, H // 2 + 70], fill=(60, 120, 200))
    x, y = W // 2 + int(200 * math.cos(angle)), H // 2 + int(100 * math.sin(angle))
    d.ellipse([x - 22, y - 22, x + 22, y + 22], fill=(235, 225, 200))
    return img


def main() -> None:
    frames = {
        "day-1": day(0.80, (5, 10, 40), (60, 40, 80), (200, 90, 60)),  # before dawn
        "day-2": day(0.62, (40, 50, 110), (230, 120, 60), (255, 190, 80)),  # sunrise
        "day-3": day(0.38, (80, 140, 220), (240, 200, 160), (255, 235, 170)),  # morning
        "day-4": day(0.15, (60, 130, 230), (170, 210, 250), (255, 252, 230)),  # noon
        "moon-1": moon(0.0),
        "moon-2": moon(math.pi * 0.6),
        "moon-3": moon(math.pi * 1.2),
    }
    for name, img in frames.items():
        img.save(HERE / f"{name}.jpg", quality=85)


if __name__ == "__main__":
    main()
