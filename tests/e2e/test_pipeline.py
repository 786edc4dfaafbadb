"""The whole DAG on the embedded default, as a user runs it: dvc repro, a no-op re-run, dvc exp run -S,
dvc metrics diff. Runs in a copy of the repository (its own git repo), so the checkout stays clean."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

LISTGEN_STAGES = {"prepare", "detect", "segment", "verify", "lists", "reference"}
def _copy_repo(dst: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, tracked):
        src = REPO / rel
        if not src.is_file():
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)
    # .dvc/config is tracked; caches and outputs are not, so the copy starts clean
    for p in ("dvc.lock",):
        (dst / p).unlink(missing_ok=True)


def _env() -> dict:
    env = dict(os.environ)
    env.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    # the stage scripts must run with this interpreter (the one that has the project installed)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _run(cmd: list[str], cwd: Path, timeout: int = 900) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{out[-6000:]}"
    return out


def _ran(output: str) -> set[str]:
    return {m.split("@")[0] for m in re.findall(r"Running stage '([^']+)'", output)}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("e2e") / "repo"
    _copy_repo(dst)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        _run(cmd, dst)
    return dst


@pytest.fixture(scope="module")
def first_repro(repo) -> str:
    return _run(["dvc", "repro"], repo, timeout=1500)


def test_full_dag_runs_and_writes_documented_metrics(repo, first_repro):
    assert _ran(first_repro) >= LISTGEN_STAGES | {"train", "generate", "score", "report"}
    m = lambda name: json.loads((repo / "metrics" / name).read_text())  # noqa: E731
    assert {"records_in", "records_out", "rejects_by_reason"} <= m("prepare.json").keys()
    assert m("prepare.json")["rejects_by_reason"]  # the sample holds two bad records on purpose
    listgen = m("listgen.json")
    assert {"records_in", "records_out", "detection_rate", "verify_pass_rate"} <= listgen.keys()
    amber = m("amber.json")
    assert {"CHAIR", "Cover", "Hal", "Cog"} <= amber["generative"].keys()
    assert {"Accuracy", "Precision", "Recall", "F1"} <= amber["discriminative"]["overall"].keys()
    assert "amber_score" in amber
    assert {"CHAIRs", "CHAIRi", "recall"} <= m("objhal.json").keys()
    assert {"score", "hallucination_rate", "per_type", "n_judge_errors"} <= m("mmhal.json").keys()
    train = json.loads((repo / "metrics/train/metrics.json").read_text())
    assert "loss" in json.dumps(train)
    assert (repo / "metrics/contact_sheet.png").stat().st_size > 0
    assert (repo / "models/lpoi/adapter/adapter_model.safetensors").exists()


def test_lists_manifest_meets_contract(repo, first_repro):
    from PIL import Image

    manifest = repo / "data/lists/lists.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    assert rows
    prepared = {json.loads(x)["id"]: json.loads(x) for x in (repo / "data/prepared/prepared.jsonl").read_text().splitlines()}
    for r in rows:
        assert {"id", "prompt", "chosen", "rejected", "images", "visibility", "object", "verified"} <= r.keys()
        assert len(r["images"]) == len(r["visibility"]) == 5
        assert r["visibility"][0] == 1.0 and r["visibility"][-1] == 0.0
        assert all(a > b for a, b in zip(r["visibility"], r["visibility"][1:]))
        assert r["verified"] in (True, False, None)
        assert {"phrase", "source", "box", "score", "mask", "mask_area"} <= r["object"].keys()
        first = Image.open(manifest.parent / r["images"][0]).convert("RGB")
        original = Image.open(repo / prepared[r["id"]]["image_path"]).convert("RGB")
        assert first.tobytes() == original.tobytes()  # images[0] keeps the original pixels exactly
    # every input record is accounted for: a list, or a reject with a reason somewhere down the line
    rejected = set()
    for f in repo.glob("data/*/rejects.jsonl"):
        for line in f.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                assert row.get("reason"), row
                rejected.add(row.get("id") or f"#{row.get('index')}")
    n_in = json.loads((repo / "metrics/prepare.json").read_text())["records_in"]
    assert len(rows) + len(rejected) == n_in


def test_second_repro_does_nothing(repo, first_repro):
    out = _run(["dvc", "repro"], repo)
    assert not _ran(out), out


def test_exp_run_retrains_without_list_generation(repo, first_repro):
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "baseline"], repo)
    out = _run(["dvc", "exp", "run", "-S", "train.beta=0.2"], repo, timeout=1200)
    ran = _ran(out)
    assert "train" in ran and "generate" in ran and "score" in ran, out
    assert not (ran & LISTGEN_STAGES), f"re-ran {ran & LISTGEN_STAGES}"
    diff = json.loads(_run(["dvc", "metrics", "diff", "--json"], repo).splitlines()[-1] or "{}")
    assert "metrics/train/metrics.json" in diff, diff
