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

from headtree import head_tree

pytestmark = [pytest.mark.slow, pytest.mark.needs_nltk]  # the DAG extracts objects with NLTK (detect)

LISTGEN_STAGES = {"prepare", "detect", "segment", "verify", "lists", "reference"}
WORLD_STAGES = {"world_data", "pretrain", "world_lists", "world_grid"}
def _copy_repo(dst: Path) -> None:
    """The project as committed (what a fresh clone holds), never the working tree: a user's own
    ``dvc exp run`` or an uncommitted edit must not change what these tests check. Commit to test a change."""
    shutil.copytree(head_tree(), dst, ignore=shutil.ignore_patterns("__pycache__"))
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


def _run(cmd: list[str], cwd: Path, timeout: int = 900, **env) -> str:
    r = subprocess.run(cmd, cwd=cwd, env={**_env(), **env}, capture_output=True, text=True, timeout=timeout)
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
    # every stage process records the params it reads and the lpoi modules it imports (lpoi.config)
    return _run(["dvc", "repro"], repo, timeout=1500, LPOI_RECORD_PARAMS=str(repo.parent / "reads.jsonl"))


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


def test_a_fresh_repro_reproduces_the_committed_baseline(repo, first_repro):
    """`dvc.lock` and `metrics/` on main are the baseline users diff against: a fresh clone's `dvc repro` must
    give them byte for byte (regenerate and commit both whenever a stage's deps change; see the README)."""
    import yaml

    changed = [line for line in _run(["git", "status", "--porcelain", "--", "metrics"], repo).splitlines() if line]
    committed = yaml.safe_load((head_tree() / "dvc.lock").read_text())["stages"]
    fresh = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    stages = sorted(k for k in set(committed) | set(fresh) if committed.get(k) != fresh.get(k))
    assert not changed and not stages, (
        "a fresh `dvc repro` does not reproduce the committed baseline (run `dvc repro` and commit dvc.lock and "
        f"metrics/):\n  metrics files: {changed}\n  dvc.lock stages: {stages}")
    assert (repo / "dvc.lock").read_bytes() == (head_tree() / "dvc.lock").read_bytes()


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
    # quiet by default (issue 23): no Python warning, no weight-loading bars, no empty-folder warning of DVC's
    assert not re.search(r"\w+Warning: ", first_repro), [ln for ln in first_repro.splitlines() if "Warning" in ln]
    assert "Loading weights" not in first_repro and "is empty" not in first_repro
    assert "another version of the pipeline" not in first_repro


def test_exp_show_and_metrics_diff_hold_only_comparable_numbers(repo, first_repro):
    """After dvc repro (and the exp run above): few metric columns, no strings, no timings/paths/hashes."""
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo))
    columns = _metric_values(shown, {})
    assert 0 < len(columns) <= 40, sorted(columns)
    assert not [c for c, vs in columns.items() if any(isinstance(v, str) for v in vs)]
    diff = _run(["dvc", "metrics", "diff", "--all"], repo)
    assert not re.search(r"seconds|per_s|_path|sha|hash|batch_size", diff), diff
    assert not [c for c in columns if "world" in c]  # the miniature is off: no column, no empty row


def test_compare_and_plots_diff_show_the_exp_run_beside_the_baseline(repo, first_repro):
    """`lpoi-compare` prints the runs side by side with ↑/↓; `dvc plots diff` overlays their curves."""
    exps = json.loads(_run(["dvc", "exp", "show", "--json"], repo))
    base = exps[1]["name"] or exps[1]["rev"][:7]  # exps[0] is the workspace
    names = [r["name"] for b in exps for g in (b.get("experiments") or []) for r in g["revs"]]
    if not names:
        pytest.skip("needs the experiment of test_exp_run_retrains_without_list_generation")
    out = _run([sys.executable, "-m", "lpoi.report.compare", base, names[0]], repo)
    assert re.search(r"train\.beta\s+\S+=0\.1\s+\S+=0\.2", out) and "train.loss ↓" in out, out
    assert re.search(r"\((better|worse)\)|\(\S+ (better|worse)\)", out), out
    shown = _run(["dvc", "plots", "diff", base, names[0], "--json"], repo)
    plots = json.loads([ln for ln in shown.splitlines() if ln.startswith("{")][-1])["data"]
    for plot in ("train_loss", "train_loss_list", "train_rewards"):
        (fig,) = plots[plot]  # one figure per plot, the two runs overlaid in it (colour = revision)
        assert fig["revisions"] == [base, names[0]], fig["revisions"]
        assert {v["rev"] for v in fig["content"]["data"]["values"]} == {base, names[0]}


# ---------------------------------------------------------------------------------------------- caching contract


