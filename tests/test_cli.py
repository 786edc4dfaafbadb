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
from headtree import committed  # noqa: E402

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
    shutil.copy(committed("params.yaml"), dst / "params.yaml")
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
    assert (exp_repo / "params.yaml").read_text() == committed("params.yaml").read_text()  # untouched


def test_exp_run_names_the_hand_edits_it_replaces(exp_repo):
    params = exp_repo / "params.yaml"
    params.write_text(params.read_text().replace("  lr: 0.002\n", "  lr: 0.001\n"))
    subprocess.run(["git", "commit", "-qam", "hand edit"], cwd=exp_repo, env=_git_env(), check=True, timeout=60)
    r = _exp_run(exp_repo, "train.beta=0.3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "these values of the current params.yaml are replaced: train.lr: 0.001 -> 0.002" in r.stderr
    assert "train.beta" not in r.stderr.split("replaced:")[1]  # what -S asked for is not a loss


# ---------------------------------------------------------------------------------------------- issue 19 (part B)

def test_exp_run_names_an_unknown_profile_and_lists_the_profiles(exp_repo):
    before = (exp_repo / "params.yaml").read_text()
    r = _exp_run(exp_repo, "model=nope")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    profiles = ", ".join(sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml")))
    assert f"model=nope is not a profile; profiles: {profiles}" in out, out
    assert "unexpected error" not in out and "Config search path" not in out, out
    assert (exp_repo / "params.yaml").read_text() == before  # untouched


def _bad_params(tmp_path: Path, **changes) -> Path:
    import yaml

    raw = yaml.safe_load(committed("params.yaml").read_text())
    for dotted, value in changes.items():
        *head, last = dotted.split("__")
        d = raw
        for h in head:
            d = d[h]
        d[last] = value
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "bad.yaml"


def test_check_params_stops_on_a_bad_params_file_in_one_line(tmp_path):
    stamp = tmp_path / "params.ok"
    (tmp_path / "p.yaml").write_text("train: {beta: .inf}\n")
    r = _stage("stages/check_params.py", "--params", str(tmp_path / "p.yaml"), "--out", str(stamp))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "train.beta: input should be a finite number, got inf", r.stderr
    assert not stamp.exists()
    r = _stage("stages/check_params.py", "--out", str(stamp))
    assert r.returncode == 0, r.stderr
    first = stamp.read_bytes()
    r = _stage("stages/check_params.py", "--params", str(_bad_params(tmp_path, train__beta=0.3)), "--out", str(stamp))
    assert r.returncode == 0 and stamp.read_bytes() == first  # a valid edit re-runs no other stage through the stamp


def test_a_bad_params_yaml_under_dvc_repro_keeps_the_outputs(tmp_path):
    """A real `dvc repro train` after a hand edit: check_params fails first, train's output is not removed. (The
    same DAG without the check stage loses it: DVC removes a stage's outputs before its command runs.)"""
    import yaml

    repo = tmp_path / "repo"
    for rel in ("stages/check_params.py", "stages/_common.py", "lpoi/__init__.py", "lpoi/config.py", "lpoi/io.py"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, repo / rel)
    shutil.copy(committed("params.yaml"), repo / "params.yaml")
    check = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["check_params"]
    check["deps"] = [d for d in check["deps"] if (repo / d).exists()]
    train = {"cmd": "python -c \"import yaml; open('adapter.txt', 'w').write(str(yaml.safe_load(open('params.yaml'))"
                    "['train']['beta']))\"", "params": ["train.beta"], "outs": ["adapter.txt"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "check_params": check, "train": {**train, "deps": check["outs"]},
        # a stage that validates the params itself, as every stage does, but is not downstream of check_params
        "unguarded": {**train, "cmd": "python stages/check_params.py --out unguarded.ok && "
                      + train["cmd"].replace("adapter.txt", "unguarded.txt"), "outs": ["unguarded.txt"]}}}))
    env = _git_env()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"],
                ["dvc", "repro"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, timeout=300)
    assert (repo / "adapter.txt").read_text() == "0.1"
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("  beta: 0.1\n", "  beta: .inf\n", 1))
    r = subprocess.run(["dvc", "repro", "train"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "train.beta: input should be a finite number, got inf" in r.stderr, r.stderr
    assert "Running stage 'train'" not in r.stdout + r.stderr
    assert (repo / "adapter.txt").read_text() == "0.1"  # kept
    assert (repo / "unguarded.txt").read_text() == "0.1"
    r = subprocess.run(["dvc", "repro", "unguarded"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "train.beta: input should be a finite number" in r.stderr
    assert not (repo / "unguarded.txt").exists()  # removed by DVC before the stage refused the params: the old way


def test_a_device_the_machine_lacks_stops_the_stage_in_one_line(tmp_path):
    import torch

    missing = f"cuda:{torch.cuda.device_count()}"
    (tmp_path / "prepared").mkdir()
    r = _stage("stages/detect.py", "--params", str(_bad_params(tmp_path, model__device=missing)),
               "--prepared", str(tmp_path / "prepared"), "--out", str(tmp_path / "detect"))
    _one_line_error(r, f"model.device is '{missing}' but this machine has", "use model.device: auto or cpu")


def test_a_data_folder_outside_data_stops_prepare_in_one_line(tmp_path):
    r = _stage("stages/prepare.py", "--params", str(_bad_params(tmp_path, data__images="/etc")),
               "--pairs", "data/sample/pairs.json", "--images", "/etc", "--out", str(tmp_path / "o"),
               "--metrics", str(tmp_path / "m.json"))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("data.images must be a path under data/ in the repository")


_FULL_STAGE = '''
import sys
sys.path.insert(0, {stages!r})
from _common import parser, run


def main():
    ap = parser("a stage whose disk fills up")
    ap.add_argument("--out", required=True)
    ap.add_argument("--how", required=True)
    a = ap.parse_args()
    if a.how == "write":  # /dev/full: every write fails with ENOSPC, as on a full disk
        with open("/dev/full", "wb", buffering=0) as f:
            f.write(b"x")
    elif a.how == "checkpoint":  # what torch.distributed.checkpoint raises: the OSError hides two levels down
        import traceback

        from torch.distributed.checkpoint.api import CheckpointException
        try:
            try:
                with open("/dev/full", "wb", buffering=0) as f:
                    f.write(b"x")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        except RuntimeError as e:
            raise CheckpointException("save", {{0: (e, traceback.extract_tb(e.__traceback__))}}) from None
    elif a.how == "dcp":
        import torch
        import torch.distributed.checkpoint as dcp

        dcp.save({{"w": torch.zeros(1 << 16)}}, checkpoint_id=a.out + "/ckpt", no_dist=True)
    elif a.how == "torch.save":
        import torch

        torch.save(torch.zeros(1 << 16), a.out + "/x.pt")


run(main)
'''


def _full_stage(tmp_path: Path, out: Path, how: str) -> subprocess.CompletedProcess:
    script = tmp_path / "full_stage.py"
    script.write_text(_FULL_STAGE.format(stages=str(REPO / "stages")))
    return _stage(str(script), "--out", str(out), "--how", how)


@pytest.mark.parametrize("how", ["write", "checkpoint"])
def test_a_full_disk_ends_a_stage_in_one_line_naming_it(tmp_path, how):
    r = _full_stage(tmp_path, tmp_path / "out", how)
    _one_line_error(r, "disk full (ENOSPC", f"writing {tmp_path / 'out'} (", "KiB free)", "free some space")


@pytest.fixture
def full_fs(tmp_path):
    """A real 64 KiB filesystem (tmpfs; needs root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True, timeout=30).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


@pytest.mark.parametrize("how", ["dcp", "torch.save"])
def test_a_really_full_disk_ends_a_stage_in_one_line(tmp_path, full_fs, how):
    """torch.distributed.checkpoint (train's checkpoints) and torch.save into a filesystem that fills up."""
    r = _full_stage(tmp_path, full_fs, how)
    _one_line_error(r, "disk full (ENOSPC", f"writing {full_fs} (")


def test_download_stage_answers_bad_params_in_one_line(tmp_path):
    r = _stage("stages/download.py", "--profile", "data", "--params", str(_bad_params(tmp_path, seed=-1)),
               "--dest", str(tmp_path / "d"))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "seed: input should be greater than or equal to 0, got -1", r.stderr


@pytest.mark.parametrize("stage", ["detect", "segment", "verify"])
def test_no_stage_has_a_hand_made_shard_path(stage):
    """One way to scale (docs/scaling.md): the ``--shard i/n`` processes and their merge module are gone."""
    import importlib.util

    r = _stage(f"stages/{stage}.py", "--help")
    assert r.returncode == 0, r.stderr
    assert "--shard" not in r.stdout
    assert importlib.util.find_spec("lpoi.listgen.shard") is None
