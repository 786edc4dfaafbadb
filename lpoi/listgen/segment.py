"""The ``segment`` stage: a mask for each detected critical-object candidate, with SAM or the box.

LPOI hides the critical object; with ``lists.mask: sam`` (the default) only the object's own pixels
are hidden, with ``bbox`` the whole detection box (the paper's exact masking).

SAM (transformers' ``SamModel``; default ``facebook/sam-vit-base``, paper-max ``facebook/sam-vit-huge``):

* **box prompts** — each candidate's detection box;
* **one image embedding per image** — the ViT encoder (>95% of SAM's cost) runs once per image through
  ``model.get_image_embeddings`` (batched over the images of a block), and all of that image's boxes are
  decoded from it by passing ``image_embeddings=`` to the model;
* **multimask output, best by predicted IoU** — SAM's decoder proposes 3 masks per box (whole, part,
  sub-part) with a predicted IoU each; we keep the highest (:func:`lpoi.models.sam.select_best_masks`; ties -> the first),
  as the official ``SamPredictor`` recommends for ambiguous prompts. The choice is made on the
  low-resolution logits, so only the kept mask is upsampled to the image size (3x less work).

An empty SAM mask (all pixels False, which random or weak models produce) is replaced by the box mask
and flagged ``"mask_fallback": "bbox"`` on that candidate, never silently.

``mask_kind="bbox"`` skips SAM entirely — the segmenter model is **not even loaded** — and stores
:func:`lpoi.listgen.interpolate.box_mask` (every pixel the box touches), so lists and verify read
masks the same way in both modes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lpoi.config import SegmentParams, section_of
from lpoi.io import ImageRejected, load_image
from lpoi.models.sam import select_best_masks
from lpoi.runner import Reject, StageOutput, Tally, Write, run_file
from lpoi.stage import pick_device

__all__ = [
    "MASK_KINDS",
    "count_row",
    "encode_segment_batch",
    "mask_file",
    "run_segment",
    "segment_batch",
    "segment_boxes",
    "segment_encoded",
    "segment_tally",
]

MASK_KINDS = ("sam", "bbox")


def encode_segment_batch(processor, images: Sequence, boxes: Sequence[Sequence[Sequence[float]]]) -> dict:
    """CPU half of :func:`segment_batch` (resize, normalise, pad; box coordinates rescaled): runs in the
    runner's prefetch threads while the accelerator works on the previous block."""
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} box lists")
    sizes = [im.size for im in images]
    counts = [len(bs) for bs in boxes]
    rows = [i for i, n in enumerate(counts) if n]
    if not rows:
        return {"rows": [], "sizes": sizes, "counts": counts, "inputs": None}
    n_max = max(counts)
    padded = [[list(map(float, b)) for b in boxes[i]] + [list(map(float, boxes[i][-1]))] * (n_max - counts[i])
              for i in rows]
    inputs = processor(images=[images[i] for i in rows], input_boxes=padded, return_tensors="pt")
    return {"rows": rows, "sizes": sizes, "counts": counts, "inputs": inputs}


