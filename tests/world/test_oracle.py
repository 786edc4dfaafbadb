"""The oracle backend returns the generator's boxes and masks, directly and through the detect/segment runners."""

import json

import pytest
from PIL import Image

from lpoi.io import read_jsonl
from lpoi.world.dataset import scenes
from lpoi.world.oracle import OracleDetector, OracleSegmenter, load_annotations, phrase_class


def _scene_and_row(world, out, split="pairs", i=0):
    ann = load_annotations(out / split / "scenes.jsonl")
    scene = scenes(world, split, i + 1)[i]  # regenerated: the reference the annotation must match
    return ann, scene, {"id": scene.id}


def test_phrase_class():
    assert phrase_class("red circle") == "circle"
    assert phrase_class("Crosses") == "cross" and phrase_class("two stars") == "star"
    assert phrase_class("circle shape") is None and phrase_class("") is None and phrase_class("dog") is None


def test_detector_gives_the_generators_boxes(small_world):
    world, out, _ = small_world
    ann, scene, row = _scene_and_row(world, out, i=3)
    phrases = [f"{o.colour} {o.cls}" for o in scene.objects][::-1] + ["dog", f"{scene.objects[0].cls}s"]
    det = OracleDetector(ann)
    got = det.detect(det.encode([row], [scene.image], [phrases]), 0.35, 0.25)[0]
    n = len(scene.objects)
    want = [{"index": j, "box": [float(v) for v in o.box], "score": 1.0, "box_score": 1.0}
            for j, o in enumerate(scene.objects[::-1])]
    want.append({"index": n + 1, "box": [float(v) for v in scene.objects[0].box], "score": 1.0, "box_score": 1.0})
    assert got == want  # the absent "dog" (index n) is not detected


def test_segmenter_gives_the_generators_visible_masks(small_world):
    world, out, _ = small_world
    ann, scene, row = _scene_and_row(world, out, i=5)
    seg = OracleSegmenter(ann)
    x, y = next((x, y) for y in range(64) for x in range(64)
                if not any(o.box[0] <= x < o.box[2] and o.box[1] <= y < o.box[3] for o in scene.objects))
    boxes = [list(o.box) for o in scene.objects] + [[x, y, x + 1, y + 1]]  # the last one overlaps no object's box
    (masks, iou), = seg.segment(seg.encode([row], [scene.image], [boxes]))
    assert masks.shape == (len(boxes), 64, 64) and masks.dtype == bool
    for k, o in enumerate(scene.objects):
        assert (masks[k] == o.mask).all() and iou[k] == 1.0
    assert not masks[-1].any() and iou[-1] == 0.0  # empty: the segment stage falls back to the box, flagged


def test_oracle_refuses_foreign_rows_and_images(small_world):
    world, out, _ = small_world
    ann, scene, row = _scene_and_row(world, out)
    det = OracleDetector(ann)
    with pytest.raises(KeyError, match="no annotation for sample 'nope'"):
        det.encode([{"id": "nope"}], [scene.image], [["circle"]])
    with pytest.raises(ValueError, match="not the generator's image"):
        det.encode([row], [Image.new("RGB", (32, 32))], [["circle"]])


def test_runners_with_the_oracle_backend(small_world, tmp_path):
    from lpoi.listgen.detect import run_detect
    from lpoi.listgen.interpolate import load_mask
    from lpoi.listgen.prepare import run_prepare
    from lpoi.listgen.segment import run_segment

    world, out, _ = small_world
    src = out / "pairs"
    run_prepare(src / "pairs.json", src, tmp_path / "prepared.jsonl", tmp_path / "prep_rejects.jsonl", 0.0)
    ann = load_annotations(src / "scenes.jsonl")
    with pytest.raises(ValueError, match="turn it off"):
        run_detect(tmp_path / "prepared.jsonl", tmp_path / "d.jsonl", tmp_path / "dr.jsonl", model_name="oracle",
                   backend=OracleDetector(ann), fallback=True, progress=False)
    stats = run_detect(tmp_path / "prepared.jsonl", tmp_path / "detect.jsonl", tmp_path / "det_rejects.jsonl",
                       model_name="oracle", backend=OracleDetector(ann), fallback=False, progress=False)
    assert stats["written"] == world.n_pairs and stats["rejected"] == 0
    run_segment(tmp_path / "detect.jsonl", tmp_path / "segment.jsonl", tmp_path / "masks", model_name="oracle",
                backend=OracleSegmenter(ann), rejects_path=tmp_path / "seg_rejects.jsonl", progress=False)
    truth = {s.id: s for s in scenes(world, "pairs")}
    for row in read_jsonl(tmp_path / "segment.jsonl"):
        s = truth[row["id"]]
        first = s.objects[0]  # the caption's first object is the paper's first candidate
        c = row["candidates"][0]
        assert c["phrase"] == f"{first.colour} {first.cls}" and c["box"] == [float(v) for v in first.box]
        masked = [c for c in row["candidates"] if c["mask"]]
        assert masked and row["mask"] == "sam"  # a segmentation mask, not the box fallback
        for c in masked:
            obj = next(o for o in s.objects if o.cls == phrase_class(c["phrase"]))
            assert (load_mask(tmp_path / c["mask"]) == obj.mask).all()
    assert json.loads((tmp_path / "segment.jsonl").read_text().splitlines()[0])["candidates"][0]["mask_iou"] == 1.0


def test_annotations_file_errors(tmp_path):
    p = tmp_path / "scenes.jsonl"
    p.write_text("")
    with pytest.raises(ValueError, match="no scenes"):
        load_annotations(p)
    p.write_text('{"id": "a"}\n{"id": "a"}\n')
    with pytest.raises(ValueError, match="appears twice"):
        load_annotations(p)
