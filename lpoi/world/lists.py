"""The world's lists: the critical object really erased (or an absent partner really drawn in), in K steps.

The world knows its objects, so no detector, segmenter or verifier runs: for every scene of the ``pairs``
split (training lists) and of the ``test`` split (held-out lists) the object to hide is chosen by
:func:`lpoi.world.hide.critical_object` (with its reason), and :func:`lpoi.world.hide.hide_sequence`
erases it with ``world.lists.fill`` at visibilities 1, ..., 0 (``world.lists.k`` images, image 0 the scene).
Every list is checked on its pixels (:func:`lpoi.world.hide.pixel_check`).

Per split and rejection mode, one manifest ``<split>/lists-<mode>.jsonl`` in the trainer's schema
(:func:`lpoi.train.data.load_lists`): ``id, prompt, chosen, rejected, images`` (relative to the manifest's
folder) plus ``visibility``, ``target`` (the class the list erases or draws), ``kind``, ``reason`` and
``check``. The modes share every image and differ only in the description rows' ``rejected``
(``rejected_insert`` / ``rejected_substitute`` of world_data's ``pairs.json``). Row kinds:

* ``describe`` (id = the scene's): "Describe this image.", the caption over the rejected answer;
* ``yes`` (``<id>-yes``, pairs split, ``world.lists.yes_no``): "Is there a {hidden class}", "Yes" over "No",
  the same erasing list;
* ``no`` (``<id>-no``, idem, where the scene has an absent partner): "Is there a {partner}", "No" over
  "Yes", the partner drawn in by :func:`lpoi.world.hide.insert_sequence` (the one the rejected answers add).

Held-out (test) manifests hold description rows only, for the first ``world.eval.heldout_lists`` test scenes: the
held-out rewards are about the description task. The pairs split also gets ``lists-<mode>-k<k>.jsonl`` for every
``2 <= k < K`` (the same rows with ``k`` evenly spaced images, :func:`subset_indices`), for the study's shorter
lists.
A scene whose partner finds no placement is recorded in ``<split>/rejects.jsonl`` with its reason.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from lpoi.config import WorldParams
from lpoi.io import read_json, write_jsonl
from lpoi.world.dataset import DESCRIBE, existence_question, load_scenes
from lpoi.world.hide import critical_object, hide_sequence, insert_sequence, pixel_check
from lpoi.world.scenes import REJECTIONS, caption

__all__ = ["SPLITS", "build_world_lists", "manifest_path", "subset_indices", "visibilities"]

SPLITS = ("pairs", "test")


def visibilities(k: int) -> list[float]:
    """``k`` visibilities in equal steps from 1 to 0."""
    return [round(1 - i / (k - 1), 6) for i in range(k)]


def manifest_path(lists_dir: str | Path, split: str, mode: str, k: int | None = None) -> Path:
    """``<split>/lists-<mode>.jsonl`` (all K images), or ``lists-<mode>-k<k>.jsonl``: the same rows with ``k`` of
    them (:func:`subset_indices`), beside it because a manifest's images must lie under its folder."""
    return Path(lists_dir) / split / (f"lists-{mode}.jsonl" if k is None else f"lists-{mode}-k{k}.jsonl")


def _subset(rows: list[dict], k: int) -> list[dict]:
    idx = subset_indices(len(rows[0]["images"]), k) if rows else []
    return [{**r, "images": [r["images"][i] for i in idx], "visibility": [r["visibility"][i] for i in idx]}
            for r in rows]


def _save(img, out: Path, rel: str) -> str:
    img.save(out / rel, format="PNG")  # no metadata chunks: same list, same bytes
    return rel