def _entries(repo: Path) -> dict[str, list[tuple[dict, object]]]:
    """Per stage group, each member's record line and resolved entry (from the first repro)."""
    from lpoi.stage import stage_entry

    groups: dict[str, list] = {}
    for line in (repo.parent / "reads.jsonl").read_text().splitlines():
        rec = json.loads(line)
        entry = stage_entry(rec["stage"], repo / "params.yaml", dvc_yaml=repo / "dvc.yaml")
        groups.setdefault(rec["stage"].split("@")[0], []).append((rec, entry))
    return groups


def _under(key: str, section: str) -> bool:
    return key == section or key.startswith(section + ".")


def test_every_param_a_stage_reads_is_declared_and_vice_versa(repo, first_repro):
    import yaml

    dag = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    groups = _entries(repo)
    assert set(groups) == set(dag), "every stage ran and recorded its reads"
    wrong = []
    for group, members in groups.items():
        for rec, entry in members:
            # (a param used in ${} is tracked by DVC itself; a section read whole must be declared whole)
            undeclared = sorted(r for r in rec["params"] if not any(_under(r, d) for d in entry.params)
                                and r not in entry.interpolated)
            wrong += [f"{entry.name} reads {r} but does not declare it" for r in undeclared]
        # a declared param must be read (by at least one member of a foreach group: they share one template)
        if group in WORLD_STAGES:  # no-ops here (world: none); tests/world/test_guard.py checks them switched on
            continue
        for i, template in enumerate(dag[group].get("do", dag[group]).get("params", [])):
            if not isinstance(template, str):  # `- params.yaml:` (all of it: the report) is read by construction
                continue
            if not any(any(_under(r, e.params[i]) or _under(e.params[i], r) for r in set(rec["params"]) | set(e.interpolated))
                       for rec, e in members):
                wrong.append(f"{group} declares {template} but never reads it")
    assert not wrong, "dvc.yaml and the stages disagree:\n" + "\n".join(wrong)


def _is_docstring_only(path: Path) -> bool:
    import ast

    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) or
               isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) for n in body)


def test_every_module_a_stage_imports_is_a_declared_dep(repo, first_repro):
    """The fingerprint (and DVC) see code only as far as dvc.yaml declares it."""
    wrong = []
    for members in _entries(repo).values():
        for rec, entry in members:
            wrong += [f"{entry.name} imports {m} but does not declare it" for m in rec["modules"]
                      if not any(m == d or m.startswith(d.rstrip("/") + "/") for d in entry.deps)
                      and not (m.endswith("__init__.py") and _is_docstring_only(repo / m))]
    assert not wrong, "dvc.yaml misses code deps:\n" + "\n".join(wrong)


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lpoi-fingerprint.json"}


def test_a_code_change_recomputes_and_a_kill_under_dvc_repro_resumes(repo, first_repro):
    lists, code = repo / "data/lists", repo / "lpoi/listgen/lists.py"
    before, source = _outputs(lists), code.read_text()
    timings = lambda: json.loads((repo / "metrics/lists.timings.json").read_text())  # noqa: E731
    try:
        code.write_text(source + "# a comment: code deps are part of the fingerprint\n")
        out = _run(["dvc", "repro", "lists"], repo)
        assert _ran(out) == {"lists"} and "starting afresh" in out, out
        assert timings()["resumed"] == 0 and _outputs(lists) == before
        # killed under dvc repro (DVC keeps persisted outputs): the next repro resumes, nothing lost or stale
        code.write_text(source + "# another comment\n")
        r = subprocess.run(["dvc", "repro", "lists"], cwd=repo, env={**_env(), "LPOI_FAULT": "row:6"},
                           capture_output=True, text=True, timeout=600)
        assert r.returncode != 0
        out = _run(["dvc", "repro", "lists"], repo)
        assert "resuming" in out and timings()["resumed"] == 5 and _outputs(lists) == before
    finally:
        code.write_text(source)
        _run(["dvc", "repro", "lists"], repo)


def test_lists_fill_mean_gives_the_reference_of_a_cold_run(repo, first_repro, tmp_path):
    old = (repo / "data/reference/reference.jsonl").read_bytes()
    out = _run(["dvc", "exp", "run", "-S", "lists.fill=mean", "reference"], repo, timeout=1200)
    assert {"lists", "reference"} <= _ran(out), out
    assert json.loads((repo / "metrics/reference.timings.json").read_text())["resumed"] == 0
    new = (repo / "data/reference/reference.jsonl").read_bytes()
    assert new != old
    _run([sys.executable, "stages/reference.py", "--lists", "data/lists", "--out", str(tmp_path / "cold"),
          "--metrics", str(tmp_path / "cold.json")], repo)
    assert (tmp_path / "cold" / "reference.jsonl").read_bytes() == new
