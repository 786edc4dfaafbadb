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
    assert (repo / "report/contact_sheet.png").stat().st_size > 0
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
    assert "train.loss" in diff.get("metrics/summary.json", {}), diff  # the only DVC metrics file


# ------------------------------------------------------------------ the report stage and what dvc compares


def _metric_values(node, found: dict) -> dict:
    """Every metric value under a `dvc exp show --json` / `dvc metrics show --json` tree, by flat column name."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "metrics" and isinstance(value, dict):
                for path, entry in value.items():
                    data = entry.get("data", {}) if isinstance(entry, dict) else {}
                    _flatten_into(data, path, found)
            else:
                _metric_values(value, found)
    elif isinstance(node, list):
        for item in node:
            _metric_values(item, found)
    return found


def _flatten_into(data, prefix: str, out: dict) -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            _flatten_into(v, f"{prefix}:{k}" if ":" not in prefix else f"{prefix}.{k}", out)
    else:
        out.setdefault(prefix, []).append(data)


def test_report_stage_writes_summary_report_and_figures(repo, first_repro):
    from lpoi.report.markdown import table_mismatches
    from lpoi.report.summary import flat

    summary = json.loads((repo / "metrics/summary.json").read_text())
    values = flat(summary)
    assert len(values) <= 25 and summary["random_model"] is True
    assert all(v is None or isinstance(v, (int, float)) for v in values.values()), values
    page = (repo / "report/REPORT.md").read_text()
    assert table_mismatches(page, summary) == []
    for text in ("AMBER", "Object HalBench", "MMHal-Bench", "Training", "Tiny random models"):
        assert text in page, text
    for png in ("train_loss", "train_rewards", "contact_sheet", "amber_categories"):
        assert (repo / "report" / f"{png}.png").stat().st_size > 1000, png
    for name in ("amber", "objhal", "mmhal", "listgen"):  # the same honest label in every metrics file
        assert json.loads((repo / "metrics" / f"{name}.json").read_text())["random_model"] is True, name
    assert "prepare: kept 24 of 26 records; rejected 2" in first_repro
    assert "is_gradient_checkpointing" not in first_repro


def test_exp_show_and_metrics_diff_hold_only_comparable_numbers(repo, first_repro):
    """After dvc repro (and the exp run above): few metric columns, no strings, no timings/paths/hashes."""
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo))
    columns = _metric_values(shown, {})
    assert 0 < len(columns) <= 40, sorted(columns)
    assert not [c for c, vs in columns.items() if any(isinstance(v, str) for v in vs)]
    diff = _run(["dvc", "metrics", "diff", "--all"], repo)
    assert not re.search(r"seconds|per_s|_path|sha|hash|batch_size", diff), diff
