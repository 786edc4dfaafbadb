"""``compute.train_processes``: the train stage re-launches itself under ``accelerate launch``, inside DVC.

The slow test runs the committed project (commit to test a change): ``dvc repro --single-item train`` with
``compute.train_processes: 2`` (two gloo processes, conf/accelerate/ddp.yaml as shipped) ends at the adapter
of the stage run as one process with the same global batch, and ``dvc.lock`` records the setting.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from headtree import head_tree
from lpoi.config import ComputeParams, ParamsError, validate
from lpoi.train.launch import LAUNCHED, LaunchError, launch_command, should_launch


def test_one_process_never_launches_and_launched_ranks_never_launch_again():
    two = ComputeParams(train_processes=2)
    assert not should_launch(ComputeParams(), environ={})
    assert should_launch(two, environ={})
    assert not should_launch(two, environ={LAUNCHED: "1"})
    assert not should_launch(two, environ={"WORLD_SIZE": "2"})  # started under a launcher by hand


def test_the_command_names_the_config_and_the_process_count():
    cmd = launch_command(ComputeParams(train_processes=4, accelerate="fsdp"), None, "stages/train.py", ["--out", "x"])
    i = cmd.index("--config_file")
    assert Path(cmd[i + 1]).name == "fsdp.yaml" and Path(cmd[i + 1]).is_file()
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[-3:] == ["stages/train.py", "--out", "x"]


def test_bad_compute_settings_fail_in_one_line_naming_the_key(tmp_path):
    with pytest.raises(ParamsError, match=r"compute\.train_processes"):
        validate({"compute": {"train_processes": 0}})
    with pytest.raises(ParamsError, match=r"compute\.accelerate"):
        validate({"compute": {"accelerate": "deepspeed"}})
    with pytest.raises(LaunchError, match="nope.yaml not found"):
        launch_command(ComputeParams(train_processes=2), tmp_path / "nope.yaml", "stages/train.py", [])


# ---------------------------------------------------------------------------------------------- under DVC

TRAIN = {"reference": "online", "beta": 1.0, "lr": 3e-3, "max_steps": 3, "epochs": 1, "save_steps": 0, "seed": 3,
         "scheduler": "linear", "warmup_ratio": 0.0, "lora": {"r": 4, "alpha": 16, "dropout": 0.0,
                                                              "target_modules": "all-linear",
                                                              "exclude_vision_tower": False}}


def _env() -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@e")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)  # the stage scripts put their own checkout first
    return env


def _run(cmd, cwd, timeout=400) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-5000:]}"
    return r.stdout + r.stderr


def _set_params(repo: Path, **sections) -> None:
    p = yaml.safe_load((repo / "params.yaml").read_text())
    for name, values in sections.items():
        p[name].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def _adapter(out: Path):
    from safetensors.torch import load_file

    return load_file(out / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
def test_dvc_trains_with_two_processes_as_one_process_with_the_same_global_batch(tmp_path):
    from lpoi.train.data import write_synthetic_lists

    repo = tmp_path / "repo"
    shutil.copytree(head_tree(), repo, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "dvc.lock").unlink(missing_ok=True)
    write_synthetic_lists(repo / "data" / "lists", n_samples=6, k=3)
    (repo / "data" / "reference").mkdir(parents=True)
    (repo / "data" / "reference" / "unused").write_text("train.reference: online\n")
    _set_params(repo, model={"name": "tiny/llava"}, train={**TRAIN, "batch_size": 1},
                compute={"train_processes": 2, "accelerate": "ddp"})
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        _run(cmd, repo)
    _run(["dvc", "repro", "--single-item", "check_params"], repo)
    log = _run(["dvc", "repro", "--single-item", "train"], repo, timeout=600)
    assert "2 processes: accelerate launch" in log, log[-3000:]

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]
    assert lock["params"]["params.yaml"]["compute.train_processes"] == 2
    assert "conf/accelerate/ddp.yaml" in lock["cmd"]
    assert any(d["path"] == "conf/accelerate/ddp.yaml" for d in lock["deps"])

    # the same stage as one process x batch 2 (same global batch), outside DVC, into another folder
    _set_params(repo, train={"batch_size": 2}, compute={"train_processes": 1})
    _run([sys.executable, "stages/train.py", "--lists", "data/lists", "--reference", "data/reference",
          "--out", str(tmp_path / "one"), "--live", str(tmp_path / "live1")], repo)

    a, b = _adapter(tmp_path / "one"), _adapter(repo / "models" / "lpoi")
    assert a.keys() == b.keys()
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 1e-3  # it did train
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    # only rank 0 logged: one curve row per step
    rows = (repo / "metrics" / "train" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    assert len(rows) == 1 + 3
