"""The world's lists through the pipeline runners: with the oracle the hidden region is the object's visible mask;
with world.detector: pipeline the embedded default's (tiny, random) detector and segmenter run instead."""

import json

import numpy as np
import pytest
from PIL import Image

from lpoi.config import WorldModelParams, load_params
from lpoi.io import read_jsonl
from lpoi.world.dataset import scenes
from lpoi.world.lists import build_world_lists, list_metrics

TINY = WorldModelParams(image_size=16, patch_size=8, vision_hidden=16, vision_layers=1, text_hidden=32,
                        text_layers=1, heads=2, vocab_size=400)


@pytest.fixture(scope="module")
def verifier(tmp_path_factory):
    from lpoi.world.model import build_untrained

    model, proc = build_untrained(TINY, seed=0)
    out = tmp_path_factory.mktemp("base")
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return str(out)


def _params(repo, world, detector):
    p = load_params(repo / "params.yaml")
    return p.model_copy(update={"world": world.model_copy(update={"detector": detector})})


def test_oracle_lists_hide_the_first_named_object(small_world, verifier, tmp_path, request):
    world, data, _ = small_world
    p = _params(request.config.rootpath, world, "oracle")
    stats = build_world_lists(p, data, verifier, tmp_path / "lists", progress=False)
    m = list_metrics(stats, "oracle")
    assert m["detector"] == "oracle" and m["pairs"]["lists"] == world.n_pairs and m["test"]["lists"] == world.n_test
    assert m["pairs"]["mask_fallback"] == 0
    truth = {s.id: s for s in scenes(world, "pairs")}
    root = tmp_path / "lists" / "pairs" / "lists"
    for row in read_jsonl(root / "lists.jsonl"):
        s = truth[row["id"]]
        obj = next(o for o in s.objects if f"{o.colour} {o.cls}" == row["object"]["phrase"])
        assert row["object"]["box"] == [float(v) for v in obj.box] and row["visibility"][-1] == 0.0
        first, last = (np.asarray(Image.open(root / row["images"][k]).convert("RGB")) for k in (0, -1))
        assert (first == np.asarray(s.image)).all()
        assert (last[obj.mask] == 0).all() and (last[~obj.mask] == first[~obj.mask]).all()  # only the object hidden
        assert row["object"]["mask_area"] == pytest.approx(obj.mask.mean())


def test_pipeline_detector_option_runs_the_default_models(small_world, verifier, tmp_path, request):
    world, data, _ = small_world
    p = _params(request.config.rootpath, world, "pipeline")
    assert (p.detect.backend, p.segment.backend, p.lists.mask) == ("groundingdino", "segment-anything", "sam")
    stats = build_world_lists(p, data, verifier, tmp_path / "lists", progress=False)
    for split in ("pairs", "test"):
        # the configured implementations ran, loaded as the detect and segment stages load them
        assert stats[split]["detect"]["backend"] == "groundingdino"
        assert stats[split]["segment"]["backend"] == "segment-anything"
        d = stats[split]["detect"]
        assert d["samples"] == d["written"] + d["rejected"] > 0  # every pair is a detection or a recorded reject
        lists = tmp_path / "lists" / split / "lists" / "lists.jsonl"
        rows = list(read_jsonl(lists))
        assert len(rows) == stats[split]["lists"]["output"]["lists"]
        for r in rows:
            assert len(r["images"]) == 5
        for f in (tmp_path / "lists" / split).glob("*/rejects.jsonl"):
            assert all(json.loads(line)["reason"] for line in f.read_text().splitlines() if line.strip())
