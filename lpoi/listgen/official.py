"""The LPOI authors' released lists -> the ``lists.jsonl`` manifest (``lists.source: official``).

The authors released their list images, not the code that made them (github fatemehpesaran310/lpoi, README):
``ours_cmask_until_list5/ours_cmask_until{25,50,75,100}/<img_path>`` hides 25/50/75/100 % of the object, and
their trainer (``lpoi.py``) reads a list as [original, until25, until50, until75, until100], i.e. visibility
1, .75, .5, .25, 0. This stage adopts those files instead of detect/segment/verify/interpolate:

* ``images[0]`` is prepare's image (the original's pixels, as in every manifest), ``images[k]`` the released
  file for level k; every file is copied byte for byte into ``out_dir/images/`` (pixel-identical to its
  source), after a full decode so that a broken file becomes a reject, never a training-time crash.
* A released image is looked for at ``<level>/<img_path>``, then with img_path's leading folders up to
  ``images/`` removed (the official ``str.replace("images", ...)`` mapping: ``data/images/x.jpg`` ->
  ``ours_cmask_until25/x.jpg``), then by its basename.
* Rejects (one row each, with the sample id): ``missing_list_image``, ``undecodable_list_image`` (with the
  decoder's reason), ``list_size_mismatch`` (a list image whose size differs from the original's).
* ``object.mask_area`` is measured: the share of pixels that differ (by more than ``HIDDEN_LEVELS``) between
  the original and the fully hidden image (the release records no box or phrase: those are null,
  ``object.source`` is ``official``).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lpoi.io import ImageRejected, UnsafePathError, atomic_write_bytes, check_image_integrity, load_image, read_jsonl
from lpoi.io import safe_join, write_jsonl
from lpoi.listgen.lists import lists_metrics
from lpoi.listgen.prepare import image_candidates, safe_stem

__all__ = ["LEVELS", "find_list_image", "level_dirs", "run_official_lists"]

HIDDEN_LEVELS = 32
"""Change (in 8-bit levels, any channel) above which a pixel of the fully hidden image counts as hidden."""
LEVELS = (25, 50, 75, 100)
"""Percent of the object hidden in the released folders ``ours_cmask_until{25,50,75,100}`` (lpoi.py)."""


def level_dirs(root: str | os.PathLike) -> list[Path]:
    """``root/ours_cmask_until25`` ... ``root/ours_cmask_until100``, most visible first."""
    return [Path(root) / f"ours_cmask_until{p}" for p in LEVELS]


def find_list_image(level_dir: Path, img_path: str) -> Path | None:
    """The released image of ``img_path`` in one level folder (see the module docstring), or None."""
    for rel in image_candidates(img_path):
        try:
            path = safe_join(level_dir, rel)
        except UnsafePathError:
            continue
        if path.is_file():
            return level_dir / rel
    return None


def _decoded(path: Path) -> np.ndarray:
    img = load_image(path)
    check_image_integrity(path)
    return np.asarray(img)


def _one(row: dict, levels: list[Path], images_out: Path, out_dir: Path) -> tuple[dict | None, dict | None]:
    """(manifest row, None) or (None, reject row) for one prepared sample."""
    rid = row["id"]
    sources = [Path(row["image_path"])]
    for d in levels:
        found = find_list_image(d, row["image"])
        if found is None:
            return None, {"id": rid, "reason": "missing_list_image", "stage": "lists",
                          "detail": f"no released list image for img_path {row['image']!r} in {d}"}
        sources.append(found)
    arrays = []
    for src in sources:
        try:
            arrays.append(_decoded(src))
        except ImageRejected as e:
            return None, {"id": rid, "reason": "undecodable_list_image", "stage": "lists",
                          "detail": f"{src}: {e.reason}: {e.detail}"}
    if any(a.shape != arrays[0].shape for a in arrays[1:]):
        bad = next(s for s, a in zip(sources, arrays) if a.shape != arrays[0].shape)
        return None, {"id": rid, "reason": "list_size_mismatch", "stage": "lists",
                      "detail": f"{bad} is {arrays[sources.index(bad)].shape[1::-1]} px, the original "
                                f"{arrays[0].shape[1::-1]} px"}
    stem, paths = safe_stem(rid), []
    for k, src in enumerate(sources):
        dst = images_out / f"{stem}_{k}{src.suffix.lower()}"
        atomic_write_bytes(dst, src.read_bytes())  # byte copy: the pixels are the released file's
        paths.append(Path(os.path.relpath(dst, out_dir)).as_posix())
    # a pixel counts as hidden when a channel moved by more than JPEG's re-encoding noise (a few levels)
    diff = np.abs(arrays[0].astype(np.int16) - arrays[-1].astype(np.int16)).max(axis=-1)
    hidden = float((diff > HIDDEN_LEVELS).mean())
    n = len(sources)
    return {
        "id": rid, "prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
        "images": paths, "visibility": [1 - k / (n - 1) for k in range(n)],
        "object": {"phrase": None, "source": "official", "box": None, "score": None, "mask": "official",
                   "mask_area": hidden},
        "verified": None,
    }, None


def run_official_lists(prepared_path: str | os.PathLike, lists_root: str | os.PathLike,
                       out_dir: str | os.PathLike, *, size: int = 5) -> dict[str, Any]:
    """Write ``out_dir/lists.jsonl``, ``out_dir/rejects.jsonl`` and ``out_dir/images/`` from the released lists
    under ``lists_root`` (the unzipped ``ours_cmask_until_list5``); returns the stage's metrics.

    Raises ``ValueError`` (one line) for a size other than the release's 5, a missing level folder, or when
    no list at all could be built.
    """
    if size != len(LEVELS) + 1:
        raise ValueError(f"lists.size is {size}, but the released lists have {len(LEVELS) + 1} images "
                         f"(original + ours_cmask_until{{{','.join(map(str, LEVELS))}}}): set lists.size: 5")
    levels = level_dirs(lists_root)
    missing = [str(d) for d in levels if not d.is_dir()]
    if missing:
        raise FileNotFoundError(f"released list folders missing: {', '.join(missing)} (expected the unzipped "
                                "ours_cmask_until_list5.zip: python stages/download.py lpoi-official)")
    out_dir = Path(out_dir)
    images_out = out_dir / "images"
    images_out.mkdir(parents=True, exist_ok=True)
    rows, rejects = [], []
    for row in read_jsonl(prepared_path):
        good, bad = _one(row, levels, images_out, out_dir)
        (rows if good else rejects).append(good or bad)
    write_jsonl(out_dir / "lists.jsonl", rows)
    write_jsonl(out_dir / "rejects.jsonl", rejects)
    counts = {"written": len(rows), "rejected": len(rejects),
              "rejects_by_reason": dict(Counter(r["reason"] for r in rejects)),
              "mask_area_sum": sum(r["object"]["mask_area"] for r in rows)}
    metrics = lists_metrics(counts, size)
    if not rows:
        raise ValueError(f"no list could be built from {lists_root} (rejects by reason: "
                         f"{metrics['rejects_by_reason'] or 'none'}); see {out_dir / 'rejects.jsonl'}")
    return metrics
