"""prepare: a bad-input corpus with one case per reject reason, the pixel-mode conversions, the reject ratio."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from badfiles import build_corpus, rec, rgb
from PIL import Image

from lpoi.config import PrepareParams
from lpoi.io import InputError
from lpoi.listgen.prepare import RejectRatioExceeded, prepare_records, run_prepare, safe_stem

# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture()
def corpus(tmp_path: Path):
    root, cases = build_corpus(tmp_path)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r, _ in cases))
    return tmp_path, root, pairs, cases


def _run(tmp_path: Path, root: Path, pairs: Path, ratio: float = 1.0):
    out = tmp_path / "out"
    summary = run_prepare(pairs, root, out / "prepared.jsonl", out / "rejects.jsonl",
                          PrepareParams(max_reject_ratio=ratio), out_dir_images=out / "img")
    prepared = [json.loads(x) for x in (out / "prepared.jsonl").read_text().splitlines()]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    return summary, prepared, rejects


# ---------------------------------------------------------------------------------------------- tests


def test_each_bad_case_rejected_with_its_reason_others_processed(corpus):
    tmp_path, root, pairs, cases = corpus
    summary, prepared, rejects = _run(tmp_path, root, pairs)
    expected_rejects = {i: want for i, (_, want) in enumerate(cases) if want != "ok"}
    assert {r["index"]: r["reason"] for r in rejects} == expected_rejects
    assert all(r["detail"] for r in rejects)
    n_ok = sum(want == "ok" for _, want in cases)
    assert len(prepared) == n_ok
    assert summary["records_in"] == len(cases) and summary["records_out"] == n_ok
    assert summary["rejected"] == len(expected_rejects)
    want_counts: dict[str, int] = {}
    for reason in expected_rejects.values():
        want_counts[reason] = want_counts.get(reason, 0) + 1
    assert summary["rejects_by_reason"] == want_counts


def test_every_reject_row_carries_the_records_id(corpus):
    """The given id whenever the record has a valid one (whatever the reason), else the derived id once the
    image bytes are known, else null; and always the input index."""
    tmp_path, root, pairs, cases = corpus
    _, _, rejects = _run(tmp_path, root, pairs)
    for r in rejects:
        record = cases[r["index"]][0]
        given = record.get("id") if isinstance(record, dict) else None
        if isinstance(given, (str, int)) and not isinstance(given, bool):
            assert r["id"] == str(given).encode("utf-8", "backslashreplace").decode(), r  # surrogates escaped
        elif r["reason"] in ("not_an_object", "missing_field", "bad_type", "invalid_unicode",
                             "control_character", "empty_field", "text_too_long", "no_preference",
                             "unsafe_path", "missing_image"):
            assert r["id"] is None, r  # no image bytes read: no derived id
        else:
            assert len(r["id"]) == 16 and int(r["id"], 16) >= 0, r  # derived from the content
    n_given = sum(1 for r in rejects if isinstance(cases[r["index"]][0], dict)
                  and isinstance(cases[r["index"]][0].get("id"), (str, int)))
    assert n_given >= 10  # the corpus gives ids to rejects of most kinds, the early ones included


def test_placeholders_removed_once_and_counted(corpus):
    tmp_path, root, pairs, _ = corpus
    summary, prepared, _ = _run(tmp_path, root, pairs)
    row = next(p for p in prepared if p["id"] == "ph")
    assert row["prompt"] == "What is on the table?"  # "<image>\n" and an inline "<Image>" both gone
    assert row["chosen"] == "A red cup."
    assert row["placeholders_removed"] is True
    assert not any("<image>" in p[k].lower() for p in prepared for k in ("prompt", "chosen", "rejected"))
    assert summary["placeholders_removed"] == 2  # "ph" and "invisible" (a placeholder split by a ZWSP)
    other = next(p for p in prepared if p["image"] == "uni.png")  # other special tokens are kept as text
    assert "<fake_token_around_image></s>" in other["prompt"] and other["placeholders_removed"] is False


def test_texts_and_ids_are_compared_as_normalised_and_stored_so(corpus):
    """NFC, format characters gone, placeholders found through a zero-width space; the prepared row holds the
    normalised texts and id, and says so. Pairs and ids that differ only invisibly are one (the corpus)."""
    tmp_path, root, pairs, cases = corpus
    summary, prepared, rejects = _run(tmp_path, root, pairs)
    row = next(p for p in prepared if p["id"] == "invisible")
    want = ("What is\u00a0there?", "Caf\u00e9 au lait.", "A dog.")
    assert (row["prompt"], row["chosen"], row["rejected"]) == want
    assert row["text_normalised"] is True and row["placeholders_removed"] is True
    assert next(p for p in prepared if p["id"] == "caf\u00e9")["text_normalised"] is False
    assert summary["texts_normalised"] == 1
    by_id = {r["id"]: r for r in rejects}
    assert by_id["cafe\u0301"]["reason"] == "duplicate_id" and "'caf\u00e9'" in by_id["cafe\u0301"]["detail"]
    assert "U+0000 at character 1" in by_id["nul"]["detail"] and "rejected" in by_id["nul"]["detail"]
    for p in prepared:  # nothing invisible is left in what later stages read
        for k in ("id", "prompt", "chosen", "rejected"):
            assert p[k] == unicodedata.normalize("NFC", p[k]), (k, p[k])
            invisible = [c for c in p[k].replace("\n", "") if unicodedata.category(c) in ("Cf", "Cc", "Cs")]
            assert not invisible, (k, p[k])


def test_normalise_text_keeps_whitespace_and_visible_format_characters():
    from lpoi.listgen.prepare import _Reject, normalise_text

    assert normalise_text("a\tb\r\nc\n") == "a\tb\r\nc\n"  # tab, CR, LF kept as they are
    assert normalise_text("\u0600\u0661\u0662") == "\u0600\u0661\u0662"  # Arabic number sign: Cf, but drawn
    assert normalise_text("A\u00ad\u200e\u202e\U000e0041b") == "Ab"  # soft hyphen, bidi marks, a tag
    assert normalise_text("\u1100\u1161") == "\uac00"  # Hangul jamo compose under NFC
    for text, reason in (("a\x0bb", "control_character"), ("\x7f", "control_character"),
                         ("a\udfffb", "invalid_unicode")):
        with pytest.raises(_Reject) as e:
            normalise_text(text, "chosen")
        assert e.value.reason == reason and "chosen" in e.value.detail


def test_content_key_cannot_be_shared_by_different_fields():
    """v1 joined the fields with NUL: ("a\\0b", "c") and ("a", "b\\0c") had one key, and the second record
    was dropped as a duplicate. v2 keys (and the ids derived from them) are never v1 keys."""
    from lpoi.listgen.prepare import content_key

    sha = "ab" * 32
    assert content_key(sha, "q", "a\0b", "c") != content_key(sha, "q", "a", "b\0c")
    assert content_key(sha, "q\0a", "b", "c") != content_key(sha, "q", "a\0b", "c")
    v1 = hashlib.sha256("".join(f + "\0" for f in (sha, "q", "a", "b")).encode()).hexdigest()
    assert content_key(sha, "q", "a", "b") != v1


@pytest.mark.parametrize("form", ["json", "jsonl"])
def test_a_lone_surrogate_rejects_its_record_only(form, tmp_path):
    """json decodes "\\ud800" to a lone surrogate; it used to stop the whole stage at the key's UTF-8
    encoding (no file, no record named). Now that record is rejected by index and id, the others go on,
    and both output files are written (the id escaped)."""
    root = tmp_path / "img"
    root.mkdir()
    rgb(root / "a.png")
    cases = [rec("a.png", id="first"), rec("a.png", chosen="A \ud83c cup.", id="bad-chosen"),
             rec("a.png", rejected="A \ud83c\udf4e.", id="pair-ok"), rec("a\udc80.png"),
             rec("a.png", id="bad\udc00")]
    pairs = tmp_path / f"p.{form}"
    pairs.write_text(json.dumps(cases) if form == "json" else "".join(json.dumps(r) + "\n" for r in cases))
    assert "\\ud83c\\udf4e" in pairs.read_text()  # a valid surrogate *pair* escape: a real emoji
    summary, prepared, rejects = _run(tmp_path, root, pairs)
    assert [p["id"] for p in prepared] == ["first", "pair-ok"] and prepared[1]["rejected"] == "A \U0001F34E."
    assert [(r["index"], r["id"], r["reason"]) for r in rejects] == [
        (1, "bad-chosen", "invalid_unicode"), (3, None, "invalid_unicode"),
        (4, "bad\\udc00", "invalid_unicode")]
    assert [r["detail"].split(" holds")[0] for r in rejects] == ["chosen", "img_path", "id"]
    assert "U+D83C at character 2" in rejects[0]["detail"]


def test_text_bounds_and_aspect_ratio_follow_the_params(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    rgb(root / "w.png", w=300, h=10)  # 30:1
    cases = [rec("w.png", id="wide"), rec("w.png", prompt="x" * 50, chosen="A cat.", id="long")]
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in cases))
    strict = [r["reason"] for k, r in prepare_records(pairs, root, PrepareParams(max_prompt_chars=49)) if k == "reject"]
    assert strict == ["extreme_aspect_ratio", "text_too_long"]
    loose = PrepareParams(max_aspect_ratio=30, max_prompt_chars=50)
    assert [k for k, _ in prepare_records(pairs, root, loose)] == ["ok", "ok"]


@pytest.mark.parametrize("model,max_pixels", [("tiny/idefics2", None), ("tiny/llava", None),
                                              ("tiny/qwen2.5-vl", 32 * 32), ("tiny/gemma3", None)])
def test_prompt_budget_counts_what_the_reference_encodes(model, max_pixels, tmp_path):
    """PromptBudget's count is exactly where encode_sequences (reference and train) starts the answer, and
    its limit is exactly where encode_sequences gives up: a prompt of max_length - 1 tokens passes, one of
    max_length tokens is the error prepare now rejects in advance. The reference's processor is loaded as
    the reference stage loads it (Qwen with a resolution budget: its image tokens follow model.max_pixels;
    Gemma 3: its template's BOS is not doubled)."""
    from lpoi.listgen.prepare import PromptBudget, _Reject
    from lpoi.models import load_processor
    from lpoi.train.collate import encode_sequences

    prompts = ["What is there?", "Describe the scene. " * 40, "Qxv zpl wkj 93 fr#! " * 30, "Wie heißt das? 🍎 هذا",
               "<fake_token_around_image> a </s> b"]
    budget = PromptBudget.for_model(model, 512, max_pixels=max_pixels)
    reference = load_processor(model, max_pixels=max_pixels)
    img = Image.new("RGB", (48, 40), (10, 20, 30))
    for q in prompts:
        n = budget.tokens(q, img.size)
        enc = encode_sequences(reference, questions=[q], answers=["A cat."], images=[img], sample_ids=["s"])
        assert n == int(enc.response_mask[0].nonzero()[0])  # first answer token = prompt length
        encode_sequences(reference, questions=[q], answers=["A cat."], images=[img], sample_ids=["s"],
                         max_length=n + 1)  # one token left for the answer: fine
        with pytest.raises(ValueError, match="leaves no room"):
            encode_sequences(reference, questions=[q], answers=["A cat."], images=[img], sample_ids=["s"],
                             max_length=n)
        budget.max_length = n + 1
        budget.check(q, img.size)
        budget.max_length = n
        with pytest.raises(_Reject, match="no room for an answer within reference.max_length"):
            budget.check(q, img.size)
    # idefics2, llava, gemma3: the count does not depend on the image size; Qwen's does
    assert budget.fixed == (model != "tiny/qwen2.5-vl")


def test_prompt_budget_small_size_is_only_used_where_it_changes_nothing():
    """With the real Idefics2 image processor (980 px) the count runs on a small processing size and keeps
    every id. What makes it cheaper is the number of pixels the image processor handles (~3,600x fewer here),
    counted, not timed: a wall-clock bound fails on a loaded machine."""
    from transformers import Idefics2ImageProcessor

    from lpoi.listgen.prepare import PromptBudget
    from lpoi.models import load_processor

    proc = load_processor("tiny/idefics2")
    proc.image_processor = Idefics2ImageProcessor(do_image_splitting=False)  # the hub model's settings
    budget = PromptBudget(proc, 2048)
    budget.tokens("x")
    assert budget._kwargs
    q = "Describe the scene in detail."
    processed = []
    real = proc.image_processor.preprocess

    def counting(*a, **kw):
        out = real(*a, **kw)
        processed.append(out["pixel_values"][0].numel())
        return out

    proc.image_processor.preprocess = counting
    full = budget._ids(q, (640, 480), {})
    assert budget.tokens(q, (640, 480)) == len(full)
    assert len(processed) == 2 and processed[1] * 100 < processed[0], processed


def test_no_record_accepted_fails_even_when_all_may_be_rejected(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps(rec("missing.png", id="a")) + "\n" + json.dumps(rec("gone.png")) + "\n")
    with pytest.raises(RejectRatioExceeded, match="accepted none of the 2 records.*missing_image: 2"):
        run_prepare(pairs, root, tmp_path / "o/p.jsonl", tmp_path / "o/r.jsonl", PrepareParams(max_reject_ratio=1))
    assert len((tmp_path / "o/r.jsonl").read_text().splitlines()) == 2  # the rejects are there to read


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_unicode_pairs_files_read_as_the_json_module_does(tmp_path, encoding):
    """UTF-8 with a BOM and UTF-16/32 (BOM or not: detected from the first characters, as json.loads does
    for bytes) give the same records as plain UTF-8, in the list and the JSONL form. Line and paragraph
    separators (U+2028/9) and NEL (U+0085) inside a string do not end a JSONL line."""
    root = tmp_path / "img"
    root.mkdir()
    rgb(root / "a.png")
    records = [rec("a.png", prompt="Qué hay? 🍎", id="x"), rec("a.png", chosen="Ünïcode.", id="y"),
               rec("a.png", chosen="One\u2028two\u2029three.", id="z"),
               rec("a.png", chosen="Four\x85", id="n")]
    for name, text in (("l.json", json.dumps(records, ensure_ascii=False, indent=1)),
                       ("l.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))):
        plain, other = tmp_path / ("u8-" + name), tmp_path / (encoding + name)
        plain.write_text(text, encoding="utf-8")
        other.write_text(text, encoding=encoding)
        assert other.read_bytes() != plain.read_bytes()
        got = list(prepare_records(other, root))
        assert got == list(prepare_records(plain, root))
        assert [(k, r["id"], r.get("reason")) for k, r in got] == [
            ("ok", "x", None), ("ok", "y", None), ("ok", "z", None), ("reject", "n", "control_character")]
        assert got[0][1]["prompt"] == "Qué hay? 🍎"


def test_non_utf8_pairs_file_is_a_one_line_error_naming_file_and_line(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(json.dumps(rec("a.png")).encode() + b"\n" + json.dumps(rec("a.png", prompt="Qu\u00e9?"),
                                                                           ensure_ascii=False).encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.jsonl:2: not UTF-8 text \(byte 0xe9") as e:
        list(prepare_records(bad, root))
    assert "\n" not in str(e.value)
    as_list = tmp_path / "latin1.json"
    as_list.write_bytes(b'[\n{"prompt": "Qu\xe9"}]')
    with pytest.raises(InputError, match=r"latin1\.json:2: not UTF-8 text"):
        list(prepare_records(as_list, root))


@pytest.mark.parametrize("content,needle", [
    ('{"data": [{"img_path": "a.png"}]}', "got a JSON object with keys data; the records may be the list under 'data'"),
    ('{\n  "data": [],\n  "version": 2\n}', "got a JSON object with keys data, version"),
    ('"pairs.json"', "got a JSON str"),
    ('{"img_path": "a.png", oops}', "a.jsonl:1: invalid JSON"),
])
def test_a_file_that_is_not_a_list_of_records_is_an_error(tmp_path, content, needle):
    root = tmp_path / "img"
    root.mkdir()
    path = tmp_path / "a.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match="expected a JSON list|invalid JSON") as e:
        list(prepare_records(path, root))
    assert needle in str(e.value) and str(path) in str(e.value)


def test_a_single_record_jsonl_or_pretty_object_is_one_record(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    rgb(root / "a.png")
    for text in (json.dumps(rec("a.png", id="one")) + "\n", json.dumps(rec("a.png", id="one"), indent=2)):
        path = tmp_path / "one.json"
        path.write_text(text)
        assert [(k, r["id"]) for k, r in prepare_records(path, root)] == [("ok", "one")]


def test_stage_script_prints_one_line_for_a_json_object(tmp_path):
    """As a user meets it: `python stages/prepare.py` on a wrapper object exits 1 with one 'error:' line."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "img").mkdir()
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps({"data": [rec("a.png")]}))
    r = subprocess.run([sys.executable, str(repo / "stages/prepare.py"), "--params", str(repo / "params.yaml"),
                        "--pairs", str(pairs), "--images", str(tmp_path / "img"), "--out", str(tmp_path / "out"),
                        "--metrics", str(tmp_path / "m.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: {pairs}: expected a JSON list of records (or JSONL, one per "
                                             "line), got a JSON object with keys data; the records may be the "
                                             "list under 'data'"]
    assert not (tmp_path / "m.json").exists()


def test_ids_paths_and_content_hash(corpus):
    tmp_path, root, pairs, _ = corpus
    _, prepared, _ = _run(tmp_path, root, pairs)
    by_image = {p["image"]: p for p in prepared}
    assert by_image["ok.jpg"]["id"] == "7"  # integer id string-ified
    assert by_image["sub/ok.png"]["id"] == "b"  # "./sub//ok.png" normalised
    # plain RGB sources are not copied
    assert by_image["ok.jpg"]["normalised"] is False
    assert Path(by_image["ok.jpg"]["image_path"]) == root / "ok.jpg"
    # derived id = sha256 of the JSON array [version, image_sha256, prompt, chosen, rejected][:16], by hand
    row = by_image["ok3.png"]
    img_sha = hashlib.sha256((root / "ok3.png").read_bytes()).hexdigest()
    assert row["image_sha256"] == img_sha
    blob = f'["prepare-key-v2", "{img_sha}", "What is there?", "Three.", "A dog."]'
    want = hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert row["id"] == want
    assert (row["width"], row["height"]) == (32, 24)
    assert len({p["id"] for p in prepared}) == len(prepared)


def _pixels(row) -> np.ndarray:
    with Image.open(row["image_path"]) as im:
        assert im.mode == "RGB"
        return np.asarray(im).astype(int)


def test_mode_conversions_are_normalised_copies(corpus):
    tmp_path, root, pairs, _ = corpus
    _, prepared, _ = _run(tmp_path, root, pairs)
    by_image = {p["image"]: p for p in prepared}
    for name in ("cmyk.jpg", "g16.png", "pal.png", "la.png", "rgba.png", "gray.png", "rot.jpg"):
        row = by_image[name]
        assert row["normalised"] is True, name
        assert Path(row["image_path"]).parent == tmp_path / "out" / "img"
        assert Path(row["image_path"]).name == f"{safe_stem(row['id'])}.png"
    # CMYK -> RGB: r = (255-c)(255-k)/255 etc. (JPEG of a flat colour: within a few levels)
    c, m, y, k = 40, 80, 120, 60
    want = [(255 - v) * (255 - k) / 255 for v in (c, m, y)]
    assert np.abs(_pixels(by_image["cmyk.jpg"]) - want).max() <= 4
    # 16-bit 32768 -> 32768 / 65535 * 255 = 127.5 -> 128 (or 127)
    assert np.abs(_pixels(by_image["g16.png"]) - 127.5).max() <= 1
    # palette index 1 -> its palette colour
    assert (_pixels(by_image["pal.png"]) == (200, 100, 50)).all()
    # LA (L=100, alpha=128) on white: 100*128/255 + 255*(127/255) = 177.2
    assert np.abs(_pixels(by_image["la.png"]) - (100 * 128 + 255 * 127) / 255).max() <= 1
    # fully transparent red on white -> white
    assert (_pixels(by_image["rgba.png"]) == 255).all()
    assert (_pixels(by_image["gray.png"]) == 77).all()


def test_exif_orientation_applied(corpus):
    """Orientation 6 shows the stored 40x20 image rotated 90 degrees clockwise: 20 wide, 40 high, and the
    stored left half (red) ends up on top."""
    tmp_path, root, pairs, _ = corpus
    _, prepared, _ = _run(tmp_path, root, pairs)
    row = next(p for p in prepared if p["image"] == "rot.jpg")
    assert (row["width"], row["height"]) == (20, 40)
    px = _pixels(row)
    assert px.shape == (40, 20, 3)
    top, bottom = px[2:18].mean(axis=(0, 1)), px[22:38].mean(axis=(0, 1))
    assert top[0] > 150 and top[2] < 80  # red
    assert bottom[2] > 150 and bottom[0] < 80  # blue


def test_normalised_copy_is_deterministic(corpus):
    tmp_path, root, pairs, _ = corpus
    _, prepared, _ = _run(tmp_path, root, pairs)
    first = {p["image_path"]: Path(p["image_path"]).read_bytes() for p in prepared if p["normalised"]}
    prep1 = (tmp_path / "out" / "prepared.jsonl").read_bytes()
    _run(tmp_path, root, pairs)
    assert {k: Path(k).read_bytes() for k in first} == first
    assert (tmp_path / "out" / "prepared.jsonl").read_bytes() == prep1


def test_json_list_input_same_result(corpus):
    tmp_path, root, pairs, cases = corpus
    as_list = tmp_path / "pairs.json"
    as_list.write_text(json.dumps([r for r, _ in cases], indent=1))
    a = list(prepare_records(pairs, root))
    b = list(prepare_records(as_list, root))
    assert a == b
    assert sum(kind == "reject" for kind, _ in a) == sum(want != "ok" for _, want in cases)


def test_reject_ratio_error_after_writing_both_files(corpus):
    tmp_path, root, pairs, cases = corpus
    n_rej = sum(want != "ok" for _, want in cases)
    ratio = n_rej / len(cases)
    with pytest.raises(RejectRatioExceeded, match=r"max_reject_ratio.*duplicate_id|duplicate_id.*rejects"):
        _run(tmp_path, root, pairs, ratio=ratio - 0.01)
    out = tmp_path / "out"
    assert len((out / "rejects.jsonl").read_text().splitlines()) == n_rej
    assert len((out / "prepared.jsonl").read_text().splitlines()) == len(cases) - n_rej
    summary, _, _ = _run(tmp_path, root, pairs, ratio=ratio)  # exactly at the limit: allowed
    assert summary["reject_ratio"] == pytest.approx(ratio)


def test_bad_params_and_empty_input(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="max_reject_ratio"):
        PrepareParams(max_reject_ratio=1.5)
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        PrepareParams(max_aspect_ratio=0.5)
    with pytest.raises(InputError, match="no records"):
        run_prepare(empty, root, tmp_path / "p.jsonl", tmp_path / "r.jsonl", PrepareParams(max_reject_ratio=0.5))
    with pytest.raises(FileNotFoundError, match="images root"):
        list(prepare_records(empty, tmp_path / "missing"))


def test_safe_stem():
    assert safe_stem("abc-1.2_x") == "abc-1.2_x"
    for bad in ("../x", "a/b", ".hidden", "", "x" * 200, "a b"):
        s = safe_stem(bad)
        assert s.startswith("id-") and len(s) == 19 and "/" not in s
    assert safe_stem("a/b") != safe_stem("a/c")
