"""List generation for the world, through the pipeline's own runners, with the oracle backend.

For the training pairs and the held-out pairs alike, in order: :func:`lpoi.listgen.prepare.run_prepare`
(validation), :func:`lpoi.listgen.detect.run_detect` (candidates from the chosen answer by NLTK, as in
the paper, grounded by :class:`lpoi.world.oracle.OracleDetector`), :func:`lpoi.listgen.segment.run_segment`
(:class:`~lpoi.world.oracle.OracleSegmenter`), :func:`lpoi.listgen.verify.run_verify` (the world's base
model as the verifier) and :func:`lpoi.listgen.lists.run_lists` -- with the pipeline's ``prepare``,
``detect``, ``segment``, ``verify`` and ``lists`` params. With ``world.detector: oracle`` (the default) only
the detector and the segmenter differ from the embedded default, and the COCO-class fallback is off (it
needs Grounding DINO, and a faithful caption always names a present object); ``pipeline`` runs the
``detect``/``segment`` models instead, through their ``backend`` as the detect and segment stages load
them (the embedded default's tiny random ones find nothing meaningful here, a real Grounding DINO and SAM
would need their hub weights).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lpoi.config import Params
from lpoi.world.oracle import OracleDetector, OracleSegmenter, load_annotations

__all__ = ["SPLITS", "build_world_lists", "list_metrics"]

SPLITS = ("pairs", "test")


def _split(p: Params, world_dir: Path, split: str, base_model: str, out: Path, progress: bool) -> dict:
    from lpoi.listgen.detect import run_detect
    from lpoi.listgen.lists import run_lists
    from lpoi.listgen.prepare import run_prepare
    from lpoi.listgen.segment import run_segment
    from lpoi.listgen.verify import run_verify

    src = world_dir / split
    prepared, detect, segment, verify = (out / d for d in ("prepared", "detect", "segment", "verify"))
    stats = {"prepare": run_prepare(src / "pairs.json", src, prepared / "prepared.jsonl", prepared / "rejects.jsonl",
                                    p.prepare)}
    d, s = p.detect, p.segment
    if p.world.detector == "oracle":
        annotations = load_annotations(src / "scenes.jsonl")
        det = {"model_name": "oracle", "fallback": False, "backend": OracleDetector(annotations)}
        seg = {"model_name": "oracle", "backend": OracleSegmenter(annotations)}
    else:  # the embedded default's detector and segmenter (detect.backend, segment.backend, loaded as the
        # detect and segment stages load them, on the CPU), with its thresholds and COCO fallback
        from lpoi.listgen.backends import load_detector_backend, load_segmenter_backend

        det = {"model_name": d.model, "fallback": d.fallback, "box_threshold": d.box_threshold,
               "text_threshold": d.text_threshold,
               "backend": load_detector_backend(d, device="cpu", dtype=p.model.dtype)}
        seg = {"model_name": s.model,  # lists.mask = bbox: SAM is never loaded
               "backend": load_segmenter_backend(s, device="cpu", dtype=p.model.dtype) if p.lists.mask == "sam"
               else None}
    stats["detect"] = run_detect(prepared / "prepared.jsonl", detect / "detect.jsonl", detect / "rejects.jsonl",
                                 max_candidates=d.max_candidates, batch_size=d.batch_size, seed=p.seed,
                                 progress=progress, **det)
    stats["segment"] = run_segment(detect / "detect.jsonl", segment / "segment.jsonl", segment / "masks",
                                   batch_size=s.batch_size, max_masks_per_sample=p.verify.max_tries,
                                   mask_kind=p.lists.mask, rejects_path=segment / "rejects.jsonl", progress=progress,
                                   **seg)
    stats["verify"] = run_verify(segment / "segment.jsonl", prepared / "prepared.jsonl", verify / "verify.jsonl",
                                 verify / "rejects.jsonl", p.verify, model_name=base_model, fill=p.lists.fill,
                                 device="cpu", dtype=p.model.dtype, progress=progress)
    stats["lists"] = run_lists(prepared / "prepared.jsonl", verify / "verify.jsonl", out / "lists", p.lists)
    return stats


def build_world_lists(p: Params, world_dir: str | Path, base_model: str, out_dir: str | Path, *,
                      progress: bool = True) -> dict:
    """``out_dir/{pairs,test}/{prepared,detect,segment,verify,lists}``; returns per-split stage stats."""
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)  # not a persisted output: every run builds it whole
    return {split: _split(p, world_dir, split, base_model, out_dir / split, progress) for split in SPLITS}


def list_metrics(stats: dict, detector: str) -> dict:
    """The deterministic counts of :func:`build_world_lists`' stats (no timings), per split."""
    out: dict = {"detector": detector}
    for split, st in stats.items():
        out[split] = {
            "pairs": st["prepare"]["records_out"], "prepare_rejected": st["prepare"]["rejected"],
            "detected": st["detect"]["output"]["written"], "detect_rejected": st["detect"]["output"]["rejected"],
            "masks": st["segment"]["output"]["masks"], "mask_fallback": st["segment"]["output"]["mask_fallback"],
            "verified_true": st["verify"]["output"]["verified_true"],
            "verified_false": st["verify"]["output"]["verified_false"],
            "verified_null": st["verify"]["output"]["verified_null"], "lists": st["lists"]["output"]["lists"],
            "lists_rejected": st["lists"]["output"]["rejected"],
            "mean_mask_area": st["lists"]["output"]["mean_mask_area"],
        }
    return out
