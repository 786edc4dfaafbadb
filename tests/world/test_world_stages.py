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
    "world_grid": ["--data", "{t}/data/world", "--lists", "{t}/data/lists", "--base", "{t}/models/world", "--out",
                   "{t}/data/grid", "--metrics", "{t}/m/w.json", "--table", "{t}/m/w.md", "--plot", "{t}/m/w.png"],
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
    assert p.world.train.beta == 0.1 and p.world.grid.methods == ["dpo", "mdpo", "lpoi"] and p.world.grid.seeds == [0, 1, 2]


@pytest.mark.parametrize("change,message", [
    ({"min_side": 30}, "world.min_side <= world.max_side"),
    ({"n_test": 2000}, "world.n_test"),
    ({"grid": {"methods": ["dpo", "dpo"], "seeds": [0]}}, "without repeats"),
    ({"name": "cubes"}, "world.name"),
])
def test_bad_world_values_name_the_key(change, message):
    raw = _compose("world=shapes")
    raw["world"].update(change)
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
    assert (tmp_path / "m" / "w.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    assert covered(log | {"world.grid.seeds"}, ["world.seed", "lists", "world.train"]) == ({"world.grid.seeds"}, set())
