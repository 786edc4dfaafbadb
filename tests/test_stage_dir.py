"""The persisted-folder mechanism (lpoi/stage.py): a stage's fingerprint comes from its own dvc.yaml entry
(resolved by DVC for foreach and ${}), covers every declared dep (code and data), param and loaded model,
and nothing else; a folder is reused only under the same fingerprint, locked for the run, cleaned of
temp files."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from lpoi.models import identity, model_identity
from lpoi.stage import (StageDir, StageError, describe_changes, fingerprint_parts, open_stage, stage_entry, timings_path,
                        write_timings)
from headtree import committed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, **changes) -> Path:
    p = yaml.safe_load(committed("params.yaml").read_text())
    for dotted, value in changes.items():
        d = p
        *head, last = dotted.split(".")
        for k in head:
            d = d[k]
        d[last] = value
    out = tmp_path / "params.yaml"
    out.write_text(yaml.safe_dump(p))
    return out


def test_entry_is_resolved_by_dvc_for_foreach_and_interpolation(tmp_path):
    e = stage_entry("generate@objhal", _params(tmp_path))
    assert "lpoi/eval/benchmarks/objhal.py" in e.deps and "data/sample/bench/objhal" in e.deps
    assert {"bench.objhal", "generate", "bench.root"} <= set(e.params)
    assert e.persisted() == "data/answers/objhal" and e.interpolated == ("bench.root",)
    moved = stage_entry("generate@objhal", _params(tmp_path, **{"bench.root": "elsewhere"}))
    assert "elsewhere/objhal" in moved.deps  # interpolated against the run's params file
    assert "amber.discriminative" in stage_entry("generate@amber", _params(tmp_path)).params
    with pytest.raises(StageError, match="nosuch"):
        stage_entry("nosuch", _params(tmp_path))


def _checkout(tmp_path: Path) -> Path:
    """A copy of the code a stage fingerprints (dvc.yaml, stages/, lpoi/), so its files can be edited."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root)
    for d in ("stages", "lpoi"):
        shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _detect_parts(root: Path, params: Path, prepared: Path) -> dict[str, str]:
    entry = stage_entry("detect", params, dvc_yaml=root / "dvc.yaml")
    args = argparse.Namespace(params=str(params), prepared=str(prepared), out=str(root / "out"), metrics=None)
    return fingerprint_parts(entry, args, yaml.safe_load(params.read_text()), models=["tiny/grounding-dino"])


def test_fingerprint_changes_with_every_declared_part_and_only_those(tmp_path):
    root = _checkout(tmp_path)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "prepared.jsonl").write_text('{"id": "a"}\n')
    params = _params(tmp_path)
    base = _detect_parts(root, params, prepared)
    assert set(base) == {f"dep {d}" for d in stage_entry("detect", params).deps} | {
        f"param {p}" for p in stage_entry("detect", params).params} | {"model tiny/grounding-dino"}

    def changed(**kw) -> set[str]:
        now = _detect_parts(root, kw.get("params", params), kw.get("prepared", prepared))
        return {k for k in base if base[k] != now[k]}

    assert changed() == set()
    # code: a comment appended to a module the stage declares
    with open(root / "lpoi/listgen/detect.py", "a") as f:
        f.write("# a comment\n")
    assert changed() == {"dep lpoi/listgen/detect.py"}
    (root / "lpoi/listgen/detect.py").write_bytes((REPO / "lpoi/listgen/detect.py").read_bytes())
    # data: the folder the run's --prepared points at (not the declared data/prepared)
    (prepared / "prepared.jsonl").write_text('{"id": "b"}\n')
    assert changed() == {"dep data/prepared"}
    (prepared / "prepared.jsonl").write_text('{"id": "a"}\n')
    # bytecode is not code
    (root / "lpoi/models/__pycache__").mkdir(exist_ok=True)
    (root / "lpoi/models/__pycache__/x.pyc").write_bytes(b"junk")
    assert changed() == set()
    # params: declared ones change it (model.dtype is declared since detect loads with it) ...
    assert changed(params=_params(tmp_path, **{"detect.box_threshold": 0.5})) == {"param detect"}
    assert changed(params=_params(tmp_path, **{"model.dtype": "bfloat16"})) == {"param model.dtype"}
    # ... others do not
    assert changed(params=_params(tmp_path, **{"train.lr": 1e-3, "lists.fill": "mean"})) == set()


