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
    expected = {"prepare", "detect", "segment", "verify", "lists", "reference", "train", "generate", "score",
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
