"""SAM segmentation: best-of-multimask selection on hand-made tensors, one image embedding per image
(spied), agreement with transformers' plain per-image SAM call, bbox mode without SAM, empty-mask
fallback, and the stage runner's resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lpoi.listgen.interpolate import box_mask, load_mask
from lpoi.listgen.segment import mask_file, run_segment, segment_batch, segment_boxes
from lpoi.models.sam import select_best_masks
from lpoi.models import load_segmenter


@pytest.fixture(scope="module")
def sam():
    return load_segmenter("tiny/sam")


class EmbeddingSpy:
    """Counts calls of ``model.get_image_embeddings`` and the images each call encodes."""

    def __init__(self, model, monkeypatch):
        self.calls: list[int] = []
        orig = model.get_image_embeddings

        def spy(pixel_values, **kw):
            self.calls.append(int(pixel_values.shape[0]))
            return orig(pixel_values, **kw)

        monkeypatch.setattr(model, "get_image_embeddings", spy)


def _img(path, size, seed=0):
    w, h = size
    im = Image.new("RGB", size, (40 + 30 * seed, 90, 160))
    d = ImageDraw.Draw(im)
    d.rectangle([w // 6, h // 5, w // 2, h // 2], fill=(230, 20, 20))
    d.ellipse([w // 2, h // 3, w - 3, h - 3], fill=(20, 220, 60))
    im.save(path)
    return Image.open(path).convert("RGB")


# ---------------------------------------------------------------------------------------------- pure helper


def test_select_best_masks_by_hand():
    """Box 0: IoUs (0.1, 0.9, 0.5) -> proposal 1; box 1: (0.7, 0.7, 0.2) -> tie -> the first, proposal 0."""
    masks = np.zeros((2, 3, 2, 2), dtype=bool)
    masks[0, 1] = [[True, False], [False, False]]
    masks[1, 0] = [[False, True], [True, True]]
    masks[1, 1] = True
    iou = np.array([[0.1, 0.9, 0.5], [0.7, 0.7, 0.2]], dtype=np.float32)
    m, s = select_best_masks(masks, iou)
    assert isinstance(m, np.ndarray) and m.shape == (2, 2, 2)
    assert m[0].tolist() == [[True, False], [False, False]]
    assert m[1].tolist() == [[False, True], [True, True]]
    assert s.tolist() == pytest.approx([0.9, 0.7])
    mt, st = select_best_masks(torch.as_tensor(masks), torch.as_tensor(iou))
    assert torch.equal(mt, torch.as_tensor(masks)[[0, 1], [1, 0]]) and st.tolist() == pytest.approx([0.9, 0.7])
    with pytest.raises(ValueError):
        select_best_masks(masks, iou[:, :2])


# ---------------------------------------------------------------------------------------------- tiny SAM


def test_segment_boxes_shapes_and_one_embedding(sam, tmp_path, monkeypatch):
    model, proc = sam
    spy = EmbeddingSpy(model, monkeypatch)
    im = _img(tmp_path / "a.png", (120, 80))
    boxes = [[10, 10, 60, 40], [50, 20, 117, 77], [0, 0, 120, 80]]
    masks, iou = segment_boxes(model, proc, im, boxes)
    assert spy.calls == [1]  # three boxes, one image embedding
    assert masks.shape == (3, 80, 120) and masks.dtype == bool
    assert iou.shape == (3,) and np.isfinite(iou).all()


def test_segment_batch_matches_plain_sam_call(sam, tmp_path, monkeypatch):
    """Batched (one encoder call for 2 images, padded boxes) == transformers' documented per-image call
    ``model(**processor(image, input_boxes))`` + ``post_process_masks`` + argmax of the predicted IoU."""
    model, proc = sam
    ims = [_img(tmp_path / "a.png", (120, 80), 0), _img(tmp_path / "b.png", (70, 110), 1),
           _img(tmp_path / "c.png", (90, 60), 2)]
    boxes = [[[10, 10, 60, 40], [50, 20, 117, 77]], [[5, 30, 60, 100]], []]
    spy = EmbeddingSpy(model, monkeypatch)
    got = segment_batch(model, proc, ims, boxes)
    assert spy.calls == [2]  # one call, the two images with boxes; the box-less image is not encoded
    assert got[2][0].shape == (0, 60, 90)
    for im, bs, (m, s) in zip(ims[:2], boxes[:2], got[:2]):
        inputs = proc(images=im, input_boxes=[bs], return_tensors="pt")
        with torch.inference_mode():
            out = model(**inputs, multimask_output=True)
        full = proc.image_processor.post_process_masks(out.pred_masks, inputs["original_sizes"],
                                                       inputs["reshaped_input_sizes"])[0]  # (N, 3, H, W)
        best = out.iou_scores[0].argmax(dim=-1)
        ref = full[torch.arange(len(bs)), best].numpy()
        assert m.shape == ref.shape
        assert (m != ref).mean() < 1e-3  # identical up to float noise at the 0-logit boundary
        np.testing.assert_allclose(s, out.iou_scores[0].max(dim=-1).values.numpy(), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------- the stage


def _detect_rows(tmp_path, n=5):
    """Hand-written detect.jsonl rows with real images: candidate 1 of each sample is undetected."""
    rows = []
    for k in range(n):
        size = [(120, 80), (70, 110), (90, 60), (100, 75), (64, 96)][k % 5]
        p = tmp_path / "images" / f"im{k}.png"
        p.parent.mkdir(exist_ok=True)
        _img(p, size, k)
        w, h = size
        cands = [
            {"phrase": "red box", "lemma": "box", "source": "chosen_first", "box": [w / 6, h / 5, w / 2, h / 2],
             "score": 0.9, "box_score": 0.9},
            {"phrase": "sky", "lemma": "sky", "source": "question", "box": None, "score": None, "box_score": None},
            {"phrase": "ball", "lemma": "ball", "source": "chosen_rest", "box": [w / 2, h / 3, w - 3.5, h - 3.2],
             "score": 0.8, "box_score": 0.85},
            {"phrase": "tree", "lemma": "tree", "source": "chosen_rest", "box": [1.5, 2.0, 20.0, 30.0],
             "score": 0.7, "box_score": 0.7},
        ]
        rows.append({"id": f"s{k}", "image_path": str(p), "width": w, "height": h, "candidates": cands,
                     "object": {**cands[0], "index": 0}, "truncated": 0})
    path = tmp_path / "detect.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _run(sam, det_path, out_dir, **kw):
    model, proc = sam
    kw.setdefault("batch_size", 2)
    kw.setdefault("max_masks_per_sample", 2)
    return run_segment(det_path, out_dir / "segment.jsonl", out_dir / "masks", model_name="unused", model=model,
                       processor=proc, progress=False, **kw)


def test_run_segment_sam_rows_masks_and_embeddings(sam, tmp_path, monkeypatch):
    det_path = _detect_rows(tmp_path)
    spy = EmbeddingSpy(sam[0], monkeypatch)
    stats = _run(sam, det_path, tmp_path / "o")
    assert spy.calls == [2, 2, 1]  # 5 samples in blocks of 2: one embedding per image
    out = tmp_path / "o"
    rows = _rows(out / "segment.jsonl")
    assert [r["id"] for r in rows] == [f"s{k}" for k in range(5)]
    for r in rows:
        c = r["candidates"]
        # the first 2 *detected* candidates (0 and 2) get masks; 1 is undetected, 3 is past the limit
        assert [x["mask"] is not None for x in c] == [True, False, True, False]
        assert r["mask_kind"] == "sam" and r["mask"] in ("sam", "bbox")
        for j in (0, 2):
            m = load_mask(out / c[j]["mask"])
            assert (out / c[j]["mask"]) == mask_file(out / "masks", r["id"], j)
            assert m.shape == (r["height"], r["width"])
            assert c[j]["mask_area"] == pytest.approx(m.sum() / m.size, abs=1e-6)
            assert np.isfinite(c[j]["mask_iou"])
            if c[j].get("mask_fallback"):
                assert (m == box_mask(c[j]["box"], r["height"], r["width"])).all()
    assert stats["masks"] == 10 and stats["written"] == 5


def test_run_segment_bbox_mode_never_loads_sam(tmp_path, monkeypatch):
    import lpoi.models

    def no_sam(*a, **k):
        raise AssertionError("bbox mode must not load the segmenter")

    monkeypatch.setattr(lpoi.models, "load_segmenter", no_sam)
    det_path = _detect_rows(tmp_path, 3)
    out = tmp_path / "bb"
    run_segment(det_path, out / "segment.jsonl", out / "masks", model_name="no/such-model", mask_kind="bbox",
                max_masks_per_sample=3, progress=False)
    for r in _rows(out / "segment.jsonl"):
        assert r["mask"] == "bbox"
        for c in r["candidates"]:
            if c["box"] is None:
                assert c["mask"] is None
                continue
            m = load_mask(out / c["mask"])
            assert (m == box_mask(c["box"], r["height"], r["width"])).all()
            assert c["mask_iou"] is None and "mask_fallback" not in c
            # hand count: box [1.5, 2, 20, 30] touches columns 1..19 and rows 2..29 -> 19 * 28 pixels
            if c["phrase"] == "tree":
                assert m.sum() == 19 * 28


def test_empty_sam_mask_falls_back_to_box_flagged(sam, tmp_path, monkeypatch):
    import lpoi.listgen.segment as seg

    def empty(model, processor, enc):  # a SAM that finds nothing (weak/random weights do this)
        return [(np.zeros((n, h, w), bool), np.zeros(n, np.float32)) for (w, h), n in zip(enc["sizes"], enc["counts"])]

    monkeypatch.setattr(seg, "segment_encoded", empty)
    det_path = _detect_rows(tmp_path, 2)
    stats = _run(sam, det_path, tmp_path / "e")
    for r in _rows(tmp_path / "e" / "segment.jsonl"):
        assert r["mask"] == "bbox"
        for c in r["candidates"]:
            if c["mask"]:
                assert c["mask_fallback"] == "bbox"
                assert (load_mask(tmp_path / "e" / c["mask"]) == box_mask(c["box"], r["height"], r["width"])).all()
    assert stats["mask_fallback"] == 4


def test_run_segment_image_reject_and_resume_identical(sam, tmp_path):
    det_path = _detect_rows(tmp_path, 5)
    _run(sam, det_path, tmp_path / "full", rejects_path=tmp_path / "full" / "rej.jsonl")
    part = tmp_path / "part"
    _run(sam, det_path, part, limit=3, rejects_path=part / "rej.jsonl")
    with open(part / "segment.jsonl", "a") as f:
        f.write('{"id": "s3", "cand')  # killed mid-line
    _run(sam, det_path, part, rejects_path=part / "rej.jsonl")
    assert (part / "segment.jsonl").read_bytes() == (tmp_path / "full" / "segment.jsonl").read_bytes()
    for p in sorted((tmp_path / "full" / "masks").iterdir()):
        assert (part / "masks" / p.name).read_bytes() == p.read_bytes()
    (tmp_path / "images" / "im4.png").unlink()
    _run(sam, det_path, tmp_path / "r", rejects_path=tmp_path / "r" / "rej.jsonl")
    assert [(r["id"], r["reason"]) for r in _rows(tmp_path / "r" / "rej.jsonl")] == [("s4", "image_missing")]
    with pytest.raises(RuntimeError, match="no rejects file"):
        _run(sam, det_path, tmp_path / "r2")
