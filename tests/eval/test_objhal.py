"""Object HalBench CHAIR scoring on hand-built COCO-format fixtures (expected values derived by hand).

The synonym list is the official ``synonyms_refine.txt`` (committed copy, checked against the
sha256 recorded in ../shared/benchmarks/PROVENANCE.md). Facts about it used below:
person ⊇ {man}; dog ⊇ {puppy}; chair ⊇ {seat}; dining table ⊇ {table, desk}; motorcycle ⊇ {motor bike};
two-word classes "wine glass", "hot dog", "dining table"; "glass", "wall", "field", "track" are not COCO words.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
import shared_data

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("NLTK_DATA", str(shared_data.SHARED / "nltk_data"))
# nltk reads NLTK_DATA once, at import; another test module may have imported it before this line
import nltk

if os.environ["NLTK_DATA"] not in nltk.data.path:
    nltk.data.path.append(os.environ["NLTK_DATA"])

from lpoi.eval.benchmarks import objhal
from lpoi.io import ImageRejected

MINI = REPO / "data" / "sample" / "bench" / "objhal"
SYN = MINI / "synonyms_refine.txt"

# COCO category ids (real COCO 2014 ids)
DOG, FRISBEE, TOILET, DINING_TABLE, WINE_GLASS = 18, 34, 70, 67, 46


def write_coco(root: Path) -> Path:
    """Images 1, 2, 3, 5 (image 4 is in no annotation file).

    Ground truth by hand:
    1: instances {dog, frisbee}; captions: "puppy" -> dog, "man" -> person, "frisbee", "dog" -> {dog, frisbee, person}
    2: instances {toilet}; captions: "toilet seat" -> toilet (two-word rule), "the seat of the toilet" -> seat
       dropped (toilet rule), never "chair" -> {toilet}
    3: instances {dining table, wine glass}; caption "A hot dog sits next to the wine glasses." adds hot dog
       (captions-derived object); "glass of wine" is no COCO word; "desk" -> dining table
       -> {dining table, hot dog, wine glass}
    5: no instances; captions "passenger train" -> train, "train tracks" -> "train track" (blocks "train"),
       "baby elephant" -> elephant -> {elephant, train}
    """
    cats = [{"id": i, "name": n, "supercategory": "x"} for i, n in
            [(1, "person"), (DOG, "dog"), (FRISBEE, "frisbee"), (TOILET, "toilet"), (DINING_TABLE, "dining table"),
             (WINE_GLASS, "wine glass"), (62, "chair")]]
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg", "width": 64, "height": 64} for i in (1, 2, 3, 5)]
    inst = [(1, DOG), (1, DOG), (1, FRISBEE), (2, TOILET), (3, DINING_TABLE), (3, WINE_GLASS)]
    caps = {
        1: ["A puppy catches a frisbee.", "A man throws a flying disc to his dog.", "A dog.", "A dog outside.",
            "A dog on grass."],
        2: ["A toilet seat in a small bathroom.", "The seat of the toilet is up.", "A bathroom with a toilet.",
            "A white toilet.", "A toilet next to a wall."],
        3: ["Two wine glasses on a table.", "A glass of wine on a desk.", "A hot dog sits next to the wine glasses.",
            "Wine glasses.", "A table."],
        5: ["A passenger train at the station.", "Train tracks next to a field.", "An old train.", "A train.",
            "A baby elephant near the train."],
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "instances_val2014.json").write_text(json.dumps({
        "images": images, "categories": cats,
        "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0}
                        for k, (i, c) in enumerate(inst)]}))
    (root / "captions_val2014.json").write_text(json.dumps({
        "images": images,
        "annotations": [{"id": 100 * i + k, "image_id": i, "caption": c} for i, cs in caps.items()
                        for k, c in enumerate(cs)]}))
    return root


@pytest.fixture(scope="module")
def vocab():
    return objhal.load_vocab(SYN)


def test_committed_synonyms_are_the_official_file(vocab):
    assert vocab.sha256.startswith("681041d2958d7871")  # PROVENANCE.md
    assert len(vocab.classes) == 80
    assert vocab.inverse["puppy"] == "dog" and vocab.inverse["motor bike"] == "motorcycle"
    assert vocab.double["toilet seat"] == "toilet" and vocab.double["baby elephant"] == "elephant"
    assert vocab.double["train track"] == "train track" and "train track" not in vocab.objects


@pytest.mark.parametrize(
    "caption,expected",
    [
        ("A man rides a bike.", [("man", "person"), ("bike", "bicycle")]),
        ("Two wine glasses and a hot dog.", [("wine glass", "wine glass"), ("hot dog", "hot dog")]),  # not "dog"
        ("A toilet seat.", [("toilet", "toilet")]),  # two-word rule
        ("The seat of the toilet.", [("toilet", "toilet")]),  # seat dropped next to a toilet
        ("A seat by the window.", [("seat", "chair")]),  # no toilet: a seat is a chair
        ("Train tracks in a field.", []),  # "train track" blocks "train"
        ("A passenger train and a baby elephant.", [("train", "train"), ("elephant", "elephant")]),
        ("A motor bike, a motorbike and a scooter.", [("motor bike", "motorcycle"), ("motorbike", "motorcycle"),
                                                      ("scooter", "motorcycle")]),
        ("DOGS and Cats.", [("dog", "dog"), ("cat", "cat")]),  # lower-cased and lemmatized
        ("A desk, a table.", [("desk", "dining table"), ("table", "dining table")]),
    ],
)
def test_caption_to_words(vocab, caption, expected):
    assert objhal.caption_to_words(caption, vocab) == expected


def test_ground_truth(vocab, tmp_path):
    coco = write_coco(tmp_path / "coco")
    gt, unknown = objhal.load_ground_truth(coco, [1, 2, 3, 4, 5], vocab)
    assert gt == {1: ["dog", "frisbee", "person"], 2: ["toilet"], 3: ["dining table", "hot dog", "wine glass"],
                  5: ["elephant", "train"]}
    assert unknown == {4}


def test_ground_truth_cache_is_json_keyed_by_file_hashes(vocab, tmp_path):
    coco = write_coco(tmp_path / "coco")
    cache = tmp_path / "gt.json"
    objhal.load_ground_truth(coco, [1, 2], vocab, cache)
    data = json.loads(cache.read_text())  # plain JSON, no pickle
    assert set(data["key"]["files"]) == {"instances_val2014.json", "captions_val2014.json"}
    # prove the second call reads the cache: plant a sentinel in it
    data["images"]["1"] = ["sentinel"]
    cache.write_text(json.dumps(data))
    gt, _ = objhal.load_ground_truth(coco, [1], vocab, cache)
    assert gt[1] == ["sentinel"]
    # new ids are added to the cache without dropping old ones
    gt, _ = objhal.load_ground_truth(coco, [1, 3], vocab, cache)
    assert gt[1] == ["sentinel"] and gt[3] == ["dining table", "hot dog", "wine glass"]
    # changed annotation files -> another key -> rebuilt
    (coco / "captions_val2014.json").write_text((coco / "captions_val2014.json").read_text() + "\n")
    gt, _ = objhal.load_ground_truth(coco, [1], vocab, cache)
    assert gt[1] == ["dog", "frisbee", "person"]


def test_score_file_rules(tmp_path):
    """CHAIR by hand on the fixture above (ground truth in :func:`write_coco`).

    r1 img1 "A dog jumps for a frisbee while a cat watches."    mentions dog, frisbee, cat; cat hallucinated;
                                                                 correct classes {dog, frisbee}; |gt| = 3
    r2 img2 "The toilet seat is down and the seat of the toilet is clean."
                                                                 toilet (two-word), toilet; seat dropped; 0 hall;
                                                                 correct {toilet}; |gt| = 1
    r3 img2 "There is a seat in the room."                       seat -> chair, hallucinated; |gt| = 1
    r4 img3 "Wine glasses and a hot dog on a dining table, next to a motor bike."
                                                                 wine glass, hot dog, dining table, motorcycle
                                                                 (hallucinated); correct 3; |gt| = 3
    r5 img5 "Assistant: Train tracks run past a field."          no COCO word ("Assistant:" stripped); |gt| = 2
    r6 img5 "A baby elephant stands near the passenger train."   elephant, train; correct 2; |gt| = 2
    rejected: img4 (unknown_image_id), image_id "abc" (bad_image_id), response null (bad_response)

    n = 6; with COCO objects: r1 r2 r3 r4 r6 = 5; hallucinated responses: r1 r3 r4 = 3
    CHAIRs = 3/6 = 50; CHAIRs_refine = 3/5 = 60
    mentions 3+2+1+4+0+2 = 12, hallucinated 1+0+1+1+0+0 = 3 -> CHAIRi = 25
    recall = (2+1+0+3+0+2) / (3+1+1+3+2+2) = 8/12 = 66.67
    """
    coco = write_coco(tmp_path / "coco")
    rows = [
        {"image_id": 1, "response": "A dog jumps for a frisbee while a cat watches."},
        {"image_id": 2, "response": "The toilet seat is down and the seat of the toilet is clean."},
        {"image_id": 2, "response": "There is a seat in the room."},
        {"image_id": 3, "response": "Wine glasses and a hot dog on a dining table, next to a motor bike."},
        {"image_id": 5, "response": "Assistant: Train tracks run past a field."},
        {"image_id": "5", "response": "A baby elephant stands near the passenger train."},
        {"image_id": 4, "response": "A dog."},
        {"image_id": "abc", "response": "A dog."},
        {"image_id": 1, "response": None},
    ]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "metrics" / "objhal.json"
    m = objhal.score_file(answers, coco, out, synonyms_path=SYN, details_path=tmp_path / "details.jsonl")
    assert m["n"] == 6 and m["n_with_coco_objects"] == 5 and m["n_hallucinated_responses"] == 3
    assert m["CHAIRs"] == pytest.approx(50.0)
    assert m["CHAIRs_refine"] == pytest.approx(60.0)
    assert m["n_mentions"] == 12 and m["n_hallucinated_mentions"] == 3 and m["CHAIRi"] == pytest.approx(25.0)
    assert m["n_correct_objects"] == 8 and m["n_gt_objects"] == 12 and m["recall"] == pytest.approx(800 / 12)
    assert m["rejects"] == {"unknown_image_id": 1, "bad_image_id": 1, "bad_response": 1} and m["n_rejected"] == 3
    assert m["extractor"] == "rules"
    assert json.loads(out.read_text()) == m
    details = [json.loads(x) for x in (tmp_path / "details.jsonl").read_text().splitlines()]
    assert details[3]["hallucinated"] == [["motor bike", "motorcycle"]]
    assert (tmp_path / "metrics" / ".objhal_cache" / "ground_truth.json").is_file()  # default: next to the output


def test_score_file_errors(tmp_path):
    coco = write_coco(tmp_path / "coco")
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"image_id": 4, "response": "x"}) + "\n")
    with pytest.raises(ValueError, match="none of the image ids"):
        objhal.score_file(answers, coco, tmp_path / "m.json", synonyms_path=SYN)
    answers.write_text(json.dumps({"image_id": 1, "response": "x"}) + "\n")
    with pytest.raises(FileNotFoundError, match="instances_val2014.json"):
        objhal.score_file(answers, tmp_path, tmp_path / "m.json", synonyms_path=SYN)
    with pytest.raises(ValueError, match="needs a judge"):
        objhal.score_file(answers, coco, tmp_path / "m.json", extractor="llm", synonyms_path=SYN)
    with pytest.raises(ValueError, match="rules' or 'llm'"):
        objhal.score_file(answers, coco, tmp_path / "m.json", extractor="spacy", synonyms_path=SYN)


def test_score_file_on_the_mini_set_finds_the_synonyms_in_coco_dir(tmp_path):
    """Mini set (make_mini.py): img 900000001 is a dog and a frisbee; a "cat" is hallucinated.

    "A dog and a cat." -> mentions dog, cat; cat not in {dog, frisbee} -> CHAIRs 100, CHAIRi 50, recall 1/2.
    """
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"image_id": 900000001, "response": "A dog and a cat."}) + "\n")
    m = objhal.score_file(answers, MINI, tmp_path / "m.json", cache_dir=tmp_path / "c")
    assert (m["CHAIRs"], m["CHAIRi"], m["recall"]) == (100.0, 50.0, 50.0)


def test_refine_extracted_objects(vocab):
    objs = ["wine glasses", "wooden dining table", "red frisbee", "toilet seat", "lawn", "Dogs", "frisbee"]
    # two-word names win ("wine glass", "dining table", "toilet seat" -> toilet); else runs of nouns,
    # lemmatized; duplicates dropped in order
    assert objhal.refine_extracted_objects(objs, vocab) == ["wine glass", "dining table", "frisbee", "toilet", "lawn",
                                                            "dog"]
    assert objhal.objects_to_coco(["toilet", "seat", "lawn", "dog"], vocab) == [("toilet", "toilet"), ("dog", "dog")]


@pytest.mark.parametrize(
    "content,expected",
    [
        ('["dog", "cat"]', ["dog", "cat"]),  # RLHF-V: plain JSON
        ('Here:\n```json\n["dog"]\n```', ["dog"]),  # RLAIF-V: fenced block
        ('Objects found:\n["a", "b"]', ["a", "b"]),  # last line holding ["
        ("[]", []),
    ],
)
def test_parse_object_list(content, expected):
    assert objhal.parse_object_list(content) == expected


@pytest.mark.parametrize("content", ["()", "dog, cat", '{"objects": ["dog"]}', 'x ["dog" broken'])
def test_parse_object_list_rejects(content):
    with pytest.raises(ValueError):
        objhal.parse_object_list(content)


def test_extract_prompt_is_the_official_text():
    import hashlib

    # sha256 of the official prompt_template (RLHF-V / RLAIF-V eval/eval_gpt_obj_halbench.py), computed
    # from the upstream source text
    assert hashlib.sha256(objhal.EXTRACT_PROMPT.encode()).hexdigest() == (
        "9d732f9b73a3cc965bee6eb163b8e5248e58bd9d382eb583e9ece59933e2b580")
    [msg] = objhal.extract_prompt("What is it?", "A dog.")
    assert msg["role"] == "system" and "<image> What is it?\n" in msg["content"] and "\nA dog.\n" in msg["content"]


# ---------------------------------------------------------------------------------------------- items


def test_items_from_coco_folder_and_from_base64(tmp_path):
    from PIL import Image

    by_dir = objhal.items(MINI / "obj_halbench_10_index.jsonl", images_dir=MINI / "val2014")
    assert len(by_dir) == 10 and by_dir[0]["id"] == 0 and by_dir[0]["image_id"] == 900000001
    assert by_dir[0]["image"].endswith("COCO_val2014_000900000001.jpg")
    embedded = objhal.items(MINI / "obj_halbench_10_with_image.jsonl", limit=3)
    assert [i["image_id"] for i in embedded] == [900000001, 900000002, 900000003]
    assert embedded[0]["image"].size == (128, 96) and embedded[0]["image"].mode == "RGB"
    # index + the with-image file as the image source; decoded bytes extracted to files
    ext = objhal.items(MINI / "obj_halbench_10_index.jsonl", question_file_with_images=MINI / "obj_halbench_10_with_image.jsonl",
                       extract_dir=tmp_path / "imgs", limit=2)
    p = Path(ext[1]["image"])
    assert p.read_bytes() == (MINI / "val2014" / p.name).read_bytes()
    assert Image.open(p).size == (128, 96)


def test_items_missing_images_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="COCO_val2014_000900000001.jpg"):
        objhal.items(MINI / "obj_halbench_10_index.jsonl", images_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no base64 image"):
        objhal.items(MINI / "obj_halbench_10_index.jsonl")


def test_decode_image_b64_rejects(tmp_path):
    good = json.loads((MINI / "obj_halbench_10_with_image.jsonl").read_text().splitlines()[0])["image"]
    raw, img = objhal.decode_image_b64("data:image/jpeg;base64," + good)
    assert raw == base64.b64decode(good) and img.mode == "RGB"
    cases = [("not base64 !!", "bad_base64"), (base64.b64encode(b"garbage bytes").decode(), "unreadable"), (123, "bad_base64")]
    for data, reason in cases:
        with pytest.raises(ImageRejected) as e:
            objhal.decode_image_b64(data)
        assert e.value.reason == reason
    with pytest.raises(ImageRejected) as e:
        objhal.decode_image_b64(good, max_bytes=100)
    assert e.value.reason == "too_large"
    with pytest.raises(ImageRejected) as e:
        objhal.decode_image_b64(good, max_pixels=100)  # 128 x 96 > 100 px
    assert e.value.reason == "too_large"
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps({"idx": 0, "image_id": 7, "question": "q", "image": "@@@"}) + "\n")
    with pytest.raises(FileNotFoundError, match="bad_base64"):
        objhal.items(bad)


def test_missing_nltk_data_is_a_clear_error():
    with pytest.raises(RuntimeError) as e:
        objhal.ensure_nltk(("corpora/lpoi_no_such_corpus",), download=False)
    assert "lpoi_no_such_corpus" in str(e.value) and "python -m nltk.downloader" in str(e.value)
    objhal.ensure_nltk(download=False)  # the shared data has punkt_tab and wordnet


# ---------------------------------------------------------------------------------------------- generation error rows


def _generate_error_row(image_id: int, reason: str) -> dict:
    """What lpoi.eval.generate writes for an item whose image could not be loaded (``image_id`` is extra)."""
    return {"id": f"q{image_id}", "question": "Describe this image.", "response": "", "error": reason,
            "error_detail": f"COCO_val2014_{image_id:012d}.jpg: {reason}", "image_id": image_id}


def test_generation_error_rows_are_left_out_and_counted(tmp_path):
    """Rows r1, r2, r4, r6 of test_score_file_rules, scored with and without an error row for image 3.

    Scored as an answer, the error row's "" would be one more response with no COCO mention (n 4 -> 5,
    CHAIRs 2/4 -> 2/5) and add image 3's 3 ground-truth classes to recall's denominator (correct
    classes 2+1+3+2 = 8 of 3+1+3+2 = 9 -> 8 of 12), so equal metrics mean the row was left out.
    """
    coco = write_coco(tmp_path / "coco")
    normal = [
        {"image_id": 1, "response": "A dog jumps for a frisbee while a cat watches."},
        {"image_id": 2, "response": "The toilet seat is down and the seat of the toilet is clean."},
        {"image_id": 3, "response": "Wine glasses and a hot dog on a dining table, next to a motor bike."},
        {"image_id": 5, "response": "A baby elephant stands near the passenger train."},
    ]
    clean_path, err_path = tmp_path / "clean.jsonl", tmp_path / "errors.jsonl"
    clean_path.write_text("".join(json.dumps(r) + "\n" for r in normal))
    err_path.write_text("".join(json.dumps(r) + "\n" for r in normal[:2] + [_generate_error_row(3, "too_large")]
                                + normal[2:]))
    kw = {"synonyms_path": SYN, "cache_dir": tmp_path / "cache"}
    clean = objhal.score_file(clean_path, coco, tmp_path / "clean.json", details_path=tmp_path / "d1.jsonl", **kw)
    # 1 error row of 5 = 0.2: above the default bound (next test), exactly at 0.2 it is accepted
    m = objhal.score_file(err_path, coco, tmp_path / "m.json", details_path=tmp_path / "d2.jsonl",
                          max_error_ratio=0.2, **kw)
    assert json.loads((tmp_path / "m.json").read_text()) == m
    assert m["n_generation_errors"] == 1 and m["generation_errors"] == {"too_large": 1}
    assert clean["n_generation_errors"] == 0 and clean["generation_errors"] == {}
    keys = set(m) - {"n_generation_errors", "generation_errors"}
    assert {k: m[k] for k in keys} == {k: clean[k] for k in keys}
    assert (tmp_path / "d2.jsonl").read_text() == (tmp_path / "d1.jsonl").read_text()
    assert m["n"] == 4 and m["n_rejected"] == 0  # an error row is not a reject either
    # and it would have mattered: the same row scored as a real (empty) answer changes the metrics
    as_answer = tmp_path / "as_answer.jsonl"
    as_answer.write_text(clean_path.read_text() + json.dumps({"image_id": 3, "response": ""}) + "\n")
    wrong = objhal.score_file(as_answer, coco, tmp_path / "w.json", **kw)
    assert (wrong["n"], wrong["CHAIRs"], wrong["recall"]) == (5, pytest.approx(40.0), pytest.approx(800 / 12))
    assert (m["CHAIRs"], m["recall"]) == (pytest.approx(50.0), pytest.approx(800 / 9))


def test_all_generation_error_rows_is_an_error(tmp_path):
    coco = write_coco(tmp_path / "coco")
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in
                               [_generate_error_row(1, "missing"), _generate_error_row(2, "unreadable")]))
    with pytest.raises(ValueError, match=r"answers\.jsonl: all 2 answer rows are generation errors") as e:
        objhal.score_file(answers, coco, tmp_path / "m.json", synonyms_path=SYN)
    assert "'missing': 1" in str(e.value) and "'unreadable': 1" in str(e.value)
    assert not (tmp_path / "m.json").exists()


def test_too_many_error_rows_fail_with_the_counts(tmp_path):
    """1 generation error of 5 rows (0.2) > 0.05 (score.max_error_ratio's default): no metrics, a clear error.
    Left out of the denominators, failures would otherwise look like fewer hallucinations."""
    from lpoi.config import ScoreParams
    from lpoi.eval.answers import ErrorRatioExceeded

    coco = write_coco(tmp_path / "coco")
    rows = [{"image_id": 1, "response": "A dog."}, {"image_id": 2, "response": "A toilet."},
            _generate_error_row(3, "too_large"), {"image_id": 5, "response": "A train."},
            {"image_id": 1, "response": "A cat."}]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ratio = ScoreParams().max_error_ratio
    assert ratio == 0.05
    with pytest.raises(ErrorRatioExceeded, match=r"1 of 5 answers \(20\.0%\).*generation errors \{'too_large': 1\}"):
        objhal.score_file(path, coco, tmp_path / "m.json", synonyms_path=SYN, cache_dir=tmp_path / "c",
                          max_error_ratio=ratio)
    assert not (tmp_path / "m.json").exists()
    with pytest.raises(ErrorRatioExceeded):
        objhal.score_file(path, coco, tmp_path / "m.json", synonyms_path=SYN, cache_dir=tmp_path / "c",
                          max_error_ratio=0.19)
    m = objhal.score_file(path, coco, tmp_path / "m.json", synonyms_path=SYN, cache_dir=tmp_path / "c",
                          max_error_ratio=None, labels={"random_model": False})
    assert m["n_generation_errors"] == 1 and m["n"] == 4 and m["random_model"] is False
