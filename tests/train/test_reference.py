"""The reference stage: values, file format, resume after a kill, and the checks training relies on."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lpoi.models import load_vlm
from lpoi.models.chat import processor_kwargs, prompt_text
from lpoi.train.data import load_lists, write_synthetic_lists
from lpoi.train.reference import ReferenceError, load_reference, run_reference

MODEL = "tiny/llava"



@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    return write_synthetic_lists(tmp_path_factory.mktemp("lists"), n_samples=5, k=3)


@pytest.fixture(scope="module")
def full_ref(lists, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "reference.jsonl"
    stats = run_reference(lists, out, model_name=MODEL, batch_size=2, micro_batch_sequences=4, progress=False)
    return out, stats


def _rows(path):
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return lines[0], lines[1:]


def test_values_equal_one_sequence_at_a_time(lists, full_ref):
    """Each stored value == log pi(answer | image, prompt) summed over the answer tokens, computed alone."""
    out, stats = full_ref
    meta, rows = _rows(out)
    assert meta == {
        "meta": {"format": 2, "model_name": MODEL, "k": 3, "max_length": None, "dtype": "float32", "max_pixels": None}
    }
    assert stats["n_samples"] == stats["n_computed"] == 5 and stats["n_resumed"] == 0 and stats["k"] == 3
    model, processor = load_vlm(MODEL)
    samples = load_lists(lists)
    assert [r["id"] for r in rows] == [s.id for s in samples]

    def naive(s, answer, k):
        img = Image.open(s.images[k]).convert("RGB")
        pt = prompt_text(processor, s.prompt)
        n_prompt = processor(text=[pt], images=[[img]], return_tensors="pt", **processor_kwargs(processor))[
            "input_ids"
        ].shape[1]
        enc = processor(text=[pt + " " + answer + "</s>"], images=[[img]], return_tensors="pt")
        with torch.no_grad():
            logp = torch.log_softmax(model(**enc).logits[0].double(), -1)
        ids = enc["input_ids"][0]
        return sum(float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids)))

    for s, r in zip(samples, rows):
        assert r["digest"] == s.digest
        np.testing.assert_allclose(r["list"], [naive(s, s.chosen, k) for k in range(3)], atol=1e-5, rtol=0)
        assert r["rejected"] == pytest.approx(naive(s, s.rejected, 0), abs=1e-5)


def test_resume_after_kill_skips_finished_rows(lists, full_ref, tmp_path):
    out, _ = full_ref
    lines = out.read_text().splitlines(keepends=True)
    partial = tmp_path / "reference.jsonl"
    partial.write_text("".join(lines[:3]) + lines[3][:25])  # meta + 2 rows + a row cut mid-write
    stats = run_reference(lists, partial, model_name=MODEL, batch_size=2, progress=False)
    assert stats["n_resumed"] == 2 and stats["n_computed"] == 3
    meta_a, rows_a = _rows(out)
    meta_b, rows_b = _rows(partial)
    assert meta_a == meta_b and [r["id"] for r in rows_a] == [r["id"] for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        np.testing.assert_allclose(
            a["list"] + [a["rejected"]], b["list"] + [b["rejected"]], atol=1e-5, rtol=0
        )
    again = run_reference(lists, partial, model_name=MODEL, progress=False)  # finished: nothing to do
    assert again["n_computed"] == 0 and again["n_resumed"] == 5


def test_changed_tokenisation_recomputes(lists, full_ref, tmp_path):
    out, _ = full_ref
    path = tmp_path / "reference.jsonl"
    path.write_text(out.read_text())
    with pytest.warns(UserWarning, match="truncated to max_length=40"):
        stats = run_reference(lists, path, model_name=MODEL, max_length=40, progress=False)
    assert stats["n_computed"] == 5 and stats["n_resumed"] == 0
    meta, _ = _rows(path)
    assert meta["meta"]["max_length"] == 40


def test_load_reference_checks(lists, full_ref, tmp_path):
    out, _ = full_ref
    samples = load_lists(lists)
    lst, rej, _ = load_reference(out, samples, model_name=MODEL, max_length=None)
    _, rows = _rows(out)
    assert lst.shape == (5, 3) and rej.shape == (5,) and lst.dtype == torch.float64
    assert lst[2, 1].item() == rows[2]["list"][1] and rej[4].item() == rows[4]["rejected"]

    with pytest.raises(ReferenceError, match="model_name='tiny/llava'.*'tiny/idefics2'"):
        load_reference(out, samples, model_name="tiny/idefics2", max_length=None)
    with pytest.raises(ReferenceError, match="max_length"):
        load_reference(out, samples, model_name=MODEL, max_length=64)
    lines = out.read_text().splitlines(keepends=True)
    missing = tmp_path / "missing.jsonl"
    missing.write_text("".join(lines[:3] + lines[4:]))  # the row of s002 is gone
    with pytest.raises(ReferenceError, match="no reference log-probs for sample 's002'"):
        load_reference(missing, samples, model_name=MODEL, max_length=None)
    stale = tmp_path / "stale.jsonl"
    row = json.loads(lines[2])
    row["digest"] = "0" * 16
    stale.write_text("".join(lines[:2]) + json.dumps(row) + "\n" + "".join(lines[3:]))
    with pytest.raises(ReferenceError, match="sample 's001'.*different manifest row"):
        load_reference(stale, samples, model_name=MODEL, max_length=None)
    with pytest.raises(ReferenceError, match="not found"):
        load_reference(tmp_path / "nope.jsonl", samples, model_name=MODEL, max_length=None)


def test_rows_are_keyed_by_content_not_by_id(lists, full_ref, tmp_path):
    """Same ids and paths, other pixels in one sample's list (what lists.fill=mean does to every sample):
    only that sample is recomputed, and it equals a cold run on the new lists."""
    import shutil

    out, _ = full_ref
    new = tmp_path / "lists"
    shutil.copytree(lists.parent, new)
    img = np.asarray(Image.open(new / "images" / "s002_1.png").convert("RGB"))
    Image.fromarray(255 - img).save(new / "images" / "s002_1.png")
    path = tmp_path / "reference.jsonl"
    path.write_bytes(out.read_bytes())
    stats = run_reference(new / "lists.jsonl", path, model_name=MODEL, batch_size=2, micro_batch_sequences=4,
                          progress=False)
    assert stats["n_resumed"] == 4 and stats["n_computed"] == 1
    cold = run_reference(new / "lists.jsonl", tmp_path / "cold.jsonl", model_name=MODEL, batch_size=2,
                         micro_batch_sequences=4, progress=False)
    assert cold["n_resumed"] == 0
    by_id = lambda p: {r["id"]: r for r in _rows(p)[1]}  # noqa: E731
    assert by_id(path) == by_id(tmp_path / "cold.jsonl")  # every row, bit for bit
    old, now = by_id(out), by_id(path)
    assert old["s002"]["key"] != now["s002"]["key"] and old["s002"]["list"] != now["s002"]["list"]
    assert old["s002"]["seqs"] == now["s002"]["seqs"]  # same token ids; the pixels made the difference
    assert all(old[i] == now[i] for i in old if i != "s002")
