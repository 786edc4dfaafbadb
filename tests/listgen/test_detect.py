"""Grounding DINO detection: prompt/token spans, the phrase->box assignment on hand-made tensors, the tiny
real model (shapes, thresholds, boxes inside the image, agreement with transformers' own post-processing),
and the resumable stage runner (fallback, rejects, resume after a kill)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image, ImageDraw

from lpoi.listgen.detect import (
    assign_boxes,
    build_prompt,
    chunk_phrases,
    detect_batch,
    phrase_token_spans,
    run_detect,
)
from lpoi.listgen.objects import COCO_CLASSES, extract_candidates
from lpoi.models import load_detector


@pytest.fixture(scope="module")
def det():
    return load_detector("tiny/grounding-dino")


def _scene(path, size, seed):
    """A real PNG: a coloured background with a rectangle and an ellipse."""
    w, h = size
    img = Image.new("RGB", size, (30 + 40 * seed % 200, 120, 200))
    d = ImageDraw.Draw(img)
    d.rectangle([w // 8, h // 6, w // 2, h // 2], fill=(220, 30, 30))
    d.ellipse([w // 2, h // 2, w - 4, h - 4], fill=(30, 200, 40))
    img.save(path)
    return img


TEXTS = [
    ("What is on the road?", "A red car is parked next to a tree. A dog sits nearby."),
    ("Is it sunny?", "Yes, it is."),  # no object noun at all -> the COCO fallback
    ("What animal is this?", "The image shows a brown horse in a field."),
    ("Describe the table.", "There is a cup on the table. A fork lies beside a plate."),
    ("What is in the sky?", "A kite flies over the house."),
    ("Where is the cat?", "The cat sleeps on a sofa near a lamp."),
]


@pytest.fixture()
def prepared(tmp_path):
    """Six prepared rows (the prepare stage's format) with real image files of different sizes."""
    rows = []
    for k, (q, a) in enumerate(TEXTS):
        # not square: the tiny detector (64 px short side) cannot take a square image alone (1x1 last level)
        size = [(120, 80), (64, 96), (100, 72), (90, 60), (80, 120), (128, 72)][k]
        p = tmp_path / "images" / f"im{k}.png"
        p.parent.mkdir(exist_ok=True)
        _scene(p, size, k)
        rows.append({"id": f"s{k}", "image": p.name, "image_path": str(p), "prompt": q, "chosen": a,
                     "rejected": "A blue bus.", "width": size[0], "height": size[1], "image_sha256": "0" * 64})
    path = tmp_path / "prepared.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------- pure parts


def test_build_prompt_and_token_spans(det):
    """'red car . dog .' tokenises as [CLS] red car . dog . [SEP] (offsets (0,3) (4,7) (8,9) (10,13) (14,15)),
    so 'red car' -> tokens 1, 2 and 'dog' -> token 4; the '.' tokens belong to no phrase."""
    prompt, spans = build_prompt(["Red  Car", "dog."])
    assert prompt == "red car . dog ."
    assert spans == [(0, 7), (10, 13)]
    enc = det[1].tokenizer(prompt, return_offsets_mapping=True)
    assert phrase_token_spans(enc["offset_mapping"], spans) == [[1, 2], [4]]


def test_assign_boxes_by_hand():
    """Q = 4 queries, T = 6 tokens: [CLS] red car . dog . ; phrases 'red car' = tokens [1, 2], 'dog' = [4],
    and an unprompted phrase with no tokens. box_threshold 0.35, text_threshold 0.25.

    q0: red car 0.9 (box score 0.9) but its box is 0.5 px wide -> degenerate, dropped.
    q1: red car max(0.3, 0.6) = 0.6, dog 0.2; box score 0.6.
    q2: dog 0.8, red car 0.1; box score 0.8.
    q3: dog 0.3, CLS 0.34; box score 0.34 <= 0.35 -> fails the box threshold although dog 0.3 > 0.25.
    => 'red car' -> q1 (score 0.6, box score 0.6); 'dog' -> q2 (0.8); the empty span -> None.
    With text_threshold 0.7: 'red car' -> None (0.6 is below), 'dog' -> q2.
    """
    p = torch.zeros(4, 6)
    p[0, 1] = 0.9
    p[1, 1], p[1, 2], p[1, 4] = 0.3, 0.6, 0.2
    p[2, 4], p[2, 1] = 0.8, 0.1
    p[3, 4], p[3, 0] = 0.3, 0.34
    boxes = torch.tensor([[0, 0, 0.5, 10], [1, 1, 5, 5], [2, 2, 8, 9], [0, 0, 3, 3]], dtype=torch.float32)
    spans = [[1, 2], [4], []]
    got = assign_boxes(p, boxes, spans, 0.35, 0.25)
    assert got[0]["query"] == 1 and math.isclose(got[0]["score"], 0.6, rel_tol=1e-6)
    assert math.isclose(got[0]["box_score"], 0.6, rel_tol=1e-6)
    assert got[1]["query"] == 2 and math.isclose(got[1]["score"], 0.8, rel_tol=1e-6)
    assert got[2] is None
    got = assign_boxes(p, boxes, spans, 0.35, 0.7)
    assert got[0] is None and got[1]["query"] == 2


def test_assign_boxes_ties_and_shared_boxes():
    """Two queries with the same phrase score -> the lower index; one box may serve two phrases."""
    p = torch.tensor([[0.0, 0.7, 0.7], [0.0, 0.7, 0.1]])
    boxes = torch.tensor([[0, 0, 4, 4], [1, 1, 6, 6]], dtype=torch.float32)
    got = assign_boxes(p, boxes, [[1], [2]], 0.35, 0.25)
    assert got[0]["query"] == 0 and got[1]["query"] == 0
    with pytest.raises(ValueError):
        assign_boxes(p, boxes[:1], [[1]], 0.3, 0.2)


def test_chunk_phrases_fit_max_text_len(det):
    """Each chunk tokenises (with [CLS]/[SEP] and the ' .' separators) to <= max_text_len tokens."""
    tok = det[1].tokenizer
    chunks = chunk_phrases(tok, list(COCO_CLASSES), 64)
    assert [c for ch in chunks for c in ch] == list(COCO_CLASSES)
    for ch in chunks:
        assert len(tok(build_prompt(ch)[0])["input_ids"]) <= 64
    assert len(chunks) > 1  # 80 classes cannot fit in the tiny model's 64 tokens
    with pytest.raises(ValueError, match="alone exceeds"):
        chunk_phrases(tok, ["xylophone " * 10], 16)


# ---------------------------------------------------------------------------------------------- tiny model


def _images(tmp_path):
    out = []
    for k, size in enumerate([(120, 80), (64, 96), (100, 72)]):
        p = tmp_path / f"d{k}.png"
        _scene(p, size, k)
        out.append(Image.open(p).convert("RGB"))
    return out


def test_detect_batch_shapes_thresholds_and_boxes(det, tmp_path):
    model, proc = det
    images = _images(tmp_path)
    phrases = [["red car", "dog", "tree"], ["cat"], []]
    res = detect_batch(model, proc, images, phrases)
    assert len(res) == 3 and res[2] == []  # no phrase -> no detection
    for im, ph, ds in zip(images, phrases, res):
        w, h = im.size
        assert [d["index"] for d in ds] == sorted({d["index"] for d in ds})  # at most one box per phrase
        for d in ds:
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert x1 - x0 >= 1 and y1 - y0 >= 1
            assert d["score"] > 0.25 and d["box_score"] > 0.35 and d["box_score"] >= d["score"]
            assert d["phrase"] == ph[d["index"]]
    none = detect_batch(model, proc, images, phrases, box_threshold=1.0)
    assert none == [[], [], []]  # a sigmoid never exceeds 1
    every = detect_batch(model, proc, images, phrases, box_threshold=0.0, text_threshold=0.0)
    assert [[d["index"] for d in ds] for ds in every] == [[0, 1, 2], [0], []]


def test_detect_batch_agrees_with_transformers_post_processing(det, tmp_path):
    """Cross-check with GroundingDinoProcessor.post_process_grounded_object_detection (same thresholds):
    each of our boxes must be one of the boxes it keeps, and its text label there must contain the phrase."""
    model, proc = det
    images = _images(tmp_path)[:1]
    phrases = ["red car", "dog", "tree"]
    ours = detect_batch(model, proc, images, [phrases], box_threshold=0.35, text_threshold=0.25)[0]
    assert ours, "the tiny model detects something at the default thresholds"
    inputs = proc(images=images, text="red car. dog. tree.", return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs)
    ref = proc.post_process_grounded_object_detection(out, inputs["input_ids"], threshold=0.35, text_threshold=0.25,
                                                      target_sizes=[images[0].size[::-1]])[0]
    for d in ours:
        matches = [lab for box, lab in zip(ref["boxes"].tolist(), ref["text_labels"])
                   if all(abs(a - min(max(b, 0), lim)) <= 0.011 for a, b, lim in
                          zip(d["box"], box, [images[0].width, images[0].height] * 2))]
        assert any(d["phrase"] in lab for lab in matches), (d, list(zip(ref["boxes"].tolist(), ref["text_labels"])))


def test_detect_batch_truncates_trailing_phrases(det, tmp_path):
    """Tiny model: max_text_len = 64. 'dog' is one token, so each phrase costs 2 ('dog', '.') plus 2 for
    [CLS]/[SEP]: (64 - 2) / 2 = 31 phrases fit and 40 - 31 = 9 are left out."""
    model, proc = det
    assert model.config.max_text_len == 64
    stats = {}
    res = detect_batch(model, proc, _images(tmp_path)[:1], [["dog"] * 40], box_threshold=0.0, text_threshold=0.0,
                       stats=stats)
    assert stats["truncated"] == 9
    assert [d["index"] for d in res[0]] == list(range(31))


# ---------------------------------------------------------------------------------------------- the stage


def _run(det, prepared, out_dir, **kw):
    model, proc = det
    kw.setdefault("batch_size", 2)
    return run_detect(prepared, out_dir / "detect.jsonl", out_dir / "rejects.jsonl", model_name="unused",
                      model=model, processor=proc, progress=False, **kw)


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_run_detect_rows_candidates_and_fallback(det, prepared, tmp_path):
    stats = _run(det, prepared, tmp_path / "a")
    rows = _rows(tmp_path / "a" / "detect.jsonl")
    src = _rows(prepared)
    assert [r["id"] for r in rows] == [r["id"] for r in src]  # everything detected, input order kept
    assert stats["written"] == 6 and stats["rejected"] == 0
    for r, s in zip(rows, src):
        text = extract_candidates(s["prompt"], s["chosen"], max_candidates=8)
        assert [{k: c[k] for k in ("phrase", "lemma", "source")} for c in r["candidates"][:len(text)]] == text
        assert (r["width"], r["height"]) == (s["width"], s["height"])
        assert r["object"] == {**r["candidates"][r["object"]["index"]], "index": r["object"]["index"]}
        assert r["object"]["index"] == next(j for j, c in enumerate(r["candidates"]) if c["box"] is not None)
        for c in r["candidates"]:
            if c["box"] is not None:
                x0, y0, x1, y1 = c["box"]
                assert 0 <= x0 < x1 <= r["width"] and 0 <= y0 < y1 <= r["height"]
    fb = rows[1]  # "Is it sunny?" / "Yes, it is." has no candidate -> the random COCO object
    assert extract_candidates(src[1]["prompt"], src[1]["chosen"]) == []
    assert len(fb["candidates"]) == 1 and fb["candidates"][0]["source"] == "random"
    assert fb["candidates"][0]["phrase"] in COCO_CLASSES and fb["object"]["source"] == "random"
    assert stats["fallback_used"] == 1


def test_run_detect_no_detection_rejects(det, prepared, tmp_path):
    """box_threshold 1.0: nothing is ever detected, so every sample is rejected with its reason."""
    stats = _run(det, prepared, tmp_path / "b", box_threshold=1.0)
    assert _rows(tmp_path / "b" / "detect.jsonl") == []
    rej = _rows(tmp_path / "b" / "rejects.jsonl")
    assert [r["id"] for r in rej] == [f"s{k}" for k in range(6)]
    assert [r["reason"] for r in rej] == ["no_detection", "no_candidates"] + ["no_detection"] * 4
    assert stats["rejects_by_reason"] == {"no_detection": 5, "no_candidates": 1}
    _run(det, prepared, tmp_path / "c", box_threshold=1.0, fallback=False)
    assert [r["reason"] for r in _rows(tmp_path / "c" / "rejects.jsonl")][:2] == ["no_detection", "no_candidates"]


def test_run_detect_image_reject(det, prepared, tmp_path):
    rows = _rows(prepared)
    (tmp_path / "images" / "im3.png").write_bytes(b"not a png")
    stats = _run(det, prepared, tmp_path / "d")
    rej = _rows(tmp_path / "d" / "rejects.jsonl")
    assert [(r["id"], r["reason"]) for r in rej] == [("s3", "image_unreadable")]
    assert [r["id"] for r in _rows(tmp_path / "d" / "detect.jsonl")] == [r["id"] for r in rows if r["id"] != "s3"]
    assert stats["written"] == 5


def test_run_detect_resume_is_byte_identical(det, prepared, tmp_path):
    """Stop after 3 samples (mid-block: batch 2), add a half-written line as a SIGKILL would, re-run."""
    _run(det, prepared, tmp_path / "full")
    part = tmp_path / "part"
    s1 = _run(det, prepared, part, limit=3)
    assert s1["written"] + s1["rejected"] == 3
    with open(part / "detect.jsonl", "a") as f:
        f.write('{"id": "s3", "candid')
    s2 = _run(det, prepared, part)
    # block 0 (s0, s1) skipped whole; block 1 (s2, s3) recomputed whole but only s3 written; then s4, s5
    assert s2["skipped"] == 3 and s2["written"] == 3
    assert (part / "detect.jsonl").read_bytes() == (tmp_path / "full" / "detect.jsonl").read_bytes()
    assert _run(det, prepared, part)["samples"] == 0  # a finished run does nothing