def _split(world: WorldParams, src: Path, out: Path) -> dict:
    split = src.name
    pairs = {r["id"]: r for r in read_json(src / "pairs.json")}
    vis = visibilities(world.lists.k)
    yes_no = world.lists.yes_no and split == "pairs"
    rows: dict[str, list[dict]] = {m: [] for m in REJECTIONS}
    rejects, hide_checks, insert_checks = [], [], []
    scenes = load_scenes(src)
    if split == "test":  # held-out lists: only the first world.eval.heldout_lists are ever scored
        scenes = scenes[:world.eval.heldout_lists]
    for scene in scenes:
        pair = pairs.get(scene.id)
        if pair is None:
            raise ValueError(f"{src / 'pairs.json'}: no pair for scene {scene.id!r}")
        if pair["chosen"] != caption(scene.objects):
            raise ValueError(f"{src / 'pairs.json'}: pair {scene.id!r}: chosen answer is not the scene's caption")
        (out / "images" / scene.id).mkdir(parents=True)
        depth, reason = critical_object(scene, pair["hallucinated"])
        target = scene.layout.items[depth][0]
        hide = hide_sequence(scene, depth, vis, world.lists.fill, world.seed)
        check = pixel_check(scene, depth, hide, fill=world.lists.fill)
        hide_checks.append(check)
        first = _save(hide[0], out, f"images/{scene.id}/0.png")
        images = [first] + [_save(im, out, f"images/{scene.id}/hide-{i}.png") for i, im in enumerate(hide[1:], 1)]
        common = {"images": images, "visibility": vis, "target": target, "reason": reason, "check": check}
        extra = []
        if yes_no:
            extra.append({"id": f"{scene.id}-yes", "prompt": existence_question(target), "chosen": "Yes",
                          "rejected": "No", **common, "kind": "yes"})
            partners = scene.absent_partners()
            if partners:
                cls = pair["hallucinated"] if pair["hallucinated"] in partners else partners[0]
                try:
                    drawn = insert_sequence(scene, cls, vis, world.seed, sides=(world.min_side, world.max_side),
                                            min_visible=world.min_visible)
                except ValueError as e:
                    rejects.append({"id": f"{scene.id}-no", "reason": "no_placement", "detail": str(e)})
                else:
                    icheck = pixel_check(scene, None, drawn, inserted=cls)
                    insert_checks.append(icheck)
                    imgs = [first] + [_save(im, out, f"images/{scene.id}/insert-{i}.png")
                                      for i, im in enumerate(drawn[1:], 1)]
                    extra.append({"id": f"{scene.id}-no", "prompt": existence_question(cls), "chosen": "No",
                                  "rejected": "Yes", "images": imgs, "visibility": vis, "target": cls,
                                  "kind": "no", "reason": "absent_partner", "check": icheck})
        for mode in REJECTIONS:
            rows[mode].append({"id": scene.id, "prompt": DESCRIBE, "chosen": pair["chosen"],
                               "rejected": pair[f"rejected_{mode}"], **common, "kind": "describe"})
            rows[mode].extend(extra)
    for mode in REJECTIONS:
        write_jsonl(manifest_path(out.parent, split, mode), rows[mode])
        for k in range(2, world.lists.k) if split == "pairs" else ():  # the study's shorter lists (K 3, ...)
            write_jsonl(manifest_path(out.parent, split, mode, k), _subset(rows[mode], k))
    write_jsonl(out / "rejects.jsonl", rejects)
    return _metrics(rows[REJECTIONS[0]], hide_checks, insert_checks, rejects)


def _share(checks: list[dict], test) -> float:
    return round(sum(bool(test(c)) for c in checks) / max(1, len(checks)), 4)


def _metrics(rows: list[dict], hide: list[dict], insert: list[dict], rejects: list[dict]) -> dict:
    n_pix = lambda c: max(1, c["object_pixels"])  # noqa: E731
    return {
        "rows": len(rows), "kinds": dict(Counter(r["kind"] for r in rows)),
        "reasons": dict(Counter(r["reason"] for r in rows if r["kind"] == "describe")),
        "rejected": len(rejects),
        "hide": {
            "lists": len(hide),
            "no_object_pixels_left": _share(hide, lambda c: c["object_pixels_left"] == 0),
            "equals_without": _share(hide, lambda c: c["equals_without"]),
            "monotone": _share(hide, lambda c: c["monotone"]),
            "first_is_scene": _share(hide, lambda c: c["first_is_scene"]),
            "silhouette_left": round(sum(c["silhouette_pixels"] / n_pix(c) for c in hide) / max(1, len(hide)), 4),
            "colour_left": round(sum(c["colour_share"] for c in hide) / max(1, len(hide)), 4),
        },
        "insert": {  # numbers only (a metrics file): no shares without lists
            "lists": len(insert),
            **({"drawn": _share(insert, lambda c: c["class_pixels"] > 0),
                "monotone": _share(insert, lambda c: c["monotone"]),
                "first_is_scene": _share(insert, lambda c: c["first_is_scene"])} if insert else {}),
        },
    }


def build_world_lists(world: WorldParams, world_dir: str | Path, out_dir: str | Path) -> dict:
    """``out_dir/{pairs,test}/{lists-<mode>.jsonl, images/, rejects.jsonl}``; returns the metrics per split."""
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)  # every run builds it whole
    metrics: dict = {"k": world.lists.k}
    for split in SPLITS:
        out = out_dir / split
        out.mkdir(parents=True)
        metrics[split] = _split(world, world_dir / split, out)
    return metrics


def subset_indices(big_k: int, k: int) -> list[int]:
    """``k`` of ``big_k`` list positions, evenly spaced, both ends kept (5, 3 -> 0, 2, 4)."""
    if not 2 <= k <= big_k:
        raise ValueError(f"cannot take {k} of {big_k} list images (need 2 <= k <= {big_k})")
    idx = [round(i * (big_k - 1) / (k - 1)) for i in range(k)]
    assert len(set(idx)) == k  # evenly spaced with step >= 1
    return idx
