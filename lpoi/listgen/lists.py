"""The lists stage: verified objects -> L-image lists on disk + the ``lists.jsonl`` manifest (DESIGN.md).

Streams ``prepared.jsonl`` and ``verify.jsonl`` side by side (verify keeps prepare's order), so memory
does not grow with the dataset; the PNG work of each block is spread over worker processes
(:func:`lpoi.listgen.interpolate.list_mapper`) and the rows go through the per-sample runner
(:mod:`lpoi.runner`), which resumes after a kill and, with ``journal=True``, rebuilds any list whose
PNGs are not the ones this stage wrote. Image paths in the manifest are relative to the manifest's
folder, so the folder can move.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lpoi.config import ListsParams, section_of
from lpoi.io import read_jsonl
from lpoi.runner import Reject, Runner, StageOutput, Tally, Write, summarize

__all__ = ["lists_metrics", "run_lists"]


def _join(prepared_path, verify_path) -> Iterator[dict]:
    """``{"id", "p": prepared row, "v": verify row}``; verify rows are a subsequence of prepared rows, in order."""
    prepared = read_jsonl(prepared_path)
    for v in read_jsonl(verify_path):
        for p in prepared:
            if p["id"] == v["id"]:
                yield {"id": p["id"], "p": p, "v": v}
                break
        else:
            raise ValueError(f"{verify_path}: sample {v['id']!r} is not in {prepared_path} (or out of order); "
                             "re-run the verify stage")


def _task(row: dict, verify_dir: Path) -> dict:
    obj = row["v"].get("object") or {}
    return {"id": row["id"], "image_path": row["p"]["image_path"], "box": obj.get("box"),
            "mask_path": os.fspath(verify_dir / obj["mask"]) if obj.get("mask") else None}


def _manifest_row(row: dict, entry: dict, out_dir: Path) -> Write:
    p, v = row["p"], row["v"]
    obj = v.get("object") or {}
    return Write({
        "id": p["id"], "prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
        "images": [Path(os.path.relpath(x, out_dir)).as_posix() for x in entry["images"]],
        "visibility": entry["visibility"],
        "object": {"phrase": obj.get("phrase"), "source": obj.get("source"), "box": obj.get("box"),
                   "score": obj.get("score"), "mask": entry["mask"], "mask_area": entry["mask_area"]},
        "verified": v.get("verified"),
    }, {Path(x): None for x in entry["images"]})  # already written by the list builder


def lists_tally() -> Tally:
    return Tally(lambda row: {"mask_area_sum": row["object"]["mask_area"]}, zero={"mask_area_sum": 0.0})


def lists_metrics(counts: dict, size: int) -> dict[str, Any]:
    """The stage's metrics from its counts: lists written, rejects by reason, mean hidden share of the image."""
    n = counts["written"]
    return {"lists": n, "rejected": counts["rejected"], "rejects_by_reason": counts["rejects_by_reason"],
            "mean_mask_area": counts["mask_area_sum"] / n if n else 0.0, "size": size}


def run_lists(prepared_path: str | os.PathLike, verify_path: str | os.PathLike, out_dir: str | os.PathLike,
              params: ListsParams | None = None, *, progress: bool = True, journal: bool = False, chunk: int = 16,
              **settings: Any) -> dict[str, Any]:
    """Write ``out_dir/lists.jsonl``, ``out_dir/rejects.jsonl`` and ``out_dir/images/`` (resumable).

    ``params``: the ``lists`` section (``size``, ``mode``, ``fill``, ``highlight``, ``mask``,
    ``num_workers``); without it, those settings as keywords (``mask_kind`` for ``mask``), validated the
    same way (:func:`lpoi.config.section_of`).

    Returns this invocation's counts and timings, and the stage's metrics over the whole output under
    ``"output"`` (:func:`lists_metrics`). Raises ``ValueError`` when no list at all could be built.
    """
    from lpoi.listgen.interpolate import list_builder, list_mapper

    li = section_of(ListsParams, params, settings, mask_kind="mask")
    size, mode, fill, highlight, mask_kind = li.size, li.mode, li.fill, li.highlight, li.mask
    num_workers = li.num_workers
    out_dir, verify_dir = Path(out_dir), Path(verify_path).parent
    fn = list_builder(out_dir / "images", size=size, mode=mode, fill=fill, highlight=highlight, mask_kind=mask_kind,
                      reuse=not journal)

    with StageOutput(out_dir / "lists.jsonl", out_dir / "rejects.jsonl", journal=journal) as out, \
            list_mapper(num_workers) as pmap:

        def process(tasks: list[dict], rows: list[dict]) -> list:
            return [Reject(e["error"]["reason"], e["error"]["detail"], {"stage": "lists"}) if "error" in e
                    else _manifest_row(row, e, out_dir) for row, (e, _) in zip(rows, pmap(fn, tasks))]

        # one sample's list never depends on another's: a resumed block builds only its unfinished lists
        runner = Runner(out, chunk * max(1, num_workers), whole=False, workers=1, progress=progress, desc="lists",
                        tally=lists_tally())
        stats = runner.run(_join(prepared_path, verify_path), lambda rows: [_task(r, verify_dir) for r in rows],
                           process)
    stats["output"] = lists_metrics(summarize(out.out_path, out.rejects_path, lists_tally()), size)
    if stats["output"]["lists"] == 0:
        raise ValueError(f"no list could be built (rejects by reason: {stats['output']['rejects_by_reason'] or 'none'}); "
                         f"see {out_dir / 'rejects.jsonl'} and the rejects of the earlier stages")
    return stats
