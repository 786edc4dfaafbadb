"""The world's lists end to end: manifests the trainer loads, one per split and rejection mode, sharing their images;
yes/no pairs; k-of-K subsets; the params the two data stages read are exactly the ones dvc.yaml declares."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from world_helpers import ParamReads, covered

from lpoi.config import Params, WorldListsParams
from lpoi.io import read_json, read_jsonl
from lpoi.train.data import load_lists
from lpoi.world.dataset import DESCRIBE, build_world, existence_question, scenes
from lpoi.world.lists import build_world_lists, manifest_path, subset_indices, visibilities

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(small_world, tmp_path_factory):
    world, data, _ = small_world
    out = tmp_path_factory.mktemp("lists") / "world_lists"
    return world, data, out, build_world_lists(world, data, out)


def test_manifests_load_and_share_their_images(built):
    world, data, out, metrics = built
    for split in ("pairs", "test"):
        rows = {m: list(read_jsonl(manifest_path(out, split, m))) for m in ("insert", "substitute")}
        samples = {m: load_lists(manifest_path(out, split, m)) for m in rows}
        assert len(samples["insert"]) == len(rows["insert"]) == metrics[split]["rows"]
        pairs = {p["id"]: p for p in read_json(data / split / "pairs.json")}
        for a, b in zip(rows["insert"], rows["substitute"]):
            assert {k: v for k, v in a.items() if k != "rejected"} == {k: v for k, v in b.items() if k != "rejected"}
            assert len(a["images"]) == world.lists.k and a["visibility"] == visibilities(world.lists.k)
            if a["kind"] == "describe":
                assert a["prompt"] == DESCRIBE and a["chosen"] == pairs[a["id"]]["chosen"]
                assert (a["rejected"], b["rejected"]) == (pairs[a["id"]]["rejected_insert"],
                                                          pairs[a["id"]]["rejected_substitute"])
                assert a["check"]["equals_without"] and a["check"]["object_pixels_left"] == 0
            else:
                assert a["rejected"] == b["rejected"]
        ids = [r["id"] for r in rows["insert"]]
        assert len(set(ids)) == len(ids)
    assert metrics["test"]["kinds"] == {"describe": world.n_test}  # held-out lists: descriptions only
    assert metrics["pairs"]["hide"]["no_object_pixels_left"] == 1.0 and metrics["pairs"]["hide"]["monotone"] == 1.0


def test_list_images_erase_the_target(built):
    world, data, out, _ = built
    truth = {s.id: s for s in scenes(world, "pairs")}
    for row in read_jsonl(manifest_path(out, "pairs", "insert")):
        s = truth[row["id"].removesuffix("-yes").removesuffix("-no")]
        first, last = (np.asarray(Image.open(out / "pairs" / row["images"][k])) for k in (0, -1))
        assert (first == np.asarray(s.image)).all()
        if row["kind"] == "no":
            assert row["target"] in s.absent_partners() and (last != first).any()
        else:
            obj = next(o for o in s.objects if o.cls == row["target"])
            assert not (last[~obj.mask] != first[~obj.mask]).any() and (last[obj.mask] != first[obj.mask]).any()


def test_yes_no_pairs(built):
    world, _, out, metrics = built
    rows = {r["id"]: r for r in read_jsonl(manifest_path(out, "pairs", "substitute"))}
    by_scene = {s.id: s for s in scenes(world, "pairs")}
    for sid, s in by_scene.items():
        d, yes = rows[sid], rows[f"{sid}-yes"]
        assert (yes["prompt"], yes["chosen"], yes["rejected"]) == (existence_question(d["target"]), "Yes", "No")
        assert yes["images"] == d["images"] and d["target"] in s.classes
        no = rows.get(f"{sid}-no")
        assert (no is not None) == bool(s.absent_partners())
        if no:
            assert (no["prompt"], no["chosen"], no["rejected"]) == (existence_question(no["target"]), "No", "Yes")
            assert no["images"][0] == d["images"][0] and no["images"][1:] != d["images"][1:]
    kinds = metrics["pairs"]["kinds"]
    assert kinds["describe"] == kinds["yes"] == world.n_pairs and kinds["no"] == sum(
        bool(s.absent_partners()) for s in by_scene.values())


def test_no_yes_no_and_other_fills(small_world, tmp_path):
    world, data, _ = small_world
    w = world.model_copy(update={"lists": WorldListsParams(k=3, fill="black", yes_no=False)})
    m = build_world_lists(w, data, tmp_path / "l")
    assert m["pairs"]["kinds"] == {"describe": world.n_pairs} and m["k"] == 3
    assert m["pairs"]["hide"]["silhouette_left"] == 1.0 and m["pairs"]["hide"]["equals_without"] == 0.0


def test_subset_manifests(built):
    """The pairs split's k-of-K manifests (the study's shorter lists) hold the same rows with k of the images."""
    _, _, out, _ = built
    src = manifest_path(out, "pairs", "insert")
    assert subset_indices(5, 3) == [0, 2, 4] and subset_indices(5, 2) == [0, 4] and subset_indices(5, 5) == list(range(5))
    full = list(read_jsonl(src))
    for k, idx in ((3, (0, 2, 4)), (2, (0, 4))):
        dst = manifest_path(out, "pairs", "insert", k)
        sub = list(read_jsonl(dst))
        assert [r["id"] for r in sub] == [r["id"] for r in full]
        for a, b in zip(full, sub):
            assert b["visibility"] == [a["visibility"][i] for i in idx] and b["images"] == [a["images"][i] for i in idx]
        assert len(load_lists(dst)) == len(full)
    assert not manifest_path(out, "test", "insert", 3).exists()
    with pytest.raises(ValueError, match="cannot take 6 of 5"):
        subset_indices(5, 6)

def test_data_stages_read_what_dvc_yaml_declares(world_params, tmp_path):
    p = Params(world=world_params())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    reads = {"world_data": {"world.name"}, "world_lists": {"world.name"}}  # the stage scripts' own reads
    build_world(ParamReads(p, reads["world_data"]).world, tmp_path / "w")
    build_world_lists(ParamReads(p, reads["world_lists"]).world, tmp_path / "w", tmp_path / "l")
    for stage, keys in reads.items():
        assert covered(keys, stages[stage]["params"]) == (set(), set()), stage
    assert "models/world" not in stages["world_lists"]["deps"] and "data/world" in stages["world_lists"]["deps"]


def test_same_world_same_list_bytes(built, tmp_path):
    import hashlib

    world, data, _, _ = built
    out = tmp_path / "first"  # (the module's folder gains a subset manifest in another test)
    build_world_lists(world, data, out)
    build_world_lists(world, data, tmp_path / "again")

    def digest(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    assert digest(out) == digest(tmp_path / "again")
    other = build_world_lists(world.model_copy(update={"seed": 5}), data, tmp_path / "seed5")  # another sweep
    assert other["pairs"]["rows"] == built[3]["pairs"]["rows"]
    assert digest(tmp_path / "seed5") != digest(out)
