"""Verify: the prompt, the fully hidden image, log-probs of "Yes"/"No" from the tiny real VLM (batched ==
one by one), the retry path with an injected verifier, on_fail keep/drop, enabled=false and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lpoi.listgen.interpolate import box_mask, save_mask
from lpoi.listgen.verify import VerifyItem, hidden_image, run_verify, verify_prompt, verify_scores
from lpoi.models import load_vlm
from lpoi.models.chat import encode_prompts, prompt_text, yes_no_token_ids


@pytest.fixture(scope="module")
def vlm():
    return load_vlm("tiny/idefics2")


def _img(path, size, seed=0):
    w, h = size
    im = Image.new("RGB", size, (60 + 20 * seed, 140, 200))
    d = ImageDraw.Draw(im)
    d.rectangle([w // 6, h // 5, w // 2, h // 2], fill=(230, 20, 20))
    d.ellipse([w // 2, h // 3, w - 3, h - 3], fill=(20, 220, 60))
    im.save(path)
    return Image.open(path).convert("RGB")


def _data(tmp_path, n=6):
    """prepared.jsonl + segment.jsonl (hand-written, real image and mask PNGs).

    Every sample has 4 candidates: 0 masked, 1 undetected (no mask), 2 masked, 3 masked.
    """
    prep, seg = [], []
    for k in range(n):
        size = [(120, 80), (70, 110), (90, 60)][k % 3]
        w, h = size
        p = tmp_path / "images" / f"im{k}.png"
        p.parent.mkdir(exist_ok=True)
        _img(p, size, k)
        prep.append({"id": f"s{k}", "image": p.name, "image_path": str(p), "prompt": f"What is shown {k}?",
                     "chosen": "A red box next to a green ball.", "rejected": "A cat.", "width": w, "height": h,
                     "image_sha256": "0" * 64})
        boxes = [[w / 6, h / 5, w / 2, h / 2], None, [w / 2, h / 3, w - 3, h - 3], [0, 0, w / 3, h / 4]]
        cands = []
        for j, (ph, b) in enumerate(zip(["red box", "sky", "green ball", "wall"], boxes)):
            c = {"phrase": ph, "lemma": ph.split()[-1], "source": "chosen_first" if j == 0 else "chosen_rest",
                 "box": b, "score": 0.9 if b else None, "box_score": 0.9 if b else None,
                 "mask": None, "mask_iou": None, "mask_area": None}
            if b:
                m = box_mask(b, h, w)
                save_mask(m, tmp_path / "seg" / "masks" / f"s{k}_{j}.png")
                c.update(mask=f"masks/s{k}_{j}.png", mask_area=float(m.mean()))
            cands.append(c)
        seg.append({"id": f"s{k}", "image_path": str(p), "width": w, "height": h, "mask_kind": "bbox",
                    "mask": "bbox", "candidates": cands})
    (tmp_path / "prepared.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prep))
    (tmp_path / "seg").mkdir(exist_ok=True)
    (tmp_path / "seg" / "segment.jsonl").write_text("".join(json.dumps(r) + "\n" for r in seg))
    return tmp_path / "seg" / "segment.jsonl", tmp_path / "prepared.jsonl"


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _run(tmp_path, name, **kw):
    seg, prep = _data(tmp_path) if not (tmp_path / "seg" / "segment.jsonl").exists() else (
        tmp_path / "seg" / "segment.jsonl", tmp_path / "prepared.jsonl")
    out = tmp_path / name
    kw.setdefault("batch_size", 2)
    stats = run_verify(seg, prep, out / "verify.jsonl", out / "rejects.jsonl", progress=False, **kw)
    return stats, _rows(out / "verify.jsonl"), _rows(out / "rejects.jsonl")


# ---------------------------------------------------------------------------------------------- pieces


def test_verify_prompt_text():
    assert verify_prompt("What  is\nthis?", "A dog.") == (
        "Question: What is this?\nAnswer: A dog.\nIs this answer correct for the image? Answer yes or no.")


def test_hidden_image_hides_exactly_the_mask(tmp_path):
    im = _img(tmp_path / "a.png", (90, 60))
    mask = np.zeros((60, 90), bool)
    mask[10:30, 20:50] = True
    for fill in ("black", "mean", "blur"):
        out = np.asarray(hidden_image(im, mask, [20, 10, 50, 30], fill=fill))
        assert (out[~mask] == np.asarray(im)[~mask]).all()  # nothing outside the region changes
        if fill == "black":
            assert (out[mask] == 0).all()
        if fill == "mean":  # one colour: the mean outside the region
            assert len(np.unique(out[mask].reshape(-1, 3), axis=0)) == 1


def test_verify_scores_tiny_vlm_batched_equals_single(vlm, tmp_path):
    """Batched (left padding, logits of the last position only) == a plain batch-1 forward over the full
    sequence's logits, log-softmax taken here."""
    model, proc = vlm
    ims = [_img(tmp_path / f"{k}.png", s, k) for k, s in enumerate([(120, 80), (70, 110), (90, 60)])]
    qs = ["What is this?", "Is there a red box in the picture, and what colour is the ball next to it?", "Where?"]
    ans = ["A red box.", "Yes, green.", "On the left side of the table."]
    got = verify_scores(model, proc, ims, qs, ans, batch_size=2)
    assert len(got) == 3
    yes_id, no_id = yes_no_token_ids(proc)
    for im, q, a, (ly, ln) in zip(ims, qs, ans, got):
        assert np.isfinite(ly) and np.isfinite(ln) and ly < 0 and ln < 0
        enc = encode_prompts(proc, [prompt_text(proc, verify_prompt(q, a))], [im])
        with torch.inference_mode():
            logp = torch.log_softmax(model(**enc).logits[0, -1].double(), -1)
        assert ly == pytest.approx(float(logp[yes_id]), abs=1e-4)
        assert ln == pytest.approx(float(logp[no_id]), abs=1e-4)


