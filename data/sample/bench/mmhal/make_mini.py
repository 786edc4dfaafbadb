"""Regenerate the mini MMHal-Bench set in this folder (deterministic; run from anywhere).

    python data/sample/bench/mmhal/make_mini.py

Writes ``mmhal-bench_answer_template.json`` (the official template format, 8 items, one per
question type in the official positional order) and the drawn images ``images/<name>.jpg``, where
``<name>`` is the basename of each item's ``image_src`` (the HF dataset's layout).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
W, H = 128, 96


def hydrant(d):
    d.rectangle((52, 35, 76, 90), fill=(200, 30, 30))
    d.ellipse((50, 22, 78, 42), fill=(240, 210, 30))


def cat_only(d):
    d.ellipse((40, 40, 90, 80), fill=(90, 90, 90))
    d.ellipse((80, 28, 104, 50), fill=(90, 90, 90))


def two_trees(d):
    for x, top in ((30, 40), (90, 10)):
        d.rectangle((x - 4, 70, x + 4, 92), fill=(110, 70, 30))
        d.ellipse((x - 18, top, x + 18, 75), fill=(40, 140, 40))


def three_apples(d):
    for x in (25, 60, 95):
        d.ellipse((x - 12, 40, x + 12, 64), fill=(210, 30, 30))


def ball_and_box(d):
    d.ellipse((15, 50, 45, 80), fill=(240, 120, 20))
    d.rectangle((70, 35, 115, 80), fill=(150, 110, 60))


def sunny_beach(d):
    d.rectangle((0, 60, W, H), fill=(235, 210, 150))
    d.ellipse((90, 8, 118, 36), fill=(255, 220, 0))


def house(d):
    d.rectangle((30, 45, 80, 90), fill=(200, 120, 90))
    d.polygon([(25, 45), (55, 20), (85, 45)], fill=(120, 40, 40))
    d.rectangle((50, 65, 62, 90), fill=(80, 50, 30))
    d.ellipse((92, 30, 120, 70), fill=(40, 140, 40))


def clock_three(d):
    d.ellipse((34, 18, 94, 78), fill=(250, 250, 240), outline=(0, 0, 0), width=2)
    d.line((64, 48, 64, 26), fill=(0, 0, 0), width=2)  # minute hand at 12
    d.line((64, 48, 82, 48), fill=(0, 0, 0), width=3)  # hour hand at 3


# (type, topic, painter, background, image_content, question, gt_answer) in the official type order.
ITEMS = [
    ("attribute", "outdoor", hydrant, (150, 190, 230), ["Fire hydrant"],
     "What color is the fire hydrant cap in the picture?", "The color of the fire hydrant cap in the image is yellow."),
    ("adversarial", "indoor", cat_only, (220, 210, 190), ["Cat"],
     "What is the dog doing in this image?", "There is no dog in the image. The image shows a grey cat lying down."),
    ("comparison", "outdoor", two_trees, (170, 210, 240), ["Tree", "Plant"],
     "Which tree is taller, the left one or the right one?", "The tree on the right is taller than the tree on the left."),
    ("counting", "indoor", three_apples, (245, 245, 245), ["Apple", "Fruit"],
     "How many apples are there in the image?", "There are three apples in the image."),
    ("relation", "indoor", ball_and_box, (230, 230, 220), ["Ball", "Box"],
     "Where is the ball relative to the box?", "The ball is to the left of the box."),
    ("environment", "outdoor", sunny_beach, (120, 180, 240), ["Sun", "Beach"],
     "How would you describe the weather in the image?", "The weather is sunny, with a bright sun in a clear blue sky over a beach."),
    ("holistic", "outdoor", house, (170, 210, 240), ["House", "Tree", "Door", "Roof"],
     "Describe the image in detail.",
     "The picture shows a small house with a dark red roof and a brown door, and a green tree to its right under a blue sky."),
    ("other", "indoor", clock_three, (200, 200, 210), ["Clock"],
     "What time does the clock show?", "The clock shows three o'clock."),
]


def main() -> None:
    (HERE / "images").mkdir(exist_ok=True)
    template = []
    for k, (qtype, topic, paint, bg, content, question, gt) in enumerate(ITEMS):
        name = f"lpoi_mini_{k}.jpg"
        img = Image.new("RGB", (W, H), bg)
        paint(ImageDraw.Draw(img))
        img.save(HERE / "images" / name, format="JPEG", quality=90)
        template.append({
            "question_type": qtype,
            "question_topic": topic,
            "image_id": f"lpoi_mini_{k}",
            "image_src": f"https://example.invalid/lpoi-mini-mmhal/{name}",
            "image_content": content,
            "question": question,
            "gt_answer": gt,
            "model_answer": "",
        })
    (HERE / "mmhal-bench_answer_template.json").write_text(json.dumps(template, indent=4) + "\n")


if __name__ == "__main__":
    main()
