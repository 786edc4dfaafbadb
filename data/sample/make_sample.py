"""Regenerate the bundled sample: drawn scenes + pairwise preferences in the LPOI/mDPO schema.

    python data/sample/make_sample.py

Deterministic (fixed seed, PIL drawing only): re-running reproduces the committed files byte for byte.
Each scene holds two or three simple objects; the chosen answer names them, the rejected answer
names an object that is not in the picture (a hallucination), as in the mDPO/LPOI training data.
Two deliberately bad records at the end exercise the reject path of the prepare stage.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
W, H = 128, 96

COLORS = {"red": (210, 40, 40), "blue": (40, 70, 210), "green": (40, 160, 60), "yellow": (235, 210, 40),
          "orange": (240, 140, 30), "purple": (130, 50, 170)}
BACKGROUNDS = [(235, 235, 225), (200, 225, 245), (215, 240, 210), (245, 230, 215)]


def _ball(d, x, y, s, c):
    d.ellipse([x, y, x + s, y + s], fill=c, outline=(20, 20, 20))


def _box(d, x, y, s, c):
    d.rectangle([x, y, x + s, y + s], fill=c, outline=(20, 20, 20))


def _tree(d, x, y, s, c):
    d.rectangle([x + s * 0.4, y + s * 0.6, x + s * 0.6, y + s], fill=(110, 70, 30))
    d.polygon([(x, y + s * 0.7), (x + s / 2, y), (x + s, y + s * 0.7)], fill=c)


def _house(d, x, y, s, c):
    d.rectangle([x, y + s * 0.4, x + s, y + s], fill=c, outline=(20, 20, 20))
    d.polygon([(x - 2, y + s * 0.4), (x + s / 2, y), (x + s + 2, y + s * 0.4)], fill=(120, 40, 40))
    d.rectangle([x + s * 0.4, y + s * 0.7, x + s * 0.6, y + s], fill=(60, 40, 20))


def _car(d, x, y, s, c):
    d.rectangle([x, y + s * 0.35, x + s, y + s * 0.75], fill=c, outline=(20, 20, 20))
    d.rectangle([x + s * 0.2, y + s * 0.1, x + s * 0.75, y + s * 0.35], fill=c, outline=(20, 20, 20))
    for wx in (x + s * 0.15, x + s * 0.65):
        d.ellipse([wx, y + s * 0.62, wx + s * 0.22, y + s * 0.84], fill=(30, 30, 30))


def _kite(d, x, y, s, c):
    d.polygon([(x + s / 2, y), (x + s, y + s / 2), (x + s / 2, y + s), (x, y + s / 2)], fill=c, outline=(20, 20, 20))
    d.line([(x + s / 2, y + s), (x + s * 0.3, y + s * 1.3)], fill=(20, 20, 20), width=1)


OBJECTS = {"ball": _ball, "box": _box, "tree": _tree, "house": _house, "car": _car, "kite": _kite}
ABSENT_PHRASES = ["dog", "cat", "bicycle", "umbrella", "clock", "boat", "bench", "bird"]


def scene(rng: random.Random) -> tuple[Image.Image, list[tuple[str, str]]]:
    img = Image.new("RGB", (W, H), rng.choice(BACKGROUNDS))
    d = ImageDraw.Draw(img)
    kinds = rng.sample(sorted(OBJECTS), rng.choice([2, 3]))
    placed = []
    slots = rng.sample([(6, 40), (46, 30), (86, 44), (20, 8), (70, 6)], len(kinds))
    for kind, (x, y) in zip(kinds, slots):
        color = rng.choice(sorted(COLORS))
        OBJECTS[kind](d, x, y, 34, COLORS[color])
        placed.append((color, kind))
    return img, placed


QUESTIONS = [
    "What is in this picture?",
    "Describe the image.",
    "What objects can you see in the image?",
    "What is the {color} object in the image?",
    "Is there a {kind} in this image? Describe it.",
]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def record(i: int, rng: random.Random, placed: list[tuple[str, str]]) -> dict:
    (c0, k0), *rest = placed
    others = " and ".join(_a(f"{c} {k}") for c, k in rest)
    absent = rng.choice(ABSENT_PHRASES)
    q = rng.choice(QUESTIONS).format(color=c0, kind=k0)
    chosen = f"The image shows {_a(f'{c0} {k0}')}. Next to it there is {others}."
    rejected = f"The image shows {_a(f'{c0} {absent}')}. Next to it there is {others} and a small {rng.choice(ABSENT_PHRASES)}."
    return {"id": f"sample-{i:03d}", "img_path": f"scene_{i:03d}.png", "prompt": q, "chosen": chosen, "rejected": rejected}


def main(n: int = 24, seed: int = 0) -> None:
    rng = random.Random(seed)
    (HERE / "images").mkdir(exist_ok=True)
    records = []
    for i in range(n):
        img, placed = scene(rng)
        img.save(HERE / "images" / f"scene_{i:03d}.png", optimize=False)
        records.append(record(i, rng, placed))
    # Deliberately bad: a path escaping the images root, and a duplicate of record 0 (prepare rejects both).
    records.append({**records[1], "id": "sample-bad-path", "img_path": "../../README.md"})
    records.append({**records[0], "id": "sample-000"})
    (HERE / "pairs.json").write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