def test_run_verify_real_vlm_decisions_consistent(vlm, tmp_path, monkeypatch):
    """The stage's own VLM path (model loaded by name; the module's copy is reused to save a load)."""
    import lpoi.models

    monkeypatch.setattr(lpoi.models, "load_vlm", lambda name, **k: vlm if name == "tiny/idefics2" else None)
    stats, rows, rej = _run(tmp_path, "real", model_name="tiny/idefics2", max_tries=3, on_fail="keep")
    assert [r["id"] for r in rows] == [f"s{k}" for k in range(6)] and rej == []
    for r in rows:
        t = r["tries"]
        assert 1 <= len(t) <= 3
        assert [x["index"] for x in t] == [0, 2, 3][:len(t)]  # masked candidates in order; 1 has no mask
        for x in t:
            assert x["says_yes"] == (x["logp_yes"] > x["logp_no"])
            assert np.isfinite(x["logp_yes"]) and np.isfinite(x["logp_no"])
        assert all(x["says_yes"] for x in t[:-1])  # it only moves on after a "yes"
        if r["verified"]:
            assert not t[-1]["says_yes"] and r["choice"] == t[-1]["index"]
        else:
            assert len(t) == 3 and t[-1]["says_yes"] and r["choice"] == 0
        assert r["object"]["index"] == r["choice"]
        assert (tmp_path / "real" / r["object"]["mask"]).resolve() == (
            tmp_path / "seg" / "masks" / f"{r['id']}_{r['choice']}.png").resolve()
    assert stats["calls"] == sum(len(r["tries"]) for r in rows)


# ---------------------------------------------------------------------------------------------- injected verifier


def _scripted(yes_for):
    """A verifier that says "yes" (logp_yes = -0.1 > logp_no = -2.3) exactly for candidates in ``yes_for``."""
    seen: list[VerifyItem] = []

    def decide(items):
        seen.extend(items)
        return [(-0.1, -2.3) if it.candidate in yes_for else (-2.3, -0.1) for it in items]

    decide.seen = seen
    return decide