def test_model_identity_tiny_folder_and_hub(tmp_path, monkeypatch):
    a, b = model_identity("tiny/llava"), model_identity("tiny/llava", seed=1)
    assert a["kind"] == "tiny" and a != b and {"torch", "transformers"} <= a.keys()
    # the builder code is part of it: the digest of every module of lpoi/models (name and bytes, each hashed)
    h = hashlib.sha256(b"code v2\n")
    for p in sorted((REPO / "lpoi/models").glob("*.py")):
        h.update(hashlib.sha256(p.name.encode()).digest() + hashlib.sha256(p.read_bytes()).digest())
    assert a["code"] == h.hexdigest()
    models = tmp_path / "models"
    shutil.copytree(REPO / "lpoi/models", models, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(identity, "__file__", str(models / "identity.py"))
    with open(models / "tiny.py", "a") as f:
        f.write("# an edited builder\n")
    assert model_identity("tiny/llava")["code"] != a["code"]
    monkeypatch.undo()
    # a local folder: its weight and config files' hashes
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 8)
    one = model_identity(str(folder))
    (folder / "model.safetensors").write_bytes(b"\1" * 8)
    assert model_identity(str(folder))["files"] != one["files"] and one["kind"] == "folder"
    # a local checkpoint file (an official .pth): its bytes
    pth = tmp_path / "sam.pth"
    pth.write_bytes(b"\0" * 8)
    first = model_identity(str(pth))
    pth.write_bytes(b"\1" * 8)
    assert first["kind"] == "file" and model_identity(str(pth))["sha256"] != first["sha256"]
    # a hub id: the snapshot commit the local cache resolves "main" to
    cache = tmp_path / "hub"
    repo = cache / "models--org--m"
    for commit in ("a" * 40, "b" * 40):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    (repo / "refs" / "main").write_text("a" * 40)
    assert model_identity("org/m")["revision"] == "a" * 40
    (repo / "refs" / "main").write_text("b" * 40)  # a new revision under the same name
    assert model_identity("org/m")["revision"] == "b" * 40
    assert model_identity("org/not-cached")["revision"] is None  # offline: nothing to resolve


def test_no_two_folders_or_builder_codes_hash_alike(tmp_path, monkeypatch):
    """Names and bytes used to be joined by NUL: a file ``a`` holding ``1\\0b\\0`` + ``2`` hashed like the
    files ``a`` = ``1`` and ``b`` = ``2`` (a dep folder changed so, and the stage reused its old outputs)."""
    from lpoi.stage import hash_path

    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    (one / "a").write_bytes(b"1\0b\0" + b"2")
    (two / "a").write_bytes(b"1")
    (two / "b").write_bytes(b"2")
    assert hash_path(one) != hash_path(two)
    assert len({hash_path(one / "a"), hash_path(one), hash_path(tmp_path / "none"), hash_path(None)}) == 4
    codes = []
    for files in ({"a.py": b"1b.py\0" + b"2"}, {"a.py": b"1", "b.py": b"2"}):  # v1: name NUL bytes, no end
        models = tmp_path / f"models{len(codes)}"
        models.mkdir()
        for name, data in files.items():
            (models / name).write_bytes(data)
        shutil.copy(REPO / "lpoi/models/tiny.py", models / "tiny.py")  # TINY_FAMILIES comes from the package
        monkeypatch.setattr(identity, "__file__", str(models / "identity.py"))
        codes.append(model_identity("tiny/llava")["code"])
    assert codes[0] != codes[1]


