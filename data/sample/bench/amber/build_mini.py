"""Rebuild this mini AMBER set from the official data files (maintainer tool, not a pipeline stage).

    python data/sample/bench/amber/build_mini.py ../shared/benchmarks/amber

Keeps the ids below at their original ids, in the official layout and JSON formatting (indent 4,
no trailing newline), copies relation.json and safe_words.txt byte for byte, and draws one small
deterministic picture per kept image (AMBER's photos are not redistributable here).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent

# 2: a duplicated truth word; 5: association before identity; 1004: the generative/discriminative boundary
GENERATIVE_IDS = [1, 2, 3, 5, 11, 1004]
DISCRIMINATIVE_IDS = [
    1005, 1006, 1113, 1114,  # attribute-state, yes / no
    1013, 1014, 1111, 1112,  # attribute-number
    1017, 1018, 1031, 1032,  # attribute-action
    8633, 8643, 8683, 13556,  # existence (truth is always "no")
    13557, 15219,  # discriminative-relation ("yes")
    13558, 15220,  # relation ("no")
]  # fmt: skip
QUERY_FILES = {
    "query_all.json": lambda a: True,
    "query_generative.json": lambda a: a["type"] == "generative",
    "query_discriminative.json": lambda a: a["type"] != "generative",
    "query_discriminative-existence.json": lambda a: a["type"] == "discriminative-hallucination",
    "query_discriminative-attribute.json": lambda a: a["type"].startswith("discriminative-attribute"),
    "query_discriminative-relation.json": lambda a: a["type"] in ("discriminative-relation", "relation"),
}
W, H = 128, 96


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4), encoding="utf-8")  # the official files' exact format


def _person(d: ImageDraw.ImageDraw, x: int, y: int, s: float = 1.0, shirt=(200, 40, 40), hat=None) -> None:
    """A stick-ish figure with feet at (x, y)."""
    h = int(36 * s)
    d.rectangle([x - 4 * s, y - h * 0.75, x + 4 * s, y - h * 0.3], fill=shirt)
    d.line([x - 2 * s, y - h * 0.3, x - 3 * s, y], fill=(40, 40, 90), width=max(1, int(2 * s)))
    d.line([x + 2 * s, y - h * 0.3, x + 3 * s, y], fill=(40, 40, 90), width=max(1, int(2 * s)))
    d.ellipse([x - 4 * s, y - h, x + 4 * s, y - h * 0.77], fill=(235, 195, 160))
    if hat:
        d.rectangle([x - 5 * s, y - h - 2 * s, x + 5 * s, y - h + 1 * s], fill=hat)


def _tree(d: ImageDraw.ImageDraw, x: int, y: int, r: int = 9) -> None:
    d.rectangle([x - 1, y - r, x + 1, y], fill=(100, 70, 40))
    d.ellipse([x - r, y - 3 * r, x + r, y - r], fill=(30, 110, 40))


def draw(image_id: int) -> Image.Image:
    """One simple scene per kept image, loosely after its truth words (same id → same pixels)."""
    im = Image.new("RGB", (W, H), (135, 190, 235))
    d = ImageDraw.Draw(im)
    if image_id == 1:  # sky, forest, grass, person, lake, mountain, road
        d.polygon([(0, 50), (35, 15), (70, 50)], fill=(120, 120, 130))
        d.polygon([(50, 50), (90, 10), (128, 50)], fill=(105, 105, 120))
        for x in range(4, 128, 12):
            _tree(d, x, 56, 6)
        d.rectangle([0, 56, 128, 96], fill=(80, 170, 70))
        d.ellipse([70, 62, 124, 80], fill=(60, 110, 200))
        d.polygon([(20, 96), (40, 56), (46, 56), (50, 96)], fill=(150, 140, 120))
        for x in (10, 58, 64):
            _person(d, x, 90, 0.8)
    elif image_id == 2:  # sky, man, ship, forest, bridge, mountain, cloud, lake, building
        d.ellipse([10, 8, 40, 20], fill=(250, 250, 250))
        d.polygon([(60, 45), (95, 12), (128, 45)], fill=(110, 110, 125))
        for x in range(0, 60, 10):
            _tree(d, x, 48, 6)
        d.rectangle([100, 28, 118, 48], fill=(170, 120, 90))
        d.rectangle([0, 48, 128, 96], fill=(50, 100, 190))
        d.arc([20, 30, 108, 70], 180, 360, fill=(90, 60, 40), width=3)
        d.polygon([(30, 80), (80, 80), (72, 90), (38, 90)], fill=(245, 245, 245))
        d.rectangle([50, 66, 53, 80], fill=(90, 60, 40))
        _person(d, 64, 80, 0.5)
    elif image_id == 3:  # child, grass, flower
        d.rectangle([0, 40, 128, 96], fill=(90, 180, 70))
        for x, c in ((20, (230, 60, 90)), (40, (250, 220, 60)), (95, (200, 80, 220)), (110, (250, 250, 250))):
            d.line([x, 80, x, 70], fill=(30, 120, 30), width=2)
            d.ellipse([x - 4, 64, x + 4, 72], fill=c)
        _person(d, 64, 88, 1.2, shirt=(60, 120, 220))
    elif image_id == 5:  # person, sea, beach, child, toy
        d.rectangle([0, 35, 128, 60], fill=(40, 110, 180))
        d.rectangle([0, 60, 128, 96], fill=(230, 210, 150))
        _person(d, 40, 88, 1.1)
        _person(d, 80, 90, 0.7, shirt=(250, 200, 40))
        d.rectangle([95, 82, 105, 90], fill=(240, 60, 60))
    elif image_id == 11:  # dog, beach
        d.rectangle([0, 50, 128, 96], fill=(230, 210, 150))
        d.ellipse([45, 60, 85, 78], fill=(150, 100, 50))
        d.ellipse([78, 52, 94, 66], fill=(150, 100, 50))
        for x in (50, 58, 72, 80):
            d.rectangle([x, 74, x + 3, 86], fill=(150, 100, 50))
    elif image_id == 1004:  # man, hat, urinal, wall, cup
        d.rectangle([0, 0, 128, 96], fill=(220, 220, 210))
        for x in (70, 100):
            d.rounded_rectangle([x, 40, x + 18, 70], radius=6, fill=(250, 250, 250), outline=(160, 160, 160))
        _person(d, 40, 92, 1.9, shirt=(60, 60, 60), hat=(30, 30, 30))
        d.rectangle([50, 50, 56, 58], fill=(200, 60, 40))
    else:
        raise ValueError(f"no drawing for AMBER image {image_id}")
    return im


def build(source: Path, dest: Path = HERE) -> None:
    annotations = json.loads((source / "annotations.json").read_text(encoding="utf-8"))
    queries = json.loads((source / "query" / "query_all.json").read_text(encoding="utf-8"))
    keep = sorted(GENERATIVE_IDS + DISCRIMINATIVE_IDS)
    ann = {a["id"]: a for a in annotations}
    qry = {q["id"]: q for q in queries}
    _dump(dest / "annotations.json", [ann[i] for i in keep])
    for name, pred in QUERY_FILES.items():
        _dump(dest / "query" / name, [qry[i] for i in keep if pred(ann[i])])
    for name in ("relation.json", "safe_words.txt"):
        shutil.copyfile(source / name, dest / name)
    images = sorted({int(qry[i]["image"].removeprefix("AMBER_").removesuffix(".jpg")) for i in keep})
    (dest / "images").mkdir(exist_ok=True)
    for image_id in images:
        draw(image_id).save(dest / "images" / f"AMBER_{image_id}.jpg", quality=90, optimize=False)


if __name__ == "__main__":
    default = HERE.parents[3].parent / "shared" / "benchmarks" / "amber"  # <repo>/../shared
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