def test_retry_moves_to_the_next_candidate(tmp_path):
    """Yes for candidate 0 -> it was not critical -> candidate 2 (1 has no mask) gets "no" -> chosen."""
    decide = _scripted({0})
    stats, rows, rej = _run(tmp_path, "retry", decide=decide, max_tries=3)
    assert rej == [] and len(rows) == 6
    for r in rows:
        assert r["choice"] == 2 and r["verified"] is True
        assert [(x["index"], x["says_yes"]) for x in r["tries"]] == [(0, True), (2, False)]
        assert r["object"]["phrase"] == "green ball"
    # the verifier saw the hidden image, the question and the chosen answer
    it = decide.seen[0]
    assert it.question.endswith("What is shown 0?") and it.answer == "A red box next to a green ball."
    w, h = it.image.size
    assert (np.asarray(it.image)[box_mask([w / 6, h / 5, w / 2, h / 2], h, w)] == 0).all()
    assert stats["verified_true"] == 6 and stats["calls"] == 12


def test_on_fail_keep_drop_and_max_tries(tmp_path):
    stats, rows, rej = _run(tmp_path, "keep", decide=_scripted({0, 2, 3}), max_tries=2, on_fail="keep")
    assert rej == []
    for r in rows:
        assert r["verified"] is False and r["choice"] == 0
        assert [x["index"] for x in r["tries"]] == [0, 2]  # max_tries = 2 masked candidates
    stats, rows, rej = _run(tmp_path, "drop", decide=_scripted({0, 2, 3}), max_tries=3, on_fail="drop")
    assert rows == []
    assert [r["reason"] for r in rej] == ["verify_failed"] * 6
    assert [x["index"] for x in rej[0]["tries"]] == [0, 2, 3]
    assert stats["rejects_by_reason"] == {"verify_failed": 6}


def test_disabled_makes_no_calls(tmp_path):
    def never(items):
        raise AssertionError("verify.enabled=false must not call the verifier")

    seg, _prep = _data(tmp_path, 3)
    rows_in = _rows(seg)
    rows_in[1]["candidates"][0]["mask"] = None  # sample s1: first candidate without a mask -> choice 2
    rows_in[2]["candidates"] = [dict(c, mask=None) for c in rows_in[2]["candidates"]]  # s2: no mask at all
    seg.write_text("".join(json.dumps(r) + "\n" for r in rows_in))
    stats, rows, rej = _run(tmp_path, "off", enabled=False, decide=never)
    assert [(r["id"], r["choice"], r["verified"], r["tries"]) for r in rows] == [("s0", 0, None, []), ("s1", 2, None, [])]
    assert [(r["id"], r["reason"]) for r in rej] == [("s2", "no_mask")]
    assert stats["calls"] == 0


def test_bad_params():
    with pytest.raises(ValueError, match="on_fail"):
        run_verify("a", "b", "c", "d", on_fail="maybe", decide=lambda x: [])
    with pytest.raises(ValueError, match="fill"):
        run_verify("a", "b", "c", "d", fill="pink", decide=lambda x: [])


# ---------------------------------------------------------------------------------------------- resume


def test_resume_byte_identical_with_real_vlm(vlm, tmp_path):
    model, proc = vlm
    from lpoi.listgen.verify import vlm_decider

    decide = vlm_decider(model, proc, batch_size=2)
    _run(tmp_path, "full", decide=decide)
    _run(tmp_path, "part", decide=decide, limit=3)
    with open(tmp_path / "part" / "verify.jsonl", "a") as f:
        f.write('{"id": "s3", "cho')  # killed mid-line
    stats, _, _ = _run(tmp_path, "part", decide=decide)
    assert stats["skipped"] == 3 and stats["written"] == 3  # s0-s2 done before; s3-s5 now
    assert (tmp_path / "part" / "verify.jsonl").read_bytes() == (tmp_path / "full" / "verify.jsonl").read_bytes()
