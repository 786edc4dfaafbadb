"""The bad-input corpus through the whole list-generation DAG: prepare -> detect -> segment -> verify ->
lists -> reference -> train, on the tiny models, with ``prepare.max_reject_ratio: 1.0`` (train: one epoch).

Nothing may crash, and every input record must be accounted for: rejected by prepare with a reason and
(where it has one) its id, or prepared and then either a list with reference log-probs or a reject row
with a reason in a later stage. The stage functions are called as the stage scripts call them, with the
committed params.yaml.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from badfiles import build_corpus

from lpoi.config import load_params
from lpoi.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict]:
    return list(read_jsonl(path)) if path.exists() else []


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from lpoi.listgen.detect import run_detect
    from lpoi.listgen.lists import run_lists
    from lpoi.listgen.prepare import PromptBudget, run_prepare
    from lpoi.listgen.segment import run_segment
    from lpoi.listgen.verify import run_verify
    from lpoi.train.recipe import TrainPaths, train
    from lpoi.train.reference import run_reference

    tmp = tmp_path_factory.mktemp("bad_inputs")
    # 48x40 scenes: large enough for the tiny detector's fixed-size input, small enough to be quick
    root, cases = build_corpus(tmp, scene_size=(48, 40), budget=True)
    pairs = tmp / "pairs.json"  # the JSON list form of the mDPO data
    pairs.write_text(json.dumps([r for r, _ in cases]))  # ASCII: lone surrogates in the corpus as \u escapes
    p = load_params(REPO / "params.yaml")
    p = p.model_copy(update={"prepare": p.prepare.model_copy(update={"max_reject_ratio": 1.0})})
    d = tmp / "data"
    dev, dt = "cpu", p.model.dtype
    budget = PromptBudget.for_model(p.model.name, p.reference.max_length, p.model.trust_remote_code,
                                    max_pixels=p.model.max_pixels)
    stats = {"prepare": run_prepare(pairs, root, d / "prepared/prepared.jsonl", d / "prepared/rejects.jsonl",
                                    p.prepare, budget=budget)}
    prepared = d / "prepared/prepared.jsonl"
    de = p.detect
    stats["detect"] = run_detect(prepared, d / "detect/detect.jsonl", d / "detect/rejects.jsonl",
                                 model_name=de.model, box_threshold=de.box_threshold,
                                 text_threshold=de.text_threshold, batch_size=de.batch_size,
                                 max_candidates=de.max_candidates, fallback=de.fallback, seed=p.seed,
                                 device=dev, dtype=dt, progress=False)
    stats["segment"] = run_segment(d / "detect/detect.jsonl", d / "segment/segment.jsonl", d / "segment/masks",
                                   model_name=p.segment.model, batch_size=p.segment.batch_size,
                                   max_masks_per_sample=p.verify.max_tries, mask_kind=p.lists.mask,
                                   device=dev, dtype=dt, rejects_path=d / "segment/rejects.jsonl", progress=False)
    v = p.verify
    stats["verify"] = run_verify(d / "segment/segment.jsonl", prepared, d / "verify/verify.jsonl",
                                 d / "verify/rejects.jsonl", enabled=v.enabled, model_name=v.model or p.model.name,
                                 max_tries=v.max_tries, on_fail=v.on_fail, fill=p.lists.fill,
                                 batch_size=v.batch_size, device=dev, dtype=dt, progress=False)
    li = p.lists
    stats["lists"] = run_lists(prepared, d / "verify/verify.jsonl", d / "lists", size=li.size, mode=li.mode,
                               fill=li.fill, highlight=li.highlight, mask_kind=li.mask, num_workers=0)
    r = p.reference
    stats["reference"] = run_reference(d / "lists/lists.jsonl", d / "reference/reference.jsonl",
                                       model_name=p.model.name, dtype=dt, max_length=r.max_length,
                                       micro_batch_sequences=r.micro_batch_sequences, device=dev, progress=False)
    t = p.train.model_copy(update={"epochs": 1, "save_steps": 0})
    stats["train"] = train(t, p.model, p.reference, TrainPaths(lists=d / "lists/lists.jsonl", out=d / "train",
                                                               reference=d / "reference/reference.jsonl"))
    return cases, d, stats


def test_every_record_is_prepared_or_rejected_with_reason_and_id(pipeline):
    cases, d, stats = pipeline
    prepared = _rows(d / "prepared/prepared.jsonl")
    rejects = _rows(d / "prepared/rejects.jsonl")
    assert stats["prepare"]["records_in"] == len(cases) == len(prepared) + len(rejects)
    assert sorted([r["index"] for r in rejects]) == [i for i, (_, want) in enumerate(cases) if want != "ok"]
    for r in rejects:
        record, want = cases[r["index"]]
        assert r["reason"] == want and r["detail"], r
        given = record.get("id") if isinstance(record, dict) else None
        if isinstance(given, (str, int)) and not isinstance(given, bool):
            assert r["id"] == str(given).encode("utf-8", "backslashreplace").decode(), r  # surrogates escaped
    assert len(prepared) == sum(want == "ok" for _, want in cases)


def test_every_prepared_record_reaches_the_reference_or_a_downstream_reject(pipeline):
    cases, d, stats = pipeline
    prepared_ids = [r["id"] for r in _rows(d / "prepared/prepared.jsonl")]
    lists = {r["id"]: r for r in _rows(d / "lists/lists.jsonl")}
    downstream: dict[str, tuple[str, str]] = {}
    for stage in ("detect", "segment", "verify", "lists"):
        for r in _rows(d / stage / "rejects.jsonl"):
            assert r.get("reason") and r["id"] in prepared_ids, (stage, r)
            assert r["id"] not in downstream and r["id"] not in lists, (stage, r)  # dropped once, never listed
            downstream[r["id"]] = (stage, r["reason"])
    assert set(lists) | set(downstream) == set(prepared_ids)
    assert len(lists) >= len(prepared_ids) // 2  # most of the odd-but-valid records make a list
    reference = _rows(d / "reference/reference.jsonl")
    assert reference[0].get("meta") and {r["id"] for r in reference[1:]} == set(lists)
    for r in reference[1:]:
        assert len(r["list"]) == 5 and all(isinstance(x, float) and x < 0 for x in [*r["list"], r["rejected"]])
    assert stats["reference"]["n_computed"] == len(lists)


def test_odd_but_valid_records_survive_intact(pipeline):
    """Placeholders gone before any model sees the text; an id unfit for a file name, a 20:1 strip, an
    8x8 image and texts at the length limits are processed like any other record."""
    cases, d, _ = pipeline
    lists = {r["id"]: r for r in _rows(d / "lists/lists.jsonl")}
    prepared = {r["id"]: r for r in _rows(d / "prepared/prepared.jsonl")}
    assert prepared["ph"]["prompt"] == "What is on the table?"
    # invisible characters gone, NFC, before any model sees the text; the normalised id is the id
    assert (prepared["invisible"]["prompt"], prepared["invisible"]["chosen"]) == ("What is\u00a0there?",
                                                                                  "Caf\u00e9 au lait.")
    assert lists["invisible"]["chosen"] == "Caf\u00e9 au lait." and "caf\u00e9" in lists
    for r in _rows(d / "lists/lists.jsonl"):
        assert "<image>" not in (r["prompt"] + r["chosen"] + r["rejected"]).lower()
    for sid in ("ph", "wide", "at-the-limits", next(i for i in prepared if i.startswith("a/../../b"))):
        assert sid in lists, sid
        assert all((d / "lists" / img).resolve().is_relative_to((d / "lists").resolve()) for img in lists[sid]["images"])
    assert prepared["wide"]["width"] == 160 and prepared["wide"]["height"] == 8


def test_every_list_trains_with_finite_losses(pipeline):
    """What survived list generation (normalised texts included) trains: one epoch, every step finite."""
    _, d, stats = pipeline
    n = len(_rows(d / "lists/lists.jsonl"))
    tr = stats["train"]
    assert tr["steps"] == -(-n // tr["global_batch"]) and len(tr["history"]) == tr["steps"]
    assert all(math.isfinite(row["loss"]) for row in tr["history"])
    assert (Path(tr["adapter_dir"]) / "adapter_model.safetensors").is_file()
