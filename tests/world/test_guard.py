"""CI guard of the shapes world: the miniature at reduced size (fewer scenes, one seed), through the same library
calls as its stages, asserting only method-agnostic facts that must hold whatever the comparison shows:

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
    world = w.model_copy(update={
        "name": "shapes", "n_pretrain": 1000, "n_pairs": 160, "n_test": 60,
        "pretrain": PretrainParams(**{**w.pretrain.model_dump(), "steps": 300}),
        "train": w.train.model_copy(update={"epochs": 2}),  # 40 steps of 8 (the full run: 100)
        "grid": w.grid.model_copy(update={"methods": ["dpo", "lpoi"], "seeds": [0]}),
        "eval": w.eval.model_copy(update={"heldout_lists": 60}),
    })
    return p.model_copy(update={"world": world})


def test_shapes_world_guard(tmp_path):
    from lpoi.world.dataset import build_world
    from lpoi.world.grid import GridPaths, run_grid
    from lpoi.world.lists import build_world_lists
    from lpoi.world.pretrain import run_pretrain

    p = _guard_params()
    data, base, lists = tmp_path / "world", tmp_path / "base", tmp_path / "lists"
    reads = {s: {"world.name", "world.threads"} for s in ("pretrain", "world_grid")}  # stage scripts
    reads["world_data"] = {"world.name"}
    reads["world_lists"] = {"world.name"}
    build_world(ParamReads(p, reads["world_data"]).world, data)
    run_pretrain(ParamReads(p, reads["pretrain"]).world, data, base, progress=False)
    build_world_lists(ParamReads(p, reads["world_lists"]).world, data, lists)
    grid = run_grid(ParamReads(p, reads["world_grid"]), GridPaths(data, lists, str(base), tmp_path / "grid"),
                    log=lambda *_: None)

    # 1. the base model can see: held-out existence questions, half "yes", half "no"
    truth = {a["id"]: a["truth"] for a in read_json(data / "bench" / "amber" / "annotations.json")
             if a["type"] != "generative"}
    answers = [r for r in read_jsonl(tmp_path / "grid" / "base" / "answers.jsonl") if r["id"] in truth]
    correct = sum(r["response"].lower() == truth[r["id"]] for r in answers)
    lpoi = next(c for c in grid["cells"] if c["method"] == "lpoi")["rewards"]
    print(f"guard: base yes/no {correct}/{len(answers)}; training loss (first 10 -> last 10 steps) "
          + ", ".join(f"{c['cell']} {c['train']['loss_first10']:.3f} -> {c['train']['loss_last10']:.3f}"
                      for c in grid["cells"])
          + f"; LPOI held-out rewards {[round(x, 3) for x in lpoi['reward']]}")
    assert len(answers) == len(truth) >= 100
    assert _binomial_tail(correct, len(answers)) < 1e-4, f"base yes/no: {correct}/{len(answers)} correct"
    assert grid["base"]["amber"]["discriminative"]["overall"]["Accuracy"] == pytest.approx(
        100 * correct / len(answers), abs=0.1)

    # 2. preference training lowers the training loss, whatever the method
    for cell in grid["cells"]:
        t = cell["train"]
        assert t["steps"] == 40 and t["loss_last10"] < t["loss_first10"], (cell["cell"], t["loss_first10"],
                                                                          t["loss_last10"])

    # 3. LPOI ranks the held-out lists by visibility: the reward falls as the object disappears
    r = lpoi["reward"]
    assert lpoi["visibility"] == sorted(lpoi["visibility"], reverse=True) and lpoi["n"] == 60
    assert all(a > b for a, b in zip(r, r[1:])), f"LPOI held-out rewards by visibility: {r}"
    assert lpoi["ranking_accuracy"] > 0.5

    # and every param the world's code read on the way is declared in its stage's dvc.yaml entry, and vice versa
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage, keys in reads.items():
        assert covered(keys, stages[stage]["params"]) == (set(), set()), stage
