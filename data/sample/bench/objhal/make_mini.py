"""Regenerate the mini Object HalBench set in this folder (deterministic; run from anywhere).

    python data/sample/bench/objhal/make_mini.py

Writes COCO-format ``instances_val2014.json`` / ``captions_val2014.json`` for 10 made-up images
(ids 900000001..900000010, not COCO's), the images ``val2014/COCO_val2014_{id:012d}.jpg`` drawn
with PIL, the question index ``obj_halbench_10_index.jsonl`` and the same with base64 images,
``obj_halbench_10_with_image.jsonl`` (the official ``obj_halbench_300_with_image.jsonl`` layout).
Category ids and names are COCO 2014's; annotations and captions are hand-written for the drawings.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
W, H = 128, 96

# COCO 2014 categories: (id, name, supercategory).
CATEGORIES = [
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"),
    (36, "snowboard", "sports"), (37, "sports ball", "sports"), (38, "kite", "sports"),
    (39, "baseball bat", "sports"), (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
    (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"), (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"),
    (54, "sandwich", "food"), (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"),
    (58, "hot dog", "food"), (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"),
    (62, "chair", "furniture"), (63, "couch", "furniture"), (64, "potted plant", "furniture"),
    (65, "bed", "furniture"), (67, "dining table", "furniture"), (70, "toilet", "furniture"),
    (72, "tv", "electronic"), (73, "laptop", "electronic"), (74, "mouse", "electronic"),
    (75, "remote", "electronic"), (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"), (79, "oven", "appliance"), (80, "toaster", "appliance"),
    (81, "sink", "appliance"), (82, "refrigerator", "appliance"), (84, "book", "indoor"),
    (85, "clock", "indoor"), (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
]
CAT_ID = {name: cid for cid, name, _ in CATEGORIES}

QUESTIONS = [  # question texts of the official Object HalBench (RLHF-V)
    "Provide a thorough description of the given image.",
    "What is this photo about? Please answer in great detail.",
    "Provide a thorough description of the given picture.",
    "Explain the narrative or story that the image seems to convey, detailing each part that contributes to it.",
    "Please provide a detailed description of the image, including its visual elements, such as colors, shapes, textures, objects, and people.",
]

# Each scene: background colour, objects (category, box x0,y0,x1,y1, colour, shape), five captions.
SCENES = [
    ((120, 180, 90), [("dog", (20, 40, 70, 80), (140, 90, 40), "ellipse"), ("frisbee", (85, 20, 110, 32), (230, 40, 40), "ellipse")],
     ["A brown dog jumps to catch a red frisbee on the grass.", "A dog playing with a frisbee in a park.",
      "The puppy runs after a flying disc.", "A dog and a frisbee on a green lawn.", "A pet dog chasing a frisbee outside."]),
    ((200, 190, 170), [("couch", (10, 50, 118, 90), (60, 60, 150), "rectangle"), ("cat", (40, 30, 80, 60), (90, 90, 90), "ellipse")],
     ["A grey cat sleeping on a blue sofa.", "A cat curled up on the couch.", "A kitten resting on a sofa in a living room.",
      "A cat lies on top of a blue couch.", "A small cat naps on the sofa cushions."]),
    ((235, 235, 240), [("toilet", (30, 40, 70, 90), (250, 250, 250), "rectangle"), ("sink", (85, 35, 120, 55), (200, 200, 210), "rectangle")],
     ["A white toilet next to a sink in a bathroom.", "A bathroom with the toilet seat up and a small sink.",
      "A clean toilet and a sink in a tiled room.", "The seat of the toilet is open beside a wash basin.",
      "A small bathroom with a toilet and a sink."]),
    ((230, 210, 180), [("dining table", (5, 45, 123, 92), (150, 100, 60), "rectangle"), ("pizza", (20, 50, 60, 75), (240, 180, 60), "ellipse"),
                       ("wine glass", (80, 30, 95, 65), (200, 220, 240), "rectangle")],
     ["A pizza and a wine glass on a wooden table.", "A dinner table with a whole pizza and a glass of wine.",
      "A pizza sits on the dining table next to a wine glass.", "Pizza served on a table with wine glasses.",
      "A table set with pizza and a glass."]),
    ((170, 200, 230), [("person", (50, 10, 80, 60), (220, 180, 150), "rectangle"), ("bicycle", (35, 50, 95, 90), (30, 30, 30), "ellipse")],
     ["A man riding a bike down the street.", "A person on a bicycle in the city.", "A cyclist rides his bicycle past a wall.",
      "A man rides a bike on the road.", "Someone riding a bicycle on a sunny day."]),
    ((150, 150, 150), [("car", (10, 55, 70, 85), (200, 30, 30), "rectangle"), ("traffic light", (90, 5, 102, 40), (40, 40, 40), "rectangle"),
                       ("stop sign", (105, 45, 125, 65), (220, 20, 20), "ellipse")],
     ["A red car stopped at a traffic light.", "A car waits at an intersection with a stop sign.",
      "A street with a car, a traffic light and a stop sign.", "A red automobile near a stop sign.",
      "Traffic light above a street where a car is parked."]),
    ((180, 220, 240), [("bird", (50, 20, 75, 40), (250, 200, 40), "ellipse"), ("bench", (20, 50, 110, 75), (120, 80, 40), "rectangle")],
     ["A small bird perched on a wooden bench.", "A yellow bird sits on a park bench.", "A bird standing on the back of a bench.",
      "A bench in a park with a bird on it.", "A little bird resting on a bench."]),
    ((210, 200, 190), [("dining table", (0, 60, 128, 96), (160, 120, 80), "rectangle"),
                       ("laptop", (20, 30, 75, 70), (60, 60, 70), "rectangle"), ("cup", (85, 45, 100, 65), (250, 250, 250), "rectangle"),
                       ("cell phone", (105, 55, 120, 75), (20, 20, 20), "rectangle")],
     ["A laptop, a cup of coffee and a cell phone on a desk.", "A desk with a laptop computer and a mug.",
      "An open laptop next to a phone and a coffee cup.", "A work desk with a notebook computer and a cellphone.",
      "A laptop and a cup on a wooden desk."]),
    ((60, 120, 200), [("boat", (30, 45, 100, 70), (250, 250, 250), "rectangle")],
     ["A white boat on the blue water.", "A small boat floating on a lake.", "A sailboat in the middle of the sea.",
      "A boat sailing on calm water.", "A single white boat on the ocean."]),
    ((190, 170, 150), [("clock", (44, 20, 84, 60), (250, 250, 230), "ellipse")],
     ["A large clock on the side of a building.", "A clock tower with a white face.", "A round clock mounted on a brick wall.",
      "The clock on the building shows the time.", "An old clock on a stone building."]),
]


def draw(bg, objects) -> bytes:
    img = Image.new("RGB", (W, H), bg)
    d = ImageDraw.Draw(img)
    for _, box, colour, shape in objects:
        (d.ellipse if shape == "ellipse" else d.rectangle)(box, fill=colour, outline=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, optimize=False, progressive=False)
    return buf.getvalue()


def main() -> None:
    images, inst_anns, cap_anns, index, with_img = [], [], [], [], []
    (HERE / "val2014").mkdir(exist_ok=True)
    for k, (bg, objects, caps) in enumerate(SCENES):
        image_id = 900000001 + k
        name = f"COCO_val2014_{image_id:012d}.jpg"
        jpg = draw(bg, objects)
        (HERE / "val2014" / name).write_bytes(jpg)
        images.append({"id": image_id, "file_name": name, "width": W, "height": H, "license": 1})
        for cat, (x0, y0, x1, y1), _, _ in objects:
            w, h = x1 - x0, y1 - y0
            inst_anns.append({"id": len(inst_anns) + 1, "image_id": image_id, "category_id": CAT_ID[cat], "iscrowd": 0,
                              "bbox": [x0, y0, w, h], "area": w * h,
                              "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
        for c in caps:
            cap_anns.append({"id": len(cap_anns) + 1, "image_id": image_id, "caption": c})
        row = {"idx": k, "image_id": image_id, "question": QUESTIONS[k % len(QUESTIONS)]}
        index.append(row)
        with_img.append({**row, "image": base64.b64encode(jpg).decode("ascii")})
    info = {"description": "LPOI mini Object HalBench fixture: hand-made COCO-format annotations of drawn images (not COCO)",
            "version": "1.0", "year": 2025, "contributor": "lpoi", "url": "", "date_created": "2025-01-01"}
    licenses = [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]
    cats = [{"id": cid, "name": n, "supercategory": s} for cid, n, s in CATEGORIES]
    dump = lambda obj: json.dumps(obj, indent=1) + "\n"
    (HERE / "instances_val2014.json").write_text(dump({"info": info, "licenses": licenses, "images": images,
                                                       "annotations": inst_anns, "categories": cats}))
    (HERE / "captions_val2014.json").write_text(dump({"info": info, "licenses": licenses, "images": images,
                                                      "annotations": cap_anns}))
    (HERE / "obj_halbench_10_index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in index))
    (HERE / "obj_halbench_10_with_image.jsonl").write_text("".join(json.dumps(r) + "\n" for r in with_img))


if __name__ == "__main__":
    main()
