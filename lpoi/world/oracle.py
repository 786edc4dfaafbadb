"""The ``oracle`` detection and segmentation backend: the world generator's own boxes and masks.

The miniature tests the *training method*, not the detector: Grounding DINO and SAM at tiny sizes are
random, and at real sizes they have never seen this world. So list generation in ``world=shapes``
reads the ground truth the generator wrote (``scenes.jsonl``: per scene its objects' classes, colours,
tight boxes of the visible pixels and run-length-encoded visible masks) -- honestly named ``oracle``
everywhere it appears (stage metrics, the ``object.source`` of detect rows stays the candidate's).

Both classes follow the detector/segmenter backend interface of ``lpoi/listgen``:

* ``OracleDetector.encode(rows, images, phrases)`` -> an encoded batch (CPU, thread-safe: it only reads
  the loaded annotations), then ``detect(encoded, box_threshold, text_threshold)`` -> per image
  ``[{"index", "box", "score", "box_score"}]`` for the phrases that name an object of that scene;
* ``OracleSegmenter.encode(rows, images, boxes)`` -> encoded, then ``segment(encoded)`` -> per image
  ``(masks bool (N, H, W), iou (N,))``.

A phrase names an object when its last word is the object's class (singular or plural, any case);
modifiers are not checked (a real detector grounds "red circle" on a blue circle too). Scores are 1.0.
A box is segmented as the object whose visible box overlaps it most (``iou`` = that box IoU, 1.0 for
the oracle's own boxes); a box over no object gets an empty mask (the segment stage then falls back
to the box and flags it). Rows are matched to scenes by their ``id`` (pair id = scene id).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lpoi.io import read_jsonl
from lpoi.world.scenes import CLASSES, rle_decode

__all__ = ["OracleDetector", "OracleSegmenter", "load_annotations", "phrase_class"]


def load_annotations(scenes_path: str | os.PathLike) -> dict[str, dict]:
    """``scenes.jsonl`` keyed by scene id (each row: ``id``, ``width``, ``height``, ``objects``)."""
    out: dict[str, dict] = {}
    for row in read_jsonl(scenes_path):
        if row["id"] in out:
            raise ValueError(f"{scenes_path}: scene id {row['id']!r} appears twice")
        out[row["id"]] = row
    if not out:
        raise ValueError(f"{scenes_path}: no scenes")
    return out


def phrase_class(phrase: str) -> str | None:
    """The world class a detection phrase names ("red circle" -> "circle", "crosses" -> "cross"), or None."""
    words = phrase.lower().replace(".", " ").split()
    if not words:
        return None
    last = words[-1]
    for cls in CLASSES:
        if last in (cls, cls + "s", cls + "es"):
            return cls
    return None


def _scene(annotations: dict[str, dict], row: dict) -> dict:
    sid = str(row["id"])
    if sid not in annotations:
        raise KeyError(f"oracle: no annotation for sample {sid!r} (rows must come from the world's pairs)")
    return annotations[sid]


@dataclass
class OracleEncoded:
    """What :meth:`OracleDetector.detect` reads back: per image its scene's objects and the phrases."""

    objects: list[list[dict]]
    phrases: list[list[str]]
    truncated: list[int] = field(default_factory=list)
    """Phrases left out of a prompt: none here (the detect stage reports it per row)."""


class _Oracle:
    name = "oracle"

    def __init__(self, annotations: dict[str, dict]):
        self.annotations = annotations


class OracleDetector(_Oracle):
    """Detection backend ``oracle``: the boxes of the objects a phrase names, from the generator."""

    def encode(self, rows: Sequence[dict], images: Sequence, phrases: Sequence[Sequence[str]]) -> OracleEncoded:
        if not len(rows) == len(images) == len(phrases):
            raise ValueError(f"{len(rows)} rows, {len(images)} images and {len(phrases)} phrase lists")
        objects = []
        for row, image in zip(rows, images):
            scene = _scene(self.annotations, row)
            if tuple(image.size) != (scene["width"], scene["height"]):
                raise ValueError(f"oracle: sample {row['id']!r} image is {image.size}, its annotation "
                                 f"{scene['width']}x{scene['height']} (not the generator's image?)")
            objects.append(scene["objects"])
        return OracleEncoded(objects, [list(p) for p in phrases], [0] * len(rows))

    def detect(self, encoded: OracleEncoded, box_threshold: float = 0.35,
               text_threshold: float = 0.25) -> list[list[dict[str, Any]]]:
        # Thresholds are accepted for the interface; every oracle score is 1.0, above any threshold.
        out = []
        for objects, phrases in zip(encoded.objects, encoded.phrases):
            by_class = {o["class"]: o for o in objects}
            dets = []
            for j, phrase in enumerate(phrases):
                obj = by_class.get(phrase_class(phrase))
                if obj is not None:
                    dets.append({"index": j, "box": [float(v) for v in obj["box"]], "score": 1.0, "box_score": 1.0})
            out.append(dets)
        return out


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class OracleSegmenter(_Oracle):
    """Segmentation backend ``oracle``: the visible mask of the object under each box, from the generator."""

    def encode(self, rows: Sequence[dict], images: Sequence,
               boxes: Sequence[Sequence[Sequence[float]]]) -> list[tuple[dict, list[list[float]]]]:
        if not len(rows) == len(images) == len(boxes):
            raise ValueError(f"{len(rows)} rows, {len(images)} images and {len(boxes)} box lists")
        return [(_scene(self.annotations, row), [list(map(float, b)) for b in bs]) for row, bs in zip(rows, boxes)]

    def segment(self, encoded) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for scene, boxes in encoded:
            h, w = scene["height"], scene["width"]
            masks = np.zeros((len(boxes), h, w), dtype=bool)
            iou = np.zeros((len(boxes),), dtype=np.float32)
            for n, box in enumerate(boxes):
                scored = [(_box_iou(box, o["box"]), k) for k, o in enumerate(scene["objects"])]
                best, k = max(scored, default=(0.0, -1))
                if best > 0:
                    masks[n] = rle_decode(scene["objects"][k]["mask"])
                    iou[n] = best
            out.append((masks, iou))
        return out
