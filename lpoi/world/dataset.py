"""Write the shapes world to disk: three disjoint splits, preference pairs and an AMBER-format benchmark.

Layout of ``out_dir`` (the ``world_data`` stage's output)::

    pretrain/  images/*.png  scenes.jsonl              the base model's training scenes
    pairs/     images/*.png  scenes.jsonl  pairs.json  preference pairs (LPOI/mDPO schema)
    val/       images/*.png  scenes.jsonl              validation scenes: tuning and selection see only these
    test/      images/*.png  scenes.jsonl  pairs.json  held-out scenes: the benchmark and held-out lists
    bench/amber/      annotations.json  query/*.json  relation.json  safe_words.txt  questions.json  (test)
    bench/amber-val/  the same files for the val split
    world.json                                         counts and the co-occurrence statistics

``scenes.jsonl`` rows: ``{"id", "image": path relative to the split folder, "width", "height", "caption",
"objects": [{"class", "colour", "box": [x0, y0, x1, y1], "visible", "depth", "mask": RLE}],
"layout": {"background": [r, g, b], "items": [[class, colour, x, y, side], ...]}}`` (objects in caption
order; masks as :func:`lpoi.world.scenes.rle_encode`; layout items in draw order, item ``i`` is the
object of depth ``i``: :func:`load_scenes` re-renders it). A pair's id is its scene's id. Scenes of
different splits never coincide: a layout already drawn by an earlier split (pretrain, pairs, val, test)
is skipped, and the skips are counted in ``world.json``.

**Pairs.** Prompt "Describe this image."; chosen = the scene's caption; two rejected answers made false
by the same absent class -- the absent *partner* of a present object when there is one (the
co-occurrence hallucination), otherwise any absent class (:func:`hallucinated_caption`):
``rejected_insert`` names it on top of the caption, ``rejected_substitute`` instead of a present object
(as long as the chosen answer). ``rejected`` is ``rejected_insert``; ``hallucinated`` is the class.

**The benchmark** follows AMBER's official files (so the project's AMBER scorer reads it unchanged):
generative items ``1..n_test`` ("Describe this image.", ``truth`` = the classes present, ``hallu`` = the
absent partners, i.e. the objects a co-occurrence prior names), then discriminative existence items
from id 1005 ("Is there a {class}", type ``discriminative-hallucination``): per scene one present class
(truth "yes") and one absent one (truth "no"), an absent partner when the scene has one. Unlike
AMBER's own existence set, which asks only about absent objects, ours is balanced, so yes/no F1 and
accuracy have a 50 % chance level. ``questions.json`` (not an AMBER file) maps each yes/no id to
``{"scene", "class", "kind": "present" | "absent_partner" | "absent_other"}``, so the accuracy on absent
partners -- the world's hallucination -- can be read apart. ``relation.json`` maps each class to no association (the vocabulary
is the eight class names); ``safe_words.txt`` holds the one word "shape".
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

from lpoi.config import WorldParams
from lpoi.eval.benchmarks.amber import GENERATIVE_QUERY, N_GENERATIVE, N_ITEMS, is_generative
from lpoi.io import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from lpoi.world.scenes import (
    CLASSES,
    PAIRS,
    REJECTIONS,
    Layout,
    Scene,
    caption,
    hallucinated_caption,
    make_scene,
    rle_encode,
    scene_from_layout,
)

__all__ = ["BENCHES", "DESCRIBE", "SPLITS", "build_world", "existence_question", "load_scenes", "scenes",
           "world_scenes"]

DESCRIBE = GENERATIVE_QUERY  # "Describe this image.": AMBER's generative query
SPLITS = ("pretrain", "pairs", "val", "test")
"""In drawing order: a scene whose layout an earlier split drew is skipped, so splits never coincide."""
BENCHES = {"val": "amber-val", "test": "amber"}
"""The splits with an AMBER-format benchmark, and its folder under ``bench/``."""


def existence_question(cls: str) -> str:
    """AMBER asks "Is there a {obj} in this image?"; here the question ends on the object, where the
    answer is predicted (why: :mod:`lpoi.world.model`)."""
    return f"Is there a {cls}"


def split_size(world: WorldParams, split: str) -> int:
    return {"pretrain": world.n_pretrain, "pairs": world.n_pairs, "val": world.n_val, "test": world.n_test}[split]


def _key(layout: Layout) -> tuple:
    return layout.background, layout.items


def world_scenes(world: WorldParams, through: str = SPLITS[-1]) -> tuple[dict[str, list[Scene]], dict[str, int]]:
    """Every split up to ``through`` (in :data:`SPLITS` order), and how many drawn scenes each skipped
    because an earlier split already holds their layout (scene ids keep the drawing index)."""
    if through not in SPLITS:
        raise ValueError(f"unknown world split {through!r}; known: {SPLITS}")
    seen: set = set()
    out: dict[str, list[Scene]] = {}
    skipped: dict[str, int] = {}
    for split in SPLITS[: SPLITS.index(through) + 1]:
        items, own, i = [], set(), 0
        while len(items) < split_size(world, split):
            s = make_scene(world.seed, split, i, size=world.canvas, sides=(world.min_side, world.max_side),
                           p_partner=world.p_partner, min_visible=world.min_visible)
            i += 1
            if _key(s.layout) not in seen:  # repeats *within* a split are the generator's to make
                items.append(s)
                own.add(_key(s.layout))
        skipped[split] = i - len(items)
        seen |= own
        out[split] = items
    return out, skipped


def scenes(world: WorldParams, split: str, n: int | None = None) -> list[Scene]:
    """The first ``n`` (default: the split's size) scenes of ``split``, as :func:`build_world` writes them."""
    if split not in SPLITS:
        raise ValueError(f"unknown world split {split!r}; known: {SPLITS}")
    items = world_scenes(world, split)[0][split]
    return items if n is None else items[:n]


def load_scenes(split_dir: str | Path) -> list[Scene]:
    """The scenes of a written split, re-rendered from their layouts (``split_dir/scenes.jsonl``)."""
    path = Path(split_dir) / "scenes.jsonl"
    out = []
    for lineno, row in enumerate(read_jsonl(path), 1):
        try:
            lay = row["layout"]
            layout = Layout(tuple(lay["background"]), tuple((c, col, int(x), int(y), int(s))
                                                            for c, col, x, y, s in lay["items"]))
            scene = scene_from_layout(row["id"], layout, int(row["width"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: line {lineno}: unusable scene row ({type(e).__name__}: {e})") from None
        if scene.classes != [o["class"] for o in row["objects"]]:
            raise ValueError(f"{path}: scene {row['id']!r}: its layout draws {scene.classes}, the row lists "
                             f"{[o['class'] for o in row['objects']]}")
        out.append(scene)
    return out


def scene_row(scene: Scene, image_rel: str) -> dict:
    return {
        "id": scene.id, "image": image_rel, "width": scene.image.size[0], "height": scene.image.size[1],
        "caption": caption(scene.objects),
        "objects": [{"class": o.cls, "colour": o.colour, "box": list(o.box), "visible": round(o.visible, 4),
                     "depth": o.depth, "mask": rle_encode(o.mask)} for o in scene.objects],
        "layout": {"background": list(scene.layout.background), "items": [list(i) for i in scene.layout.items]},
    }


def _write_split(items: list[Scene], out: Path) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for s in items:
        rel = f"images/{s.id}.png"
        s.image.save(out / rel, format="PNG")  # no metadata chunks: same scene, same bytes
        rows.append(scene_row(s, rel))
    write_jsonl(out / "scenes.jsonl", rows)


def rejections(scene: Scene, seed: int) -> dict:
    """Both rejected answers of ``scene`` (same hallucinated class and colour) and that class."""
    out = {}
    for mode in REJECTIONS:
        text, cls = hallucinated_caption(scene, random.Random(f"lpoi-world-pairs:{seed}:{scene.id}"), mode)
        out[f"rejected_{mode}"] = text
    out["hallucinated"] = cls
    return out


def preference_pairs(items: list[Scene], seed: int) -> list[dict]:
    """LPOI/mDPO-schema pairs (``img_path`` relative to the split's folder), with both rejected answers."""
    out = []
    for s in items:
        r = rejections(s, seed)
        out.append({"id": s.id, "img_path": f"images/{s.id}.png", "prompt": DESCRIBE, "chosen": caption(s.objects),
                    "rejected": r["rejected_insert"], **r})
    return out


def amber_files(items: list[Scene], seed: int, name: str = "amber") -> tuple[list[dict], list[dict], dict]:
    """(annotations, queries, questions) of a benchmark, in AMBER's official formats and id ranges."""
    rng = random.Random(f"lpoi-world-amber:{seed}" + ("" if name == "amber" else f":{name}"))
    ann, queries, questions = [], [], {}
    for i, s in enumerate(items, 1):
        ann.append({"id": i, "type": "generative", "truth": s.classes, "hallu": s.absent_partners()})
        queries.append({"id": i, "image": f"{s.id}.png", "query": DESCRIBE})
    next_id = N_GENERATIVE + 1  # AMBER: ids 1..1004 are generative, 1005.. discriminative
    for s in items:
        yes = rng.sample(s.classes, 1)  # one "yes" and one "no" per scene: half the answering time of two each
        partners = s.absent_partners()
        others = [c for c in s.absent() if c not in partners]
        rng.shuffle(partners)
        rng.shuffle(others)
        no = (partners + others)[: len(yes)]
        for cls, truth in [(c, "yes") for c in yes] + [(c, "no") for c in no]:
            ann.append({"id": next_id, "type": "discriminative-hallucination", "truth": truth})
            queries.append({"id": next_id, "image": f"{s.id}.png", "query": existence_question(cls)})
            kind = "present" if truth == "yes" else "absent_partner" if cls in partners else "absent_other"
            questions[str(next_id)] = {"scene": s.id, "class": cls, "kind": kind}
            next_id += 1
    if next_id - 1 > N_ITEMS:
        raise ValueError(f"{len(items)} benchmark scenes need AMBER ids up to {next_id - 1}, beyond AMBER's {N_ITEMS}")
    return ann, queries, questions


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=4))  # AMBER's files: indent 4


def write_amber(items: list[Scene], seed: int, out: Path) -> dict:
    ann, queries, questions = amber_files(items, seed, out.name)
    _dump(out / "annotations.json", ann)
    gen = {q["id"] for q in queries if is_generative(q["id"])}
    _dump(out / "query" / "query_all.json", queries)
    _dump(out / "query" / "query_generative.json", [q for q in queries if q["id"] in gen])
    _dump(out / "query" / "query_discriminative.json", [q for q in queries if q["id"] not in gen])
    _dump(out / "query" / "query_discriminative-existence.json", [q for q in queries if q["id"] not in gen])
    _dump(out / "relation.json", {c: [] for c in CLASSES})
    atomic_write_text(out / "safe_words.txt", "shape")
    atomic_write_json(out / "questions.json", questions)
    truths = Counter(a["truth"] for a in ann if a["type"] != "generative")
    kinds = Counter(q["kind"] for q in questions.values())
    return {"generative": len(gen), "discriminative": len(ann) - len(gen), "truth_yes": truths["yes"],
            "truth_no": truths["no"], "kinds": {k: kinds[k] for k in ("present", "absent_partner", "absent_other")}}


def cooccurrence(items: list[Scene]) -> dict:
    """P(partner present | class present) per pair, and how many scenes miss an anchor's partner."""
    out = {}
    for a, b in PAIRS:
        for x, y in ((a, b), (b, a)):
            with_x = [s for s in items if x in s.classes]
            out[f"p({y}|{x})"] = sum(y in s.classes for s in with_x) / len(with_x) if with_x else None
    out["scenes_with_absent_partner"] = sum(bool(s.absent_partners()) for s in items) / len(items)
    return out


def build_world(world: WorldParams, out_dir: str | Path) -> dict:
    """Write every split, the pairs and the benchmarks; return the summary also stored in ``world.json``."""
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)  # a fresh folder: no scene of an earlier world survives
    summary: dict = {"seed": world.seed, "canvas": world.canvas, "p_partner": world.p_partner, "splits": {}}
    all_items, skipped = world_scenes(world)
    for split in SPLITS:
        items = all_items[split]
        _write_split(items, out / split)
        n_obj = Counter(len(s.objects) for s in items)
        summary["splits"][split] = {
            "scenes": len(items), "skipped_duplicates": skipped[split],
            "objects_per_scene": {str(k): n_obj[k] for k in sorted(n_obj)},
            "class_counts": dict(Counter(c for s in items for c in s.classes)),
            "min_visible_share": min(o.visible for s in items for o in s.objects),
            "occluded_objects": sum(o.visible < 1 for s in items for o in s.objects),
            "cooccurrence": cooccurrence(items),
        }
        if split in ("pairs", "test"):
            atomic_write_json(out / split / "pairs.json", preference_pairs(items, world.seed))
        if split in BENCHES:
            key = "bench" if split == "test" else f"bench_{split}"
            summary[key] = write_amber(items, world.seed, out / "bench" / BENCHES[split])
    atomic_write_json(out / "world.json", summary)
    return summary
