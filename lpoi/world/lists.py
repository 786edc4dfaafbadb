"""List generation for the world, through the pipeline's own runners, with the oracle backend.

For the training pairs and the held-out pairs alike, in order: :func:`lpoi.listgen.prepare.run_prepare`
(validation), :func:`lpoi.listgen.detect.run_detect` (candidates from the chosen answer by NLTK, as in
the paper, grounded by :class:`lpoi.world.oracle.OracleDetector`), :func:`lpoi.listgen.segment.run_segment`
(:class:`~lpoi.world.oracle.OracleSegmenter`), :func:`lpoi.listgen.verify.run_verify` (the world's base
model as the verifier) and :func:`lpoi.listgen.lists.run_lists` -- with the pipeline's ``prepare``,
``detect.max_candidates``, ``segment.batch_size``, ``verify`` and ``lists`` params. Only the detector and
the segmenter differ from the embedded default; the COCO-class fallback is off (it needs Grounding
DINO, and a faithful caption always names a present object).
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
    annotations = load_annotations(src / "scenes.jsonl")
    prepared, detect, segment, verify = (out / d for d in ("prepared", "detect", "segment", "verify"))
    stats = {"prepare": run_prepare(src / "pairs.json", src, prepared / "prepared.jsonl", prepared / "rejects.jsonl",
                                    p.prepare.max_reject_ratio, max_pixels=p.prepare.max_pixels,
                                    min_side=p.prepare.min_side)}
    stats["detect"] = run_detect(prepared / "prepared.jsonl", detect / "detect.jsonl", detect / "rejects.jsonl",
                                 model_name="oracle", max_candidates=p.detect.max_candidates, fallback=False,
                                 seed=p.seed, progress=progress, backend=OracleDetector(annotations))
    stats["segment"] = run_segment(detect / "detect.jsonl", segment / "segment.jsonl", segment / "masks",
                                   model_name="oracle", batch_size=p.segment.batch_size,
                                   max_masks_per_sample=p.verify.max_tries, mask_kind=p.lists.mask,
                                   rejects_path=segment / "rejects.jsonl", progress=progress,
                                   backend=OracleSegmenter(annotations))
    v = p.verify
    stats["verify"] = run_verify(segment / "segment.jsonl", prepared / "prepared.jsonl", verify / "verify.jsonl",
                                 verify / "rejects.jsonl", enabled=v.enabled, model_name=v.model or base_model,
                                 max_tries=v.max_tries, on_fail=v.on_fail, fill=p.lists.fill, batch_size=v.batch_size,
                                 device="cpu", dtype=p.model.dtype, progress=progress)
    li = p.lists
    stats["lists"] = run_lists(prepared / "prepared.jsonl", verify / "verify.jsonl", out / "lists", size=li.size,
                               mode=li.mode, fill=li.fill, highlight=li.highlight, mask_kind=li.mask,
                               num_workers=li.num_workers)
    return stats


def build_world_lists(p: Params, world_dir: str | Path, base_model: str, out_dir: str | Path, *,
                      progress: bool = True) -> dict:
    """``out_dir/{pairs,test}/{prepared,detect,segment,verify,lists}``; returns per-split stage stats."""
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)  # not a persisted output: every run builds it whole
    return {split: _split(p, world_dir, split, base_model, out_dir / split, progress) for split in SPLITS}


def list_metrics(stats: dict) -> dict:
    """The deterministic counts of :func:`build_world_lists`' stats (no timings), per split."""
    out: dict = {"detector": "oracle", "segmenter": "oracle"}
    for split, st in stats.items():
        out[split] = {
            "pairs": st["prepare"]["records_out"], "prepare_rejected": st["prepare"]["rejected"],
            "detected": st["detect"]["written"], "detect_rejected": st["detect"]["rejected"],
            "masks": st["segment"]["masks"], "mask_fallback": st["segment"]["mask_fallback"],
            "verified_true": st["verify"]["verified_true"], "verified_false": st["verify"]["verified_false"],
            "verified_null": st["verify"]["verified_null"], "lists": st["lists"]["lists"],
            "lists_rejected": st["lists"]["rejected"], "mean_mask_area": st["lists"]["mean_mask_area"],
        }
    return out
