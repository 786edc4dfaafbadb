"""The command line a user meets: bad input ends in one line naming the problem (no traceback), and
`dvc exp run -S` with a misspelt or out-of-range key answers with the project's message before anything
runs (hydra_plugins/lpoi_params), saying which hand-edited values it replaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _stage(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _one_line_error(r: subprocess.CompletedProcess, *expected: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), r.stderr
    for text in expected:
        assert text in last, last


def test_corrupt_pairs_json_is_one_line(tmp_path):
    pairs = tmp_path / "pairs.json"
    pairs.write_text('[{"img_path": "a.png", "prompt": "p", "chosen": "c", "rejected": "r"},\n')
    (tmp_path / "images").mkdir()
    r = _stage("stages/prepare.py", "--pairs", str(pairs), "--images", str(tmp_path / "images"),
               "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json"))
    _one_line_error(r, str(pairs), "invalid JSON", "line 2")
    # LPOI_DEBUG=1 shows where it came from
    r = _stage("stages/prepare.py", "--pairs", str(pairs), "--images", str(tmp_path / "images"),
               "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json"), env={"LPOI_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_json_object_where_a_list_is_expected_says_so(tmp_path):
    template = tmp_path / "template.json"
    template.write_text(json.dumps({"question": "What is it?", "gt_answer": "a dog"}))
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"id": 0, "response": "a dog"}) + "\n")
    r = _stage("stages/score.py", "mmhal", "--answers", str(answers), "--template", str(template),
               "--out", str(tmp_path / "m.json"))
    _one_line_error(r, str(template), "expected a non-empty JSON list")


def test_too_many_generation_errors_fail_the_score_stage(tmp_path):
    """2 of 4 AMBER rows are generation errors (0.5 > score.max_error_ratio 0.05): no metrics, one line."""
    rows = [{"id": 1, "response": "A dog."}, {"id": 1005, "response": "Yes"},
            {"id": 1006, "response": "", "error": "missing"}, {"id": 11, "response": "", "error": "unreadable"}]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = _stage("stages/score.py", "amber", "--answers", str(answers), "--out", str(tmp_path / "amber.json"),
               "--data-dir", str(REPO / "data/sample/bench/amber"))
    _one_line_error(r, "2 of 4 answers (50.0%)", "score.max_error_ratio = 0.05", "'missing': 1")
    assert not (tmp_path / "amber.json").exists()


@pytest.fixture(scope="module")
def exp_repo(tmp_path_factory) -> Path:
    """A git + DVC repo holding this project's conf/, params.yaml, Hydra plugin and lpoi/config.py, and one
    stage that reads train.beta (so `dvc exp run` has something to run)."""
    dst = tmp_path_factory.mktemp("exp") / "repo"
    shutil.copytree(REPO / "conf", dst / "conf")
    shutil.copytree(REPO / "hydra_plugins", dst / "hydra_plugins", ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "lpoi").mkdir(parents=True)
    shutil.copy(REPO / "lpoi" / "config.py", dst / "lpoi" / "config.py")
    shutil.copy(REPO / "params.yaml", dst / "params.yaml")
    (dst / "dvc.yaml").write_text(
        "stages:\n  t:\n    cmd: python -c \"import yaml; print(yaml.safe_load(open('params.yaml'))['train']['beta'])\""
        " > out.txt\n    params: [train.beta]\n    outs: [out.txt]\n")
    env = _git_env()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "hydra.enabled", "True"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dst, env=env, check=True, capture_output=True, timeout=120)
    return dst


def _git_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the plugin must find lpoi by itself
    env.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _exp_run(repo: Path, *sets: str) -> subprocess.CompletedProcess:
    cmd = ["dvc", "exp", "run", *[x for s in sets for x in ("-S", s)]]
    return subprocess.run(cmd, cwd=repo, env=_git_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("setting", "message"), [
    ("train.betaa=1", "train.betaa: unknown key (did you mean train.beta?)"),
    ("+train.betaa=1", "train.betaa: unknown key (did you mean train.beta?)"),
    ("train.beta=-1", "train.beta must be > 0, got -1"),
])
def test_exp_run_answers_bad_keys_with_the_projects_message(exp_repo, setting, message):
    r = _exp_run(exp_repo, setting)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert message in out, out
    assert "To append to your config" not in out and "unexpected error" not in out, out
    assert "Running stage" not in out
    assert (exp_repo / "params.yaml").read_text() == (REPO / "params.yaml").read_text()  # untouched


def test_exp_run_names_the_hand_edits_it_replaces(exp_repo):
    params = exp_repo / "params.yaml"
    params.write_text(params.read_text().replace("  lr: 0.002\n", "  lr: 0.001\n"))
    subprocess.run(["git", "commit", "-qam", "hand edit"], cwd=exp_repo, env=_git_env(), check=True, timeout=60)
    r = _exp_run(exp_repo, "train.beta=0.3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "these values of the current params.yaml are replaced: train.lr: 0.001 -> 0.002" in r.stderr
    assert "train.beta" not in r.stderr.split("replaced:")[1]  # what -S asked for is not a loss
