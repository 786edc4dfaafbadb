"""The lists stage: verified objects -> L-image lists on disk + the ``lists.jsonl`` manifest (DESIGN.md).

Streams ``prepared.jsonl`` and ``verify.jsonl`` side by side (verify keeps prepare's order), so memory
does not grow with the dataset; the PNG work is spread over worker processes by
:func:`lpoi.listgen.interpolate.iter_build_lists`, which also skips lists already on disk (resume).
Image paths in the manifest are relative to the manifest's folder, so the folder can move.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lpoi.io import atomic_open, read_jsonl

__all__ = ["run_lists"]


def _join(prepared_path, verify_path) -> Iterator[tuple[dict, dict]]:
    """Pairs (prepared row, verify row) by id; verify rows are a subsequence of prepared rows, in order."""
    prepared = read_jsonl(prepared_path)
    for v in read_jsonl(verify_path):
        for p in prepared:
            if p["id"] == v["id"]:
                yield p, v
                break
        else:
            raise ValueError(f"{verify_path}: sample {v['id']!r} is not in {prepared_path} (or out of order); "
                             "re-run the verify stage")


def run_lists(prepared_path: str | os.PathLike, verify_path: str | os.PathLike, out_dir: str | os.PathLike, *,
              size: int = 5, mode: str = "progressive", fill: str = "black", highlight: bool = False,
              mask_kind: str = "sam", num_workers: int = 0) -> dict[str, Any]:
    """Write ``out_dir/lists.jsonl``, ``out_dir/rejects.jsonl`` and ``out_dir/images/``; return stats."""
    from lpoi.listgen.interpolate import iter_build_lists

    out_dir, verify_dir = Path(out_dir), Path(verify_path).parent
    meta: dict[str, dict] = {}  # only the samples in flight (iter_build_lists consumes tasks in chunks)

    def tasks():
        for p, v in _join(prepared_path, verify_path):
            obj = v.get("object") or {}
            meta[p["id"]] = {"p": p, "v": v}
            yield {"id": p["id"], "image_path": p["image_path"], "box": obj.get("box"),
                   "mask_path": os.fspath(verify_dir / obj["mask"]) if obj.get("mask") else None}

    stats: dict[str, int] = {}
    reasons: Counter[str] = Counter()
    n_ok, hidden = 0, 0.0
    with atomic_open(out_dir / "lists.jsonl") as fl, atomic_open(out_dir / "rejects.jsonl") as fr:
        for entry in iter_build_lists(tasks(), out_dir / "images", size=size, mode=mode, fill=fill,
                                      highlight=highlight, mask_kind=mask_kind, num_workers=num_workers,
                                      stats=stats):
            m = meta.pop(entry["id"])
            p, v = m["p"], m["v"]
            if "error" in entry:
                reasons[entry["error"]["reason"]] += 1
                fr.write(json.dumps({"id": p["id"], "stage": "lists", **entry["error"]}) + "\n")
                continue
            obj = v.get("object") or {}
            row = {
                "id": p["id"], "prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
                "images": [Path(os.path.relpath(x, out_dir)).as_posix() for x in entry["images"]],
                "visibility": entry["visibility"],
                "object": {"phrase": obj.get("phrase"), "source": obj.get("source"), "box": obj.get("box"),
                           "score": obj.get("score"), "mask": entry["mask"], "mask_area": entry["mask_area"]},
                "verified": v.get("verified"),
            }
            fl.write(json.dumps(row, ensure_ascii=False) + "\n")
            n_ok += 1
            hidden += float(entry["mask_area"])
    if n_ok == 0:
        raise ValueError(f"no list could be built (rejects by reason: {dict(reasons) or 'none'}); "
                         f"see {out_dir / 'rejects.jsonl'} and the rejects of the earlier stages")
    return {"lists": n_ok, "rejected": sum(reasons.values()), "rejects_by_reason": dict(sorted(reasons.items())),
            "mean_mask_area": hidden / n_ok, "size": size, **stats}