def segment_encoded(model, processor, enc: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """Accelerator half of :func:`segment_batch`: one ``get_image_embeddings`` call for the batch, one
    decoder call for all boxes, best-of-3 by predicted IoU, upsampling of the kept masks only."""
    import torch

    results = [(np.zeros((0, h, w), dtype=bool), np.zeros((0,), dtype=np.float32)) for w, h in enc["sizes"]]
    if not enc["rows"]:
        return results
    inputs = enc["inputs"]
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        emb = model.get_image_embeddings(inputs["pixel_values"].to(dev, dtype))
        out = model(image_embeddings=emb, input_boxes=inputs["input_boxes"].to(dev, dtype), multimask_output=True)
        low, iou = _best_of_multimask(out.pred_masks.float(), out.iou_scores.float())  # (B, n_max, h, w), (B, n_max)
        orig = inputs["original_sizes"].tolist()
        resh = inputs["reshaped_input_sizes"].tolist()
        for j, i in enumerate(enc["rows"]):
            n = enc["counts"][i]
            up = processor.image_processor.post_process_masks([low[j, :n, None]], [orig[j]], [resh[j]])[0]
            results[i] = (up[:, 0].cpu().numpy().astype(bool), iou[j, :n].cpu().numpy().astype(np.float32))
    return results


def segment_batch(model, processor, images: Sequence, boxes: Sequence[Sequence[Sequence[float]]]):
    """SAM masks for several images, each with its own boxes, in one encoder + one decoder call.

    ``images``: PIL RGB images; ``boxes[i]``: ``[[x0, y0, x1, y1], ...]`` in image i's pixels.
    Returns per image ``(masks bool ndarray (N_i, H_i, W_i), iou float ndarray (N_i,))``. Boxes are
    padded to the largest count by repeating an image's last box (the decoder treats each box
    independently; padding rows are discarded). Images without boxes are not encoded.
    """
    return segment_encoded(model, processor, encode_segment_batch(processor, images, boxes))


def _best_of_multimask(pred_masks, iou_scores):
    """(B, N, M, h, w), (B, N, M) -> (B, N, h, w), (B, N) via :func:`lpoi.models.sam.select_best_masks`."""
    b, n, m = iou_scores.shape
    masks, iou = select_best_masks(pred_masks.reshape(b * n, m, *pred_masks.shape[3:]), iou_scores.reshape(b * n, m))
    return masks.reshape(b, n, *pred_masks.shape[3:]), iou.reshape(b, n)


def segment_boxes(model, processor, image, boxes: Sequence[Sequence[float]]):
    """``(masks bool ndarray (N, H, W), iou (N,))`` for one image's boxes (one image embedding)."""
    return segment_batch(model, processor, [image], [boxes])[0]


def mask_file(masks_dir: str | os.PathLike, sample_id: str, j: int) -> Path:
    """``masks_dir/<safe stem of id>_<j>.png`` — the mask of candidate ``j`` of a sample."""
    from lpoi.listgen.prepare import safe_stem

    return Path(masks_dir) / f"{safe_stem(str(sample_id))}_{int(j)}.png"


# ---------------------------------------------------------------------------------------------- the stage


def _picks(row: dict, max_masks: int) -> list[int]:
    """The candidates that get a mask: the first ``max_masks`` detected ones."""
    return [j for j, c in enumerate(row["candidates"]) if c.get("box") is not None][:max_masks]


def _load_block(rows: list[dict], max_masks: int, backend) -> dict:
    """CPU part of a block (prefetch thread): decode the images and preprocess them for SAM."""
    images, errors = {}, {}
    for row in rows:
        if backend is None or not _picks(row, max_masks):
            continue
        try:
            images[row["id"]] = load_image(row["image_path"])
        except ImageRejected as e:
            errors[row["id"]] = (f"image_{e.reason}", e.detail)
    ids = [r["id"] for r in rows if r["id"] in images]
    by_id = {r["id"]: r for r in rows}
    enc = None
    if backend is not None:
        enc = backend.encode([by_id[i] for i in ids], [images[i] for i in ids],
                             [[by_id[i]["candidates"][j]["box"] for j in _picks(by_id[i], max_masks)] for i in ids])
    return {"rows": rows, "ids": ids, "enc": enc, "errors": errors}


def count_row(row: dict) -> dict[str, int]:
    """What a segment row adds to the stage's counts (metrics are these counts over the whole output)."""
    masked = [c for c in row["candidates"] if c.get("mask")]
    fallback = sum(1 for c in masked if c.get("mask_fallback"))
    sam = sum(1 for c in masked if c.get("mask_iou") is not None and not c.get("mask_fallback"))
    return {"masks": len(masked), "sam_masks": sam, "mask_fallback": fallback}


def segment_tally() -> Tally:
    return Tally(count_row, zero={"masks": 0, "sam_masks": 0, "mask_fallback": 0})


def _row_result(row: dict, picks: list[int], sam: tuple | None, mask_kind: str, masks_dir, base: Path) -> Write:
    """A sample's output row and its mask files (written by the runner's writer threads)."""
    from lpoi.listgen.interpolate import box_mask, save_mask

    sid = row["id"]
    w, h = int(row["width"]), int(row["height"])
    cands = [dict(c, mask=None, mask_iou=None, mask_area=None) for c in row["candidates"]]
    files = {}
    for k, j in enumerate(picks):
        c = cands[j]
        m = box_mask(c["box"], h, w)
        if sam is not None:
            sm, iou = sam[0][k], float(sam[1][k])
            if sm.shape != (h, w):
                raise RuntimeError(f"sample {sid!r}: SAM mask {sm.shape} != image {(h, w)}")
            c["mask_iou"] = round(iou, 6)
            if sm.any():
                m = sm
            else:  # an empty SAM mask (weak or random weights): the box, flagged
                c["mask_fallback"] = "bbox"
        path = mask_file(masks_dir, sid, j)
        files[path] = partial(save_mask, m, path)
        c["mask"] = Path(os.path.relpath(path, base)).as_posix()
        c["mask_area"] = round(float(m.sum()) / (h * w), 6)
    first = next((c for c in cands if c["mask"] is not None), None)
    kind = None if first is None else ("bbox" if mask_kind == "bbox" or first.get("mask_fallback") else "sam")
    return Write({"id": sid, "image_path": row.get("image_path"), "width": w, "height": h, "mask_kind": mask_kind,
                  "mask": kind, "candidates": cands}, files)


def run_segment(
    detect_path: str | os.PathLike,
    out_path: str | os.PathLike,
    masks_dir: str | os.PathLike,
    params: SegmentParams | None = None,
    *,
    max_masks_per_sample: int = 3,
    mask_kind: str = "sam",
    device: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
    rejects_path: str | os.PathLike | None = None,
    num_workers: int = 1,
    limit: int | None = None,
    model=None,
    processor=None,
    backend=None,
    journal: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Stream ``detect.jsonl`` -> ``segment.jsonl`` + mask PNGs (resumable).

    ``params``: the ``segment`` section (``model``, ``batch_size``); without it, those settings as
    keywords (``model_name`` for ``model``), validated the same way (:func:`lpoi.config.section_of`).

    For each sample, the first ``max_masks_per_sample`` *detected* candidates (pass ``verify.max_tries``:
    verify never looks further) get a mask PNG at :func:`mask_file` (written atomically). Output rows:
    ``{"id", "image_path", "width", "height", "mask_kind", "mask": kind of the first masked candidate
    ("sam" | "bbox"), "candidates": [detect's candidate + {"mask": path relative to out_path's folder |
    null, "mask_iou": SAM's predicted IoU | null, "mask_area": share of the image's pixels | null,
    "mask_fallback": "bbox" (only when SAM's mask was empty)}]}``.

    ``num_workers`` threads decode and preprocess the next blocks and encode/fsync the mask PNGs while
    the model runs (a block's rows are written once its masks are on disk, so a resumed run never sees a
    row whose mask files are missing). ``mask_kind="bbox"`` never loads SAM. The segmenter is ``backend``
    (:mod:`lpoi.listgen.backends`), else the transformers ``model``/``processor`` passed in, else
    the transformers port of ``model_name``. A sample whose image no longer loads is written to
    ``rejects_path`` (``image_<reason>``); without a rejects file that raises. Resume, blocks,
    ``journal`` and the returned counts as in :func:`lpoi.listgen.detect.run_detect` (counts: ``masks``,
    ``sam_masks``, ``mask_fallback``; ``backend`` names the implementation that ran).
    """
    s = section_of(SegmentParams, params, settings, model_name="model")
    model_name, batch_size = s.model, s.batch_size
    if mask_kind not in MASK_KINDS:
        raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {mask_kind!r}")
    if batch_size < 1 or max_masks_per_sample < 1:
        raise ValueError(f"segment.batch_size and max_masks_per_sample must be >= 1, got {batch_size}, "
                         f"{max_masks_per_sample}")
    use_sam = mask_kind == "sam"
    if use_sam and backend is None:
        from lpoi.listgen.backends import TransformersSegmenter, open_segmenter

        backend = TransformersSegmenter(model, processor) if model is not None else \
            open_segmenter("transformers", model_name, device=pick_device(device), dtype=dtype)

    out = StageOutput(out_path, rejects_path, limit=limit, journal=journal)
    base = out.out_path.parent

    def process(blk: dict, rows: list[dict]) -> list:
        sam = dict(zip(blk["ids"], backend.segment(blk["enc"]))) if use_sam else {}
        return [Reject(*blk["errors"][r["id"]]) if r["id"] in blk["errors"] else
                _row_result(r, _picks(r, max_masks_per_sample), sam.get(r["id"]), mask_kind, masks_dir, base)
                for r in rows]

    stats = run_file(detect_path, out, lambda rows: _load_block(rows, max_masks_per_sample, backend if use_sam else None),
                     process, tally=segment_tally, batch_size=batch_size, workers=num_workers,
                     progress=progress, desc="segment")
    stats["output"]["backend"] = stats["backend"] = backend.name if use_sam else None
    return stats
