"""The card's packages beside transformers' ports (issue 13): the same random weights in both implementations,
moved across by our key mapping, give the same masks and boxes on the bundled sample images.

Tolerances (measured on this machine, then given a margin):

* same input tensors -> SAM low-res mask logits within 2e-5 and IoU predictions within 1e-5; Grounding DINO
  token probabilities within 2e-5 and normalised boxes within 1e-6 (float32 summation order only);
* each implementation's *own* preprocessing (segment-anything's ResizeLongestSide vs SamProcessor;
  groundingdino's RandomResize/ToTensor vs GroundingDinoImageProcessor): the resampled pixels differ by up to
  0.0175 after normalisation (both), so SAM masks may differ in a pixel at the edge — at most 0.1 % of an
  image's pixels per mask, IoU >= 0.98 (measured: at most 1 pixel, IoU >= 0.989 on masks of ~100 px) — and
  Grounding DINO gives the same detected phrases at the stage's thresholds with boxes within 0.5 px and
  scores within 5e-3 (measured: 0.01 px, token probabilities 1.3e-3).

Weights are the packages' own seeded initialisation plus seeded noise (std 0.02) on every tensor: the
original init leaves Grounding DINO's box head at zero (every box would be an anchor, equal by construction)
and SAM's positional embedding at zero.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lpoi.listgen.backends import (
    GroundingDinoDetector,
    SegmentAnythingSegmenter,
    TransformersDetector,
    TransformersSegmenter,
    open_detector,
    open_segmenter,
)
from lpoi.models import groundingdino as gd
from lpoi.models import resolve
from lpoi.models import sam as sm
from lpoi.models.keymap import UnsafeCheckpoint, read_state_dict

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"


def _perturb(model, seed: int, std: float = 0.02):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def _sample(n: int | None = None):
    """(rows, images): the bundled sample's pairs with their real images, plus odd-sized copies (resampling)."""
    pairs = json.loads((SAMPLE / "pairs.json").read_text())
    rows = [dict(p, image_path=str(SAMPLE / "images" / p["img_path"])) for p in pairs
            if (SAMPLE / "images" / p["img_path"]).is_file()][:n]
    images = [Image.open(r["image_path"]).convert("RGB") for r in rows]
    odd = [(im.resize((111 + 7 * k, 77 + 5 * k), Image.BILINEAR)) for k, im in enumerate(images[:4])]
    return rows + rows[:4], images + odd


@pytest.fixture(scope="module")
def sample():
    return _sample()


@pytest.fixture(scope="module")
def sam_pair():
    """(original Sam, SamModel, SamProcessor, spec) with the same perturbed tiny weights."""
    from transformers import SamModel

    orig, spec = sm.load_original(resolve("tiny/segment-anything"))
    _perturb(orig, 1)
    port = SamModel(sm.hf_config(spec)).eval()
    port.load_state_dict(sm.to_hf(orig.state_dict(), spec, target_keys=port.state_dict().keys()), strict=True)
    return orig, port, sm.hf_processor(spec), spec


@pytest.fixture(scope="module")
def gd_pair():
    """(Original, GroundingDinoForObjectDetection, processor) with the same perturbed tiny weights."""
    original = gd.load_original(resolve("tiny/groundingdino-py"))
    _perturb(original.model, 2)
    port, proc = gd.load_port(resolve("tiny/groundingdino-py"))
    missing, unexpected = port.load_state_dict(gd.to_hf(original.model.state_dict(), port.state_dict().keys()),
                                               strict=False)
    assert not unexpected and all(gd._PORT_UNUSED.search(k) for k in missing)
    return original, port, proc


# ---------------------------------------------------------------------------------------------- key mappings


def test_sam_mapping_is_complete_and_round_trips(sam_pair):
    orig, port, _, spec = sam_pair
    back = sm.from_hf(port.state_dict(), spec)
    assert set(back) == set(orig.state_dict())
    assert all(torch.equal(back[k], v) for k, v in orig.state_dict().items())
    broken = dict(orig.state_dict())
    broken.pop("mask_decoder.iou_token.weight")
    with pytest.raises(KeyError, match="mask_decoder.iou_token.weight"):
        sm.to_hf(broken, spec, target_keys=port.state_dict().keys())


def test_sam_variant_is_read_from_the_shapes():
    for name, spec in sm.VARIANTS.items():
        with torch.device("meta"):
            sd = sm.build_original(spec).state_dict()
        assert sm.spec_from_state_dict(sd) == spec, name
        with torch.device("meta"):  # and the port built from our config has exactly the mapped keys
            from transformers import SamModel

            keys = SamModel(sm.hf_config(spec)).state_dict().keys()
        sm.to_hf(sd, spec, target_keys=keys)
    with pytest.raises(ValueError, match="unknown SAM variant"):
        sm.spec_from_state_dict({"image_encoder.patch_embed.proj.weight": torch.zeros(5, 3, 16, 16)})