def test_a_downloaded_checkpoint_is_identified_by_its_stamp_until_it_changes(tmp_path):
    """A file stages/download.py verified is not re-read at every stage start: its stamp's sha256 is used
    while size and mtime are unchanged; any change to the file (or a stale stamp) means a full re-hash."""
    import os

    from lpoi.download.integrity import stamp_path, verify_file

    pth = tmp_path / "sam.pth"
    pth.write_bytes(b"\0" * 8)
    verify_file(pth)  # what a download leaves: the stamp beside the file
    real = hashlib.sha256(b"\0" * 8).hexdigest()
    assert model_identity(str(pth))["sha256"] == real
    stamp = json.loads(stamp_path(pth).read_text())
    stamp_path(pth).write_text(json.dumps({**stamp, "sha256": "f" * 64}))  # the stamp is what is read ...
    assert model_identity(str(pth))["sha256"] == "f" * 64
    pth.write_bytes(b"\1" * 9)  # ... only while the file is the one it describes
    assert model_identity(str(pth))["sha256"] == hashlib.sha256(b"\1" * 9).hexdigest()
    st = pth.stat()
    stamp_path(pth).write_text(json.dumps({"size": 9, "mtime_ns": st.st_mtime_ns, "sha256": "f" * 64}))
    os.utime(pth, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched: same size, another mtime
    assert model_identity(str(pth))["sha256"] == hashlib.sha256(b"\1" * 9).hexdigest()
    # stamps are no model files: a folder's identity lists only its own files
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 8)
    verify_file(folder / "model.safetensors")
    assert set(model_identity(str(folder))["files"]) == {"model.safetensors"}


def test_folder_is_reused_only_under_the_same_fingerprint(tmp_path, capsys):
    d = tmp_path / "out"
    with StageDir(d, {"dep a": "1", "param x": "1"}, stage="s"):
        (d / "rows.jsonl").write_text("row\n")
    with StageDir(d, {"dep a": "1", "param x": "1"}, stage="s"):
        assert (d / "rows.jsonl").exists()
    assert "resuming" in capsys.readouterr().err
    with StageDir(d, {"dep a": "2", "param x": "1"}, stage="s"):
        assert not (d / "rows.jsonl").exists()
    err = capsys.readouterr().err
    assert "input data a changed" in err and "starting afresh" in err and len(err.strip().splitlines()) == 1
    (d / "rows.jsonl").write_text("row\n")
    (d / ".lpoi-fingerprint.json").unlink()  # a folder of unknown origin is never adopted
    with StageDir(d, {"dep a": "2", "param x": "1"}, stage="s"):
        assert not (d / "rows.jsonl").exists()
    marker = json.loads((d / ".lpoi-fingerprint.json").read_text())
    assert marker["stage"] == "s" and marker["parts"] == {"dep a": "2", "param x": "1"}


def test_one_run_at_a_time_but_shards_together(tmp_path):
    d = tmp_path / "out"
    parts = {"dep a": "1"}
    with StageDir(d, parts):
        with pytest.raises(StageError, match=r"in use by another run of this stage \(pid \d+\)"):
            StageDir(d, parts).__enter__()
        with pytest.raises(StageError, match="in use"):
            StageDir(d, parts, shard="0/2").__enter__()
    with StageDir(d, parts, shard="0/2"), StageDir(d, parts, shard="1/2"):
        with pytest.raises(StageError, match="shard 1/2"):
            StageDir(d, parts, shard="1/2").__enter__()
        with pytest.raises(StageError, match="in use"):
            StageDir(d, parts).__enter__()
        with pytest.raises(StageError, match="other shards of this stage are running with other inputs"):
            StageDir(d, {"dep a": "2"}, shard="1/3").__enter__()
    with StageDir(d, parts):  # all released
        pass


def test_leftover_temp_files_are_removed(tmp_path, capsys):
    d = tmp_path / "out"
    with StageDir(d, {}):
        (d / "images").mkdir()
        (d / "images" / ".s0_3.png.k2j3.tmp").write_bytes(b"half")
        (d / ".lists.jsonl.x.tmp").write_bytes(b"half")
        (d / "images" / "s0_0.png").write_bytes(b"kept")
    with StageDir(d, {}):
        assert sorted(p.name for p in d.rglob("*") if p.is_file()) == [".lpoi-fingerprint.json", "s0_0.png"]
    assert "removed 2 temp file(s)" in capsys.readouterr().err


