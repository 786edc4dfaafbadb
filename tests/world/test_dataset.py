"""The world on disk: deterministic, pairs in the LPOI schema, a benchmark the project's AMBER scorer reads."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lpoi.config import WorldParams
from lpoi.eval.benchmarks import amber
from lpoi.io import read_json, read_jsonl
from lpoi.world.dataset import DESCRIBE, build_world, existence_question, load_scenes, scenes, world_scenes
from lpoi.world.scenes import CLASSES, caption


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_params_same_bytes(small_world, world_params, tmp_path):
    world, out, _ = small_world
    build_world(world, tmp_path / "again")
    assert _digest(out) == _digest(tmp_path / "again")
    build_world(world_params(seed=1), tmp_path / "other")
    other = _digest(tmp_path / "other")
    assert other.keys() == _digest(out).keys() and other != _digest(out)


def test_splits_pairs_and_summary(small_world):
    world, out, summary = small_world
    splits = ("pretrain", "pairs", "val", "test")
    ids = {split: [r["id"] for r in read_jsonl(out / split / "scenes.jsonl")] for split in splits}
    assert [len(v) for v in ids.values()] == [world.n_pretrain, world.n_pairs, world.n_val, world.n_test]
    assert len({i for v in ids.values() for i in v}) == sum(len(v) for v in ids.values())
    for split in ("pairs", "test"):
        pairs = read_json(out / split / "pairs.json")
        assert len(pairs) == len(ids[split])
        for pair, s in zip(pairs, scenes(world, split)):
            assert pair["id"] == s.id and pair["prompt"] == DESCRIBE and pair["chosen"] == caption(s.objects)
            assert (out / split / pair["img_path"]).is_file()
            assert pair["rejected"] == pair["rejected_insert"] != pair["chosen"] != pair["rejected_substitute"]
            assert pair["hallucinated"] not in s.classes and pair["hallucinated"] in pair["rejected_substitute"]
    for split in splits:  # the layouts on disk redraw the images on disk
        written = load_scenes(out / split)
        assert [s.id for s in written] == ids[split]
        for s in written[:5]:
            assert np.array_equal(np.asarray(s.image), np.asarray(Image.open(out / split / f"images/{s.id}.png")))


def test_splits_never_share_a_scene():
    # a tiny canvas with one object position: the generator repeats layouts, and later splits skip them
    world = WorldParams(name="shapes", canvas=16, min_side=14, max_side=14, min_visible=0.01, p_partner=0,
                        n_pretrain=300, n_pairs=60, n_val=30, n_test=30)
    items, skipped = world_scenes(world)
    assert sum(skipped.values()) > 0 and [len(v) for v in items.values()] == [300, 60, 30, 30]
    keys = [{(s.layout.background, s.layout.items) for s in v} for v in items.values()]
    assert all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1:])
    assert [s.id for s in scenes(world, "val")] == [s.id for s in items["val"]]


def test_questions_match_the_benchmarks(small_world):
    world, out, summary = small_world
    for name, split, n in (("amber", "test", world.n_test), ("amber-val", "val", world.n_val)):
        bench = out / "bench" / name
        truth = {a["id"]: a["truth"] for a in amber.load_annotations(bench).values() if a["type"] != "generative"}
        queries = {q["id"]: q for q in amber.load_queries(bench)}
        questions = read_json(bench / "questions.json")
        by_id = {s.id: s for s in scenes(world, split)}
        assert sorted(int(i) for i in questions) == sorted(truth) and len(by_id) == n
        for i, q in questions.items():
            s = by_id[q["scene"]]
            assert queries[int(i)]["query"] == existence_question(q["class"])
            assert queries[int(i)]["image"] == f"{s.id}.png"
            expected = ("present" if q["class"] in s.classes else
                        "absent_partner" if q["class"] in s.absent_partners() else "absent_other")
            assert q["kind"] == expected and (truth[int(i)] == "yes") == (expected == "present")
        key = "bench" if split == "test" else "bench_val"
        assert summary[key]["generative"] == n and sum(summary[key]["kinds"].values()) == len(questions)
    assert summary == read_json(out / "world.json")
    assert summary["splits"]["test"]["scenes"] == world.n_test and summary["bench"]["generative"] == world.n_test


def test_benchmark_in_ambers_formats(small_world):
    world, out, _ = small_world
    bench = out / "bench" / "amber"
    ann = amber.load_annotations(bench)
    queries = amber.load_queries(bench)
    items = amber.items(bench, out / "test" / "images")
    test = scenes(world, "test")
    gen = [a for a in ann.values() if a["type"] == "generative"]
    disc = [a for a in ann.values() if a["type"] != "generative"]
    assert [a["id"] for a in gen] == list(range(1, world.n_test + 1))
    assert min(a["id"] for a in disc) == 1005 and len(items) == len(queries) == len(ann)
    assert sum(a["truth"] == "yes" for a in disc) == sum(a["truth"] == "no" for a in disc)  # 50 % chance level
    for a, s in zip(gen, test):
        assert a["truth"] == s.classes and a["hallu"] == s.absent_partners()
    by_id = {q["id"]: q for q in queries}
    for a in disc:
        cls = by_id[a["id"]]["query"].removeprefix("Is there a ")
        assert by_id[a["id"]]["query"] == existence_question(cls) and cls in CLASSES
    assert set(amber.load_association(bench)) == set(CLASSES) and amber.load_safe_words(bench) == ["shape"]


def test_the_scorer_on_answers_whose_scores_are_known(small_world, tmp_path):
    """Truthful answers score perfectly; adding every absent partner gives the hand-counted CHAIR/Hal/Cog."""
    world, out, _ = small_world
    bench = out / "bench" / "amber"
    test = scenes(world, "test")
    ann = amber.load_annotations(bench)
    queries = {q["id"]: q for q in amber.load_queries(bench)}

    def answers(describe):
        rows = [{"id": i, "response": describe(s)} for i, s in enumerate(test, 1)]
        for a in ann.values():
            if a["type"] != "generative":
                rows.append({"id": a["id"], "response": "Yes" if a["truth"] == "yes" else "No"})
        return rows

    perfect = amber.score(answers(lambda s: caption(s.objects)), bench, similarity="exact", download_nltk=False)
    assert perfect["generative"] == {"CHAIR": 0.0, "Cover": 100.0, "Hal": 0.0, "Cog": 0.0}
    assert perfect["discriminative"]["overall"]["Accuracy"] == 100.0

    def with_partners(s):
        return caption(s.objects)[:-1] + "".join(f" and a {c}" for c in s.absent_partners()) + "."

    got = amber.score(answers(with_partners), bench, similarity="exact", download_nltk=False)["generative"]
    hallucinated = sum(len(s.absent_partners()) for s in test)
    mentions = sum(len(s.classes) + len(s.absent_partners()) for s in test)
    assert hallucinated > 0
    assert got["CHAIR"] == pytest.approx(100 * hallucinated / mentions, abs=0.1)
    assert got["Hal"] == pytest.approx(100 * sum(bool(s.absent_partners()) for s in test) / len(test), abs=0.1)
    assert got["Cog"] == pytest.approx(100.0, abs=0.1) and got["Cover"] == pytest.approx(100.0, abs=0.1)
    assert json.dumps(queries[1]) and queries[1]["query"] == DESCRIBE