def test_groundingdino_mapping_is_complete_and_round_trips(gd_pair):
    original, port, _ = gd_pair
    sd = original.model.state_dict()
    back = gd.from_hf(port.state_dict(), sd.keys())
    kept = [k for k in sd if not gd._ORIG_UNUSED.search(k)]
    assert sorted(back) == sorted(kept) and all(torch.equal(back[k], sd[k]) for k in kept)
    broken = {k: v for k, v in sd.items() if "fusion_layers.0.gamma_v" not in k}
    with pytest.raises(KeyError, match="vision_param"):
        gd.to_hf(broken, port.state_dict().keys())


# ---------------------------------------------------------------------------------------------- SAM


def test_sam_same_inputs_same_logits(sam_pair, sample):
    orig, port, proc, spec = sam_pair
    _, images = sample
    boxes = [[5, 5, 60, 50], [30, 20, 120, 90]]
    with torch.no_grad():
        for im in images[:6]:
            p = sm.preprocess(spec, im, boxes)
            emb = orig.image_encoder(p.pixels[None])
            sparse, dense = orig.prompt_encoder(points=None, boxes=p.boxes, masks=None)
            low, iou = orig.mask_decoder(image_embeddings=emb, image_pe=orig.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=True)
            out = port(pixel_values=p.pixels[None], input_boxes=p.boxes[None], multimask_output=True)
            assert (out.pred_masks[0] - low).abs().max() < 2e-5
            assert (out.iou_scores[0] - iou).abs().max() < 1e-5


def test_sam_backends_agree_through_their_own_preprocessing(sam_pair, sample):
    orig, port, proc, spec = sam_pair
    rows, images = sample
    a, b = SegmentAnythingSegmenter(orig, spec), TransformersSegmenter(port, proc)
    rng = np.random.default_rng(0)
    boxes = []
    for im in images:
        w, h = im.size
        x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
        boxes.append([[0, 0, w, h], [x0, y0, x0 + w / 3, y0 + h / 3]] if len(boxes) % 5 else [])  # some empty
    ra, rb = a.segment(a.encode(rows, images, boxes)), b.segment(b.encode(rows, images, boxes))
    filled = 0
    for (ma, ia), (mb, ib), im, bs in zip(ra, rb, images, boxes):
        assert ma.shape == mb.shape == (len(bs), im.size[1], im.size[0]) and ma.dtype == bool
        assert np.abs(ia - ib).max(initial=0) < 1e-4
        for k in range(len(bs)):
            union = (ma[k] | mb[k]).sum()
            assert (ma[k] != mb[k]).mean() <= 1e-3 and (union == 0 or (ma[k] & mb[k]).sum() / union >= 0.98)
            filled += 0.005 < ma[k].mean() < 0.995
    assert filled >= len(images) // 2  # the masks are not trivially empty or full


# ---------------------------------------------------------------------------------------------- Grounding DINO


def _captions():
    return ["red car . dog .", "tree .", "circle . square . star .", "blue triangle .", "cat .", "red star . heart ."]


def test_groundingdino_same_inputs_same_outputs(gd_pair, sample):
    original, port, proc = gd_pair
    _, images = sample
    caps = _captions()
    inp = proc(images=images[:6], text=caps, padding="longest", return_tensors="pt")
    probs, boxes = gd.predict(original.model, inp["pixel_values"], ~inp["pixel_mask"].bool(), caps)
    with torch.no_grad():
        out = port(**inp)
    n = inp["input_ids"].shape[1]
    real = inp["attention_mask"].bool()[:, None, :n]
    diff = (probs[..., :n] - torch.sigmoid(out.logits[..., :n])).abs()
    assert diff.masked_select(real.expand_as(diff)).max() < 2e-5
    assert (probs[..., n:] == 0).all()  # padding columns of the original: -inf logits
    assert (boxes - out.pred_boxes).abs().max() < 1e-6
    assert boxes.std() > 0.05  # boxes vary (not the anchors of a zero box head)


def test_groundingdino_batches_equal_one_by_one_only_with_the_mask_fix(gd_pair, sample):
    original, _, proc = gd_pair
    _, images = sample
    caps = _captions()[:4]
    pix, mask = gd.preprocess(original.spec, images[:4])
    batched = gd.predict(original.model, pix, mask, caps)[0]
    for j in range(4):
        single = gd.predict(original.model, pix[j:j + 1], mask[j:j + 1], caps[j:j + 1])[0]
        assert (batched[j] - single[0]).abs().max() < 2e-5
    unfixed = copy.deepcopy(original.model)
    for layer in unfixed.transformer.encoder.text_layers:
        layer._forward_pre_hooks.clear()
    assert (gd.predict(unfixed, pix, mask, caps)[0] - batched).abs().max() > 1e-3  # upstream mixes the masks


