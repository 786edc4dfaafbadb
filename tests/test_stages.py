"""Stage plumbing: every entry point answers --help; dvc.yaml names only scripts and modules that exist.
(The persisted-folder mechanism is tested in tests/test_stage_dir.py, the runner in tests/test_stage_runner.py.)"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lpoi.stage import write_metrics

REPO = Path(__file__).resolve().parents[1]
STAGES = sorted(p.name for p in (REPO / "stages").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", STAGES)
def test_every_stage_has_help(script):
    r = subprocess.run([sys.executable, f"stages/{script}", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and len(r.stdout.splitlines()) > 3


def test_dvc_yaml_declares_the_dag_with_existing_code_deps():
    dag = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    expected = {"check_params", "prepare", "detect", "segment", "verify", "lists", "reference", "train", "generate", "score",
                "report", "download_data", "download_bench",
                "world_data", "pretrain", "world_lists", "world_grid"}  # the shapes world (no-ops unless world=shapes)
    assert expected == set(dag)
    for name, stage in dag.items():
        body = stage.get("do", stage)
        assert body["cmd"].startswith("python stages/")
        for dep in body["deps"]:
            if dep.startswith(("stages/", "lpoi/")) and "${" not in dep:
                assert (REPO / dep).exists(), f"{name}: dep {dep} does not exist"
        script = body["cmd"].split()[1]
        assert script in body["deps"], f"{name}: its script is not a dep"
    # training params must not reach list generation or the reference stage (exp run -S train.* reuses them)
    for name in ("prepare", "detect", "segment", "verify", "lists", "reference"):
        assert not any(str(p).startswith("train") for p in dag[name].get("params", [])), name


def test_write_metrics_rounds_floats(tmp_path):
    import json

    write_metrics(tmp_path / "m.json", {"a": 0.1 + 0.2, "b": {"c": [1 / 3]}, "n": 3})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 0.3, "b": {"c": [0.333333]}, "n": 3}


def test_bad_params_stop_a_stage_with_the_key(tmp_path):
    bad = yaml.safe_load((REPO / "params.yaml").read_text())
    bad["prepare"]["max_reject_ratio"] = 2
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(bad))
    r = subprocess.run([sys.executable, "stages/prepare.py", "--params", str(tmp_path / "p.yaml"), "--pairs", "x",
                        "--images", "y", "--out", str(tmp_path / "o"), "--metrics", str(tmp_path / "m.json")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "prepare.max_reject_ratio" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------- issue 19 (part B)

def test_check_params_is_upstream_of_every_stage():
    """DVC removes a stage's outputs only when it runs that stage, in the DAG's order: with check_params upstream of
    everything, a bad params.yaml stops `dvc repro` before any output is removed."""
    dag = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    check = dag["check_params"]
    assert check["cmd"].split()[1] == "stages/check_params.py" and "stages/check_params.py" in check["deps"]
    assert check["params"] == [{"params.yaml": None}]  # every section, present and future
    stamp = check["outs"][0]
    assert isinstance(stamp, str)  # cached (no cache: false): a fresh clone's check re-creates the same bytes
    for name, stage in dag.items():
        if name != "check_params":
            assert stamp in stage.get("do", stage)["deps"], f"{name} does not depend on {stamp}"


def test_dvc_sees_check_params_upstream_of_every_stage(tmp_path):
    """`dvc dag` (DVC's own reading of dvc.yaml, foreach stages expanded) has an edge from check_params to each."""
    import shutil

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, timeout=60)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True, timeout=120)
    r = subprocess.run(["dvc", "dag", "--dot"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    import re

    nodes = set(re.findall(r'^"([^"]+)";$', r.stdout, re.M))
    edges = set(re.findall(r'^"([^"]+)" -> "([^"]+)";$', r.stdout, re.M))
    assert "train" in nodes and "generate@amber" in nodes
    assert {b for a, b in edges if a == "check_params"} == nodes - {"check_params"}


def test_pick_device_names_model_device_when_the_machine_lacks_it():
    import torch

    from lpoi.stage import StageError, pick_device

    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last CUDA device, on any machine
    with pytest.raises(StageError, match=rf"^model\.device is '{missing}' but this machine has .*; use model\.device: auto or cpu$"):
        pick_device(missing)
    if not torch.cuda.is_available():
        with pytest.raises(StageError, match=r"no CUDA device \(torch.cuda.is_available\(\) is False\)"):
            pick_device("cuda")
    assert pick_device("cpu") == "cpu" and pick_device("auto") in ("cpu", "cuda")
