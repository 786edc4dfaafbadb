"""Detector and segmenter backends behind one small interface (``detect.backend``, ``segment.backend``).

The stage runners (:func:`lpoi.listgen.detect.run_detect`, :func:`lpoi.listgen.segment.run_segment`) own
batching, resume, fallback and output rows; a backend only turns a block of images into
detections or masks, in two halves so that the CPU half overlaps the accelerator half.

**Detector** (``groundingdino`` = the original ``groundingdino-py``; ``transformers`` = its port)::

    backend.prompt_chunks(phrases) -> list[list[str]]
        # consecutive runs of phrases that each fit one prompt (the COCO-class fallback uses it)
    backend.encode(rows, images, phrases) -> encoded
        # CPU only, called from prefetch threads (must be thread-safe). rows[i]: the stage's input row of
        # image i (``id``, ``image_path``, ...; prepared rows in detect, the same rows for the fallback);
        # images[i]: PIL RGB; phrases[i]: the phrases to ground in image i (may be empty).
        # ``encoded.truncated[i]``: how many trailing phrases of image i did not fit (0 if all did).
    backend.detect(encoded, box_threshold, text_threshold) -> list[list[dict]]
        # main thread. Per image, the detected phrases in phrase order:
        # {"index": position in phrases[i], "box": [x0, y0, x1, y1] original pixels clipped to the image,
        #  rounded to 0.01, "score": phrase score, "box_score": box score (both rounded to 1e-6)}.

**Segmenter** (``segment-anything`` = the original package; ``transformers`` = ``SamModel``)::

    backend.encode(rows, images, boxes) -> encoded      # CPU, thread-safe; boxes[i]: [[x0, y0, x1, y1], ...]
    backend.segment(encoded) -> list[(masks, iou)]      # per image: masks bool (N_i, H_i, W_i), iou float32 (N_i,)

``rows`` are passed so that a backend may know more than the pixels (an ``oracle`` backend for a
synthetic world with known boxes and masks fits this interface: it reads its answer from the row).
A new backend is a class with these methods plus a loader registered in :data:`DETECTORS` /
:data:`SEGMENTERS` (and its name added to ``DetectParams.backend`` / ``SegmentParams.backend``).

**Models**: each backend loads either weight format (see :mod:`lpoi.models.groundingdino`,
:mod:`lpoi.models.sam`): ``tiny/groundingdino-py`` / ``tiny/segment-anything`` and the official ``.pth``
files are original-format, hub ids such as ``IDEA-Research/grounding-dino-tiny`` /
``facebook/sam-vit-base`` transformers-format; the other implementation gets them through the key mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["DETECTORS", "SEGMENTERS", "GroundingDinoDetector", "SegmentAnythingSegmenter", "TransformersDetector",
           "TransformersSegmenter", "load_detector_backend", "load_segmenter_backend", "open_detector",
           "open_segmenter"]


# ---------------------------------------------------------------------------------------------- detectors


class TransformersDetector:
    """``GroundingDinoForObjectDetection`` (transformers' port) + its processor."""

    name = "transformers"

    def __init__(self, model, processor):
        self.model, self.processor = model, processor
        self.max_text_len = int(getattr(model.config, "max_text_len", 256))

    def prompt_chunks(self, phrases: Sequence[str]) -> list[list[str]]:
        from lpoi.listgen.detect import chunk_phrases

        return chunk_phrases(self.processor.tokenizer, phrases, self.max_text_len)

    def encode(self, rows, images, phrases):
        from lpoi.listgen.detect import encode_detection_batch

        return encode_detection_batch(self.processor, images, phrases, self.max_text_len)

    def detect(self, encoded, box_threshold: float, text_threshold: float):
        from lpoi.listgen import detect

        return detect.detect_encoded(self.model, encoded, box_threshold=box_threshold, text_threshold=text_threshold)


class GroundingDinoDetector:
    """The original ``groundingdino`` model (:class:`lpoi.models.groundingdino.Original`); half precision runs
    under ``torch.autocast(autocast)`` on float32 weights (the package cannot run on cast weights)."""

    name = "groundingdino"

    def __init__(self, original, autocast=None):
        self.original, self.autocast = original, autocast
        self.max_text_len = original.max_text_len

    def prompt_chunks(self, phrases: Sequence[str]) -> list[list[str]]:
        from lpoi.listgen.detect import chunk_phrases

        return chunk_phrases(self.original.tokenizer, phrases, self.max_text_len)

    def encode(self, rows, images, phrases):
        from lpoi.listgen.detect import EncodedBatch, tokenize_prompts
        from lpoi.models.groundingdino import preprocess

        if len(images) != len(phrases):
            raise ValueError(f"{len(images)} images but {len(phrases)} phrase lists")
        t = tokenize_prompts(self.original.tokenizer, phrases, self.max_text_len)
        sizes = [im.size for im in images]
        inputs = {}
        if t["rows"]:  # the model tokenises the captions itself, into the same columns as ``spans``
            pixels, mask = preprocess(self.original.spec, [images[i] for i in t["rows"]])
            inputs = {"pixels": pixels, "mask": mask, "captions": t["prompts"]}
        return EncodedBatch(inputs, t["rows"], t["spans"], t["kept"], sizes, t["truncated"])

    def detect(self, encoded, box_threshold: float, text_threshold: float):
        from lpoi.listgen.detect import read_detections
        from lpoi.models.groundingdino import predict

        if not encoded.rows:
            return [[] for _ in encoded.sizes]
        i = encoded.inputs
        probs, boxes = predict(self.original.model, i["pixels"], i["mask"], i["captions"], autocast=self.autocast)
        return read_detections(probs, boxes, encoded, box_threshold, text_threshold)


# ---------------------------------------------------------------------------------------------- segmenters


class TransformersSegmenter:
    """``SamModel`` (transformers' port) + ``SamProcessor``."""

    name = "transformers"

    def __init__(self, model, processor):
        self.model, self.processor = model, processor

    def encode(self, rows, images, boxes):
        from lpoi.listgen.segment import encode_segment_batch

        return encode_segment_batch(self.processor, images, boxes)

    def segment(self, encoded):
        from lpoi.listgen import segment

        return segment.segment_encoded(self.model, self.processor, encoded)


class SegmentAnythingSegmenter:
    """The original ``segment_anything`` ``Sam`` (:func:`lpoi.models.sam.predict`); half precision as autocast,
    as for :class:`GroundingDinoDetector`."""

    name = "segment-anything"

    def __init__(self, model, spec, autocast=None):
        self.model, self.spec, self.autocast = model, spec, autocast

    def encode(self, rows, images, boxes):
        from lpoi.models.sam import preprocess

        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box lists")
        keep = [i for i, bs in enumerate(boxes) if len(bs)]
        return {"sizes": [im.size for im in images], "rows": keep,
                "prepared": [preprocess(self.spec, images[i], boxes[i]) for i in keep]}

    def segment(self, encoded):
        from lpoi.models.sam import predict

        out = [(np.zeros((0, h, w), dtype=bool), np.zeros((0,), dtype=np.float32)) for w, h in encoded["sizes"]]
        for i, res in zip(encoded["rows"], predict(self.model, encoded["prepared"], autocast=self.autocast)):
            out[i] = res
        return out


# ---------------------------------------------------------------------------------------------- loaders


def _autocast(dtype):
    """None for float32, else the torch dtype the original packages run under autocast."""
    import torch

    from lpoi.models import torch_dtype

    dt = torch_dtype(dtype) if isinstance(dtype, str) else dtype
    return None if dt == torch.float32 else dt


def _transformers_detector(path: str, device, dtype):
    from lpoi.models import load_detector

    model, processor = load_detector(path, dtype=dtype, device=device)
    return TransformersDetector(model, processor)


def _groundingdino_detector(path: str, device, dtype):
    from lpoi.models.groundingdino import load_original

    return GroundingDinoDetector(load_original(path, device=device), autocast=_autocast(dtype))


def _transformers_segmenter(path: str, device, dtype):
    from lpoi.models import load_segmenter

    model, processor = load_segmenter(path, dtype=dtype, device=device)
    return TransformersSegmenter(model, processor)


def _segment_anything_segmenter(path: str, device, dtype):
    from lpoi.models.sam import load_original

    model, spec = load_original(path, device=device)
    return SegmentAnythingSegmenter(model, spec, autocast=_autocast(dtype))


DETECTORS: dict[str, Callable[..., Any]] = {"groundingdino": _groundingdino_detector,
                                             "transformers": _transformers_detector}
SEGMENTERS: dict[str, Callable[..., Any]] = {"segment-anything": _segment_anything_segmenter,
                                              "transformers": _transformers_segmenter}


def _open(table: dict, kind: str, backend: str, model: str, device: str | None, dtype: str):
    if backend not in table:
        raise ValueError(f"unknown {kind} backend {backend!r}; known: {', '.join(sorted(table))}")
    from lpoi.models import resolve

    return table[backend](resolve(model), device, dtype)


def open_detector(backend: str, model: str, *, device: str | None = None, dtype: str = "float32"):
    """A detector backend by name: ``backend`` in :data:`DETECTORS`, ``model`` a name :func:`lpoi.models.resolve`
    knows (``tiny/...``, a hub id, a folder or a checkpoint file)."""
    return _open(DETECTORS, "detect", backend, model, device, dtype)


def open_segmenter(backend: str, model: str, *, device: str | None = None, dtype: str = "float32"):
    """A segmenter backend by name (see :func:`open_detector`)."""
    return _open(SEGMENTERS, "segment", backend, model, device, dtype)


def load_detector_backend(p, device: str | None = None, dtype: str = "float32"):
    """The backend a ``detect`` section (:class:`lpoi.config.DetectParams`) names."""
    return open_detector(p.backend, p.model, device=device, dtype=dtype)


def load_segmenter_backend(p, device: str | None = None, dtype: str = "float32"):
    """The backend a ``segment`` section (:class:`lpoi.config.SegmentParams`) names."""
    return open_segmenter(p.backend, p.model, device=device, dtype=dtype)