def test_groundingdino_backends_agree_through_their_own_preprocessing(gd_pair, sample):
    from lpoi.listgen.objects import extract_candidates

    original, port, proc = gd_pair
    rows, images = _sample(10)  # 10 sample images + 4 odd-sized copies
    a, b = GroundingDinoDetector(original), TransformersDetector(port, proc)
    phrases = [[c["phrase"] for c in extract_candidates(r["prompt"], r["chosen"], max_candidates=8)] for r in rows]
    assert a.prompt_chunks(["dog"] * 40) == b.prompt_chunks(["dog"] * 40)
    ea, eb = a.encode(rows, images, phrases), b.encode(rows, images, phrases)
    assert ea.spans == eb.spans and ea.truncated == eb.truncated
    for thresholds in ((0.35, 0.25), (0.0, 0.0)):
        da, db = a.detect(ea, *thresholds), b.detect(eb, *thresholds)
        assert sum(map(len, da)) >= len(images) // 2
        for x, y, im in zip(da, db, images):
            assert [d["index"] for d in x] == [d["index"] for d in y]
            for u, v in zip(x, y):
                assert max(abs(p - q) for p, q in zip(u["box"], v["box"])) <= 0.5
                assert abs(u["score"] - v["score"]) < 5e-3 and abs(u["box_score"] - v["box_score"]) < 5e-3
                x0, y0, x1, y1 = u["box"]
                assert 0 <= x0 <= x1 <= im.size[0] and 0 <= y0 <= y1 <= im.size[1]


# ---------------------------------------------------------------------------------------------- loading


def test_pickle_with_an_object_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "sam_vit_b_evil.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1), "x": Evil()}, bad)
    with pytest.raises(UnsafeCheckpoint, match="refused to load"):
        read_state_dict(bad)
    with pytest.raises(UnsafeCheckpoint):
        open_segmenter("segment-anything", str(bad))
    assert not marker.exists()
    plain = tmp_path / "extra.pth"
    torch.save({"w": torch.zeros(2), "step": 3}, plain)  # weights_only allows ints; a state dict must not hold them
    with pytest.raises(UnsafeCheckpoint, match="not tensors"):
        read_state_dict(plain)


