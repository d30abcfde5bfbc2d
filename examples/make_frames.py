"""Regenerate the example frames (python examples/make_frames.py). Drawn with Pillow only."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent / "frames"
W, H = 640, 480


def sky(top, bottom):
    img = Image.new("RGB", (W, H))
    d = ImageDraw.Draw(img)
    for y in range(H):
        t = y / (H - 1)
        d.line(
            [(0, y), (W, y)],
            fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)),
        )
    return img


def sun_scene(height: float, top, bottom, sun):
    img = sky(top, bottom)
    d = ImageDraw.Draw(img)
    cy = int(H * height)
    d.ellipse([W // 2 - 50, cy - 50, W // 2 + 50, cy + 50], fill=sun)
    d.rectangle([0, int(H * 0.7), W, H], fill=(20, 40, 90))  # water
    for i in range(8):
        y = int(H * 0.72) + i * 16
        d.line([(W // 2 - 60 + i * 5, y), (W // 2 + 60 - i * 5, y)], fill=sun, width=2)
    return img


def orbit(angle: float, hue):
    img = sky((5, 5, 25), (30, 10, 60))
    d = ImageDraw.Draw(img)
    d.ellipse([W // 2 - 70, H // 2 - 70, W // 2 + 70, H // 2 + 70], fill=(60, 120, 200))
    x = W // 2 + int(180 * math.cos(angle))
    y = H // 2 + int(90 * math.sin(angle))
    d.ellipse([x - 20, y - 20, x + 20, y + 20], fill=hue)
    return img


def blocks(shift: int, colour):
    img = sky((240, 240, 235), (200, 200, 190))
    d = ImageDraw.Draw(img)
    for i in range(5):
        x = 40 + i * 120 + shift
        d.rectangle([x, 300 - i * 40, x + 80, 420], fill=colour)
    return img


def main() -> None:
    HERE.mkdir(exist_ok=True)
    scenes = {
        "sunrise_first": sun_scene(0.78, (10, 20, 60), (200, 90, 40), (255, 200, 80)),
        "sunrise_last": sun_scene(0.25, (90, 160, 230), (250, 220, 170), (255, 250, 210)),
        "orbit_first": orbit(0.0, (240, 220, 120)),
        "orbit_last": orbit(math.pi * 0.9, (240, 120, 90)),
        "city_first": blocks(0, (70, 80, 100)),
        "city_last": blocks(-30, (160, 70, 60)),
    }
    for name, img in scenes.items():
        img.save(HERE / f"{name}.jpg", quality=88)


if __name__ == "__main__":
    main()
