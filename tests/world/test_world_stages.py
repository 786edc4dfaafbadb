"""The world profile composes over the embedded default without changing it; with world: none the four world
stages are no-ops that write only their declared outputs; every param they read is declared in dvc.yaml."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lpoi.config import ParamsError, validate
from headtree import committed  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WORLD_STAGES = {
    "world_data": ["--out", "{t}/data/world"],
    "pretrain": ["--data", "{t}/data/world", "--out", "{t}/models/world", "--metrics", "{t}/m/p.json"],
    "world_lists": ["--data", "{t}/data/world", "--out", "{t}/data/lists", "--metrics", "{t}/m/l.json"],
    "world_grid": ["--data", "{t}/data/world", "--lists", "{t}/data/lists", "--bases", "{t}/models/world", "--out",
                   "{t}/data/grid", "--metrics", "{t}/m/w.json", "--table", "{t}/m/w.md", "--plot", "{t}/m/w.png",
                   "--pareto", "{t}/m/pareto.png"],
}


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)), resolve=True)


def test_shapes_profile_only_switches_the_world_on():
    default, shapes = _compose(), _compose("world=shapes")
    assert default["world"]["name"] == "none" and shapes["world"]["name"] == "shapes"
    assert {k: v for k, v in shapes.items() if k != "world"} == {k: v for k, v in default.items() if k != "world"}
    assert {k: v for k, v in shapes["world"].items() if k != "name"} == {
        k: v for k, v in default["world"].items() if k != "name"}
    p = validate(shapes)
    assert list(p.world.study.methods) == ["dpo", "dpo_anchor", "mdpo", "mdpo_crop", "lpoi", "lpoi_k3",
                                           "lpoi_no_anchor", "list_only"]
    assert p.world.study.bases >= 3 and p.world.study.bases * len(p.world.study.seeds) >= 10
    assert p.world.n_test >= 1000


def test_quick_profile_keeps_the_design():
    """shapes-quick: fewer bases, seeds, scenes and configurations; the same methods, selection rule, rejection and
    lists, and nothing outside the world changes."""
    default, full, quick = _compose(), _compose("world=shapes"), _compose("world=shapes-quick")
    assert {k: v for k, v in quick.items() if k != "world"} == {k: v for k, v in default.items() if k != "world"}
    pf, pq = validate(full).world, validate(quick).world
    assert pq.name == "shapes" and pq.study.methods == pf.study.methods and pq.study.select == pf.study.select
    assert (pq.lists, pq.study.rejection, pq.study.also, pq.train) == (pf.lists, pf.study.rejection, pf.study.also,
                                                                       pf.train)
    assert pq.study.bases * len(pq.study.seeds) < pf.study.bases * len(pf.study.seeds) and pq.n_test < pf.n_test


@pytest.mark.parametrize("change,message", [
    ({"min_side": 30}, "world.min_side <= world.max_side"),
    ({"n_test": 2000}, "world.n_test"),
    ({"study": {"seeds": [0, 0]}}, "without repeats"),
    ({"study": {"tune": {"seed": 1}, "seeds": [0, 1]}}, "tuning must not use a test seed"),
    ({"study": {"also": ["nope"]}}, r"world\.study\.also names \['nope'\]"),
    ({"study": {"methods": {"dpo": {"method": "dpo"}, "lpoi": {"method": "lpoi", "k": 9}}}}, r"world\.study\.methods\.lpoi\.k \(9\) exceeds"),
    ({"study": {"methods": {"dpo": {"method": "dpo", "weights": {"dpo": 0, "list": 1, "anchor": 1}},
                            "lpoi": {"method": "lpoi"}}}},
     r"world\.study\.methods\.dpo\.weights\.dpo is 0"),
    ({"name": "cubes"}, "world.name"),
])
def test_bad_world_values_name_the_key(change, message):
    raw = _compose("world=shapes")
    for key, value in change.items():  # one level deep: a study change keeps the study's other keys
        raw["world"][key] = {**raw["world"][key], **value} if isinstance(value, dict) else value
    with pytest.raises(ParamsError, match=message):
        validate(raw)


def test_world_stages_are_no_ops_by_default(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for stage, argv in WORLD_STAGES.items():
        cmd = [sys.executable, str(REPO / "stages" / f"{stage}.py"), "--params", str(committed("params.yaml")),
               *(a.format(t=tmp_path) for a in argv)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "world: none" in r.stdout
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["grid", "lists", "world"]
    assert all((tmp_path / d / "NONE").is_file() for d in ("data/world", "models/world", "data/lists", "data/grid"))
    assert json.loads((tmp_path / "m" / "w.json").read_text()) == {}
    for png in ("w.png", "pareto.png"):
        assert (tmp_path / "m" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_world_stages_declare_their_code():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage in WORLD_STAGES:  # (their params are checked against what the code reads, in test_guard.py)
        deps = stages[stage]["deps"]
        assert f"stages/{stage}.py" in deps and ("lpoi/world/off.py" in deps or "lpoi/world" in deps), stage


def test_param_recorder(world_params):
    from world_helpers import ParamReads, covered

    from lpoi.config import Params

    p = Params(world=world_params())
    log = set()
    r = ParamReads(p, log)
    assert r.world.seed == 0 and r.lists.size == 5
    r.world.train.model_copy(update={"seed": 3})
    assert log == {"world.seed", "lists.size", "world.train"}
    assert covered(log, ["world.seed", "lists", "world.train", "verify"]) == (set(), {"verify"})
    assert covered(log | {"world.study.seeds"}, ["world.seed", "lists", "world.train"]) == ({"world.study.seeds"}, set())