def test_official_checkpoint_files_load_with_weights_only(tmp_path, monkeypatch, sample):
    """``.pth`` files as Meta and IDEA ship them (a bare state dict; ``{"model": ...}`` with ``module.``
    prefixes), read with weights_only and the variant taken from the shapes (tiny sizes registered here)."""
    rows, images = sample
    card = Path(resolve("tiny/segment-anything"))
    spec = sm.SamSpec.from_json(json.loads((card / "card.json").read_text())["spec"])
    monkeypatch.setitem(sm.VARIANTS, "tiny", spec)
    torch.save(read_state_dict(card / "model.safetensors"), tmp_path / "sam.pth")
    from_pth = open_segmenter("segment-anything", str(tmp_path / "sam.pth"))
    from_card = open_segmenter("segment-anything", "tiny/segment-anything")
    boxes = [[[4, 4, 50, 40]]] * 2
    for (m1, i1), (m2, i2) in zip(from_pth.segment(from_pth.encode(rows[:2], images[:2], boxes)),
                                  from_card.segment(from_card.encode(rows[:2], images[:2], boxes))):
        assert np.array_equal(m1, m2) and np.array_equal(i1, i2)

    gcard = Path(resolve("tiny/groundingdino-py"))
    gspec = gd.GDinoSpec.from_json(json.loads((gcard / "card.json").read_text())["spec"])
    monkeypatch.setitem(gd.VARIANTS, "tiny", dataclasses.replace(gspec, text_encoder=str(gcard / "text_encoder")))
    sd = read_state_dict(gcard / "model.safetensors")
    torch.save({"model": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, tmp_path / "gd.pth")
    det = open_detector("groundingdino", str(tmp_path / "gd.pth"))
    ref = open_detector("groundingdino", "tiny/groundingdino-py")
    ph = [["red car", "dog"], ["tree"]]
    assert det.detect(det.encode(rows[:2], images[:2], ph), 0.0, 0.0) == \
        ref.detect(ref.encode(rows[:2], images[:2], ph), 0.0, 0.0)


def test_transformers_checkpoints_load_into_the_originals(gd_pair, sam_pair, sample, tmp_path):
    """The other direction through the loaders: a ``save_pretrained`` folder of each port (as on the hub:
    ``IDEA-Research/grounding-dino-tiny``, ``facebook/sam-vit-base``) runs in the original package."""
    rows, images = sample
    original, port, proc = gd_pair
    port.save_pretrained(tmp_path / "gd")
    proc.save_pretrained(tmp_path / "gd")
    det = open_detector("groundingdino", str(tmp_path / "gd"))
    assert det.original.spec == dataclasses.replace(original.spec, text_encoder="bert-base-uncased")  # tokenizer: the folder's
    ph = [["red car", "dog"], ["tree", "house"], ["ball"]]
    ref = GroundingDinoDetector(original)
    assert det.detect(det.encode(rows[:3], images[:3], ph), 0.0, 0.0) == \
        ref.detect(ref.encode(rows[:3], images[:3], ph), 0.0, 0.0)
    orig, sport, sproc, spec = sam_pair
    sport.save_pretrained(tmp_path / "sam")
    seg = open_segmenter("segment-anything", str(tmp_path / "sam"))
    boxes = [[[4, 4, 50, 40], [20, 10, 120, 90]]] * 3
    ref = SegmentAnythingSegmenter(orig, spec)
    for (m1, i1), (m2, i2) in zip(seg.segment(seg.encode(rows[:3], images[:3], boxes)),
                                  ref.segment(ref.encode(rows[:3], images[:3], boxes))):
        assert np.array_equal(m1, m2) and np.abs(i1 - i2).max() < 1e-6


def test_unknown_backend_and_wrong_weights_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown detect backend 'yolo'; known: groundingdino, transformers"):
        open_detector("yolo", "tiny/groundingdino-py")
    with pytest.raises(ValueError, match="not a Grounding DINO state dict"):
        open_detector("groundingdino", str(Path(resolve("tiny/segment-anything")) / "model.safetensors"))
    with pytest.raises(ValueError, match="hidden_dim 256"):  # the port's tiny model is narrower than 256
        open_detector("groundingdino", "tiny/grounding-dino")


def test_tiny_card_models_are_seeded_and_rebuilt_identically(tmp_path, monkeypatch):
    from lpoi.models.tiny_card import build_tiny_sam

    for k in (0, 1):
        (tmp_path / f"s{k}").mkdir()
        build_tiny_sam(tmp_path / f"s{k}", seed=0)
    (tmp_path / "s2").mkdir()
    build_tiny_sam(tmp_path / "s2", seed=1)
    a, b, c = (read_state_dict(tmp_path / f"s{k}" / "model.safetensors") for k in range(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_paper_preset_composes_the_papers_recipe():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lpoi.config import validate

    def comp(*o):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
            return validate(OmegaConf.to_container(compose(config_name="config", overrides=list(o)), resolve=True))

    paper = comp("model=idefics2-8b", "data=mdpo-10k", "bench=full", "listgen=paper")
    assert (paper.lists.mask, paper.lists.highlight, paper.lists.fill, paper.lists.size) == ("bbox", True, "black", 5)
    assert paper.verify.model == "HuggingFaceM4/idefics2-8b" and paper.verify.enabled and paper.detect.fallback
    assert paper.detect.model == "IDEA-Research/grounding-dino-tiny" and paper.detect.backend == "groundingdino"
    default = comp()
    assert (default.lists.mask, default.lists.highlight, default.verify.model) == ("sam", False, None)
    assert (default.detect.backend, default.segment.backend) == ("groundingdino", "segment-anything")
    assert comp("listgen=sam") == default


def test_tiny_card_cache_key_follows_the_builders_code():
    """The tiny cache key covers tiny_card.py and the two adapters that build the weights (so an edit rebuilds)."""
    import hashlib

    from lpoi.models import tiny, tiny_card

    here = Path(tiny_card.__file__).parent
    h = hashlib.sha256(b"".join((here / f).read_bytes() for f in ("tiny_card.py", "sam.py", "groundingdino.py")))
    assert tiny_card.card_source_digest() == h.hexdigest()[:8]
    assert tiny._source_digest().endswith(h.hexdigest()[:8])
    assert {"groundingdino-py", "segment-anything"} <= set(tiny.TINY_FAMILIES)


def test_an_uncached_hub_model_is_a_model_not_found_for_both_originals(monkeypatch):
    """Offline, a hub id missing from the cache ends in the one-line ModelNotFound (with the fix), for the
    original SAM as for the original Grounding DINO -- not in a raw OSError from transformers."""
    from lpoi.models import ModelNotFound

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for load, what in ((sm.load_original, "segmenter"), (gd.load_original, "detector")):
        with pytest.raises(ModelNotFound, match=f"cannot load {what}"):
            load("lpoi-tests/not-a-cached-model")