def test_open_stage_uses_the_runs_own_paths(tmp_path):
    params = _params(tmp_path)
    args = argparse.Namespace(params=str(params), prepared=str(tmp_path / "p"), detect=str(tmp_path / "d"),
                              out=str(tmp_path / "seg"), metrics=None)
    (tmp_path / "p").mkdir()
    (tmp_path / "d").mkdir()
    st = open_stage("segment", args, models=["tiny/sam"])
    assert st.path == tmp_path / "seg"
    # a flag this run leaves out is fingerprinted as unused, never as the declared path's content
    train = argparse.Namespace(params=str(params), lists=str(tmp_path / "l"), reference=None, out=str(tmp_path / "m"),
                               live=str(tmp_path / "live"))
    st = open_stage("train", train)
    assert st.path == tmp_path / "m" / "checkpoints"
    unused = hashlib.sha256(b"lpoi hash_path v2\n<not used by this run>").hexdigest()
    assert st.parts["dep data/reference"] == unused


def test_timings_go_beside_the_metrics_not_into_them(tmp_path):
    write_timings(tmp_path / "metrics" / "detect.json", {"seconds": 1 / 3, "resumed": 4})
    assert timings_path(tmp_path / "metrics" / "detect.json").name == "detect.timings.json"
    assert json.loads((tmp_path / "metrics" / "detect.timings.json").read_text()) == {"seconds": 0.333333, "resumed": 4}
    assert not (tmp_path / "metrics" / "detect.json").exists()


def test_the_message_says_which_part_changed_in_the_words_of_params_and_dvc_yaml():
    before = {"dep lpoi/train/recipe.py": "1", "dep stages/train.py": "1", "dep data/lists": "1",
              "param train.beta": "1", "param train.lr": "1", "model tiny/idefics2": "1", "param train.seed": "1"}
    after = {**before, "param train.beta": "2", "param train.lr": "2", "dep lpoi/train/recipe.py": "2"}
    assert describe_changes(before, after) == "params train.beta, train.lr; code lpoi/train/recipe.py"
    after = {**before, "dep data/lists": "2", "model tiny/idefics2": "2", "param train.epochs": "1"}
    del after["param train.seed"]
    assert describe_changes(before, after) == ("params train.epochs (newly declared), train.seed (no longer declared); "
                                               "input data data/lists; model tiny/idefics2")
    many = {f"param p{i}": "2" for i in range(5)}
    assert describe_changes({k: "1" for k in many}, many) == "params p0, p1, p2 and 2 more"


def test_a_placeholder_folder_is_named_as_such_not_as_another_version(tmp_path, capsys):
    """world: none leaves a NONE file; turning the world on must not claim another pipeline version made it."""
    from lpoi.world.off import record_off

    d = tmp_path / "world_grid"
    record_off(d)
    capsys.readouterr()
    with StageDir(d, {"dep a": "1"}, stage="world_grid"):
        assert not (d / "NONE").exists()
    err = capsys.readouterr().err
    assert "the last run left only a placeholder (world: none -- the shapes world is off" in err, err
    assert "another version" not in err and "older version" not in err
    (d / "rows.jsonl").write_text("row\n")
    (d / ".lpoi-fingerprint.json").unlink()
    with StageDir(d, {"dep a": "1"}, stage="world_grid"):
        pass
    assert "no record of the run that made this folder" in capsys.readouterr().err


def test_finished_training_removes_its_checkpoints_but_keeps_the_stage_marker(tmp_path):
    """DVC warns "'models/lpoi/checkpoints' is empty" on every run when the folder is left empty."""
    from lpoi.train.checkpoint import remove_checkpoints

    held = tmp_path / "held"
    for sub in ("step-2", "step-4", ".tmp-step-6"):
        (held / sub).mkdir(parents=True)
        (held / sub / "trainer_state.json").write_text("{}")
    (held / ".lpoi-fingerprint.json").write_text("{}")
    remove_checkpoints(held)
    assert [p.name for p in held.iterdir()] == [".lpoi-fingerprint.json"]
    own = tmp_path / "own"
    (own / "step-1").mkdir(parents=True)
    remove_checkpoints(own)
    assert not own.exists()  # a folder the recipe made for itself goes entirely
