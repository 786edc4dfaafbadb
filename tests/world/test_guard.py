"""CI guard of the shapes world: the study at reduced size (one base, one seed, DPO and LPOI, one configuration),
through the same library calls as its stages, asserting only method-agnostic facts that must hold whatever the
comparison shows:

* the pretrained base model beats chance on the held-out yes/no questions (balanced, so chance is 50 %);
* preference training lowers the training loss (every trained method);
* LPOI's rewards are ordered by visibility on held-out lists.

Which method wins is *not* asserted: that is the experiment's result, reported in the README, not a test.
"""

import math
from pathlib import Path

import pytest
import yaml
from world_helpers import ParamReads, covered

from lpoi.config import PretrainParams, load_params
from lpoi.io import read_json, read_jsonl
from headtree import committed  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2): the chance of doing this well by guessing."""
    return sum(math.comb(n, j) for j in range(k, n + 1)) / 2**n


def _guard_params():
    p = load_params(committed("params.yaml"))
    w = p.world
    study = w.study.model_copy(update={
        "methods": {m: w.study.methods[m] for m in ("dpo", "lpoi")}, "bases": 1, "seeds": [0], "also": [],
        "tune": w.study.tune.model_copy(update={"lr": [0.001], "beta": [0.1], "epochs": [1]}), "bootstrap": 200,
        "workers": 1})  # in this process, so that ParamReads sees every read (the pool has its own test)
    world = w.model_copy(update={
        "name": "shapes", "n_pretrain": 1000, "n_pairs": 100, "n_val": 30, "n_test": 60,
        "pretrain": PretrainParams(**{**w.pretrain.model_dump(), "steps": 300}), "study": study,
        "eval": w.eval.model_copy(update={"heldout_lists": 60}),
    })
    return p.model_copy(update={"world": world})


def test_shapes_world_guard(tmp_path):
    from lpoi.world.dataset import build_world
    from lpoi.world.lists import build_world_lists
    from lpoi.world.pretrain import pretrain_bases
    from lpoi.world.readme import table_markdown
    from lpoi.world.results import world_metrics
    from lpoi.world.study import StudyPaths, run_study

    p = _guard_params()
    data, models, lists = tmp_path / "world", tmp_path / "models", tmp_path / "lists"
    reads = {s: {"world.name"} for s in ("world_data", "pretrain", "world_lists", "world_grid")}  # stage scripts
    build_world(ParamReads(p, reads["world_data"]).world, data)
    wp = ParamReads(p, reads["pretrain"]).world
    pretrain_bases(wp, data, models, workers=wp.study.workers, log=lambda *_: None)
    build_world_lists(ParamReads(p, reads["world_lists"]).world, data, lists)
    pg = ParamReads(p, reads["world_grid"])
    study = run_study(pg, StudyPaths(data, lists, models, tmp_path / "grid"), log=lambda *_: None)
    metrics = world_metrics(pg, study)["world"]

    # 1. the base model can see: held-out existence questions, half "yes", half "no"
    truth = {a["id"]: a["truth"] for a in read_json(data / "bench" / "amber" / "annotations.json")
             if a["type"] != "generative"}
    answers = [r for r in read_jsonl(tmp_path / "grid" / "base" / "b0-test" / "answers.jsonl") if r["id"] in truth]
    correct = sum(r["response"].lower() == truth[r["id"]] for r in answers)
    lpoi = next(c for c in study["test"] if c["cell"]["method"] == "lpoi")["rewards"]
    print(f"guard: base yes/no {correct}/{len(answers)}; training loss (first 10 -> last 10 steps) "
          + ", ".join(f"{c['name']} {c['train']['loss_first10']:.3f} -> {c['train']['loss_last10']:.3f}"
                      for c in study["tune"] + study["test"])
          + f"; LPOI held-out log-ratios {[round(x, 3) for x in lpoi['log_ratio']]}")
    assert len(answers) == len(truth) >= 100
    assert _binomial_tail(correct, len(answers)) < 1e-4, f"base yes/no: {correct}/{len(answers)} correct"
    assert study["bases"]["test"][0]["eval"]["metrics"]["Accuracy"] == pytest.approx(100 * correct / len(answers),
                                                                                     abs=0.1)

    # 2. preference training lowers the training loss, whatever the method
    for cell in study["tune"] + study["test"]:
        t = cell["train"]
        assert t["steps"] >= 30 and t["loss_last10"] < t["loss_first10"], (cell["name"], t)

    # 3. LPOI ranks the held-out lists by visibility: the log-ratio falls as the object disappears
    r = lpoi["log_ratio"]
    assert lpoi["visibility"] == sorted(lpoi["visibility"], reverse=True) and lpoi["n"] == 60
    assert all(a > b for a, b in zip(r, r[1:])), f"LPOI held-out log-ratios by visibility: {r}"
    assert lpoi["ranking_accuracy"] > 0.5

    # 4. metrics/world.json: per method the selected configuration, the validation score that selected it, test
    # metrics with intervals, the sizes; the table shows every method
    for m in ("dpo", "lpoi"):
        assert metrics[m]["selected"] == {"lr": 0.001, "beta": 0.1, "epochs": 1}
        assert metrics[m]["validation"]["Cog"] == next(c for c in study["tune"] if c["cell"]["method"] == m)[
            "eval"]["metrics"]["Cog"]
        assert all(v["lo"] <= v["hi"] for v in metrics[m]["test"].values())
        assert metrics[m]["n"] == {"cells": 1, "bases": 1, "seeds": 1, "scenes": 60}
    assert metrics["lpoi"]["vs_lpoi"]["Cog"] == {"mean": 0.0, "lo": 0.0, "hi": 0.0}
    table = table_markdown({"world": metrics})
    assert "| DPO |" in table and "| LPOI |" in table

    # and every param the world's code read on the way is declared in its stage's dvc.yaml entry, and vice versa
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage, keys in reads.items():
        assert covered(keys, stages[stage]["params"]) == (set(), set()), stage
