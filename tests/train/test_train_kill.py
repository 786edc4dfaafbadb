"""The train stage SIGKILLed at two points and re-run -- through `dvc repro` (which deletes the
non-persisted plots folder first) and through the stage script (which finds a plots folder with rows
past its checkpoint) -- ends with the adapter folder and the curves of an uninterrupted run, byte for
byte (no timing is written there: the stage puts them in ``metrics/train.timings.json``). Each process gets another ``PYTHONHASHSEED``, so a set-ordered field in
``adapter_config.json`` (peft's resolved ``target_modules``) would differ between them.

Runs in a small copy of the repository: ``stages/``, ``lpoi/``, a ``dvc.yaml`` holding the repo's own
``train`` entry, and lists + reference log-probs made here (tiny LLaVA, 8 samples)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lpoi.config import validate
from lpoi.train.data import write_synthetic_lists
from lpoi.train.recipe import TrainPaths, train
from lpoi.train.reference import run_reference
from headtree import committed  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STEPS, SAVE = 10, 2

pytestmark = pytest.mark.slow


def _params() -> dict:
    p = yaml.safe_load(committed("params.yaml").read_text())
    p["model"]["name"] = "tiny/llava"
    p["train"].update(max_steps=STEPS, save_steps=SAVE, batch_size=2, lr=3e-3, warmup_ratio=0.2)
    p["train"]["lora"]["dropout"] = 0.1  # the RNG state must survive the kills too
    return p


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("train_kill") / "repo"
    for sub in ("stages", "lpoi", "conf/accelerate"):  # train declares its accelerate config as a dep
        shutil.copytree(REPO / sub, dst / sub, ignore=shutil.ignore_patterns("__pycache__"))
    dag = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = {name: dag["stages"][name] for name in ("check_params", "train")}  # train depends on check_params' stamp
    (dst / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (dst / "params.yaml").write_text(yaml.safe_dump(_params(), sort_keys=False))
    lists = write_synthetic_lists(dst / "data" / "lists", n_samples=8, k=3)
    (dst / "data" / "reference").mkdir(parents=True)
    run_reference(lists, dst / "data" / "reference" / "reference.jsonl", model_name="tiny/llava", progress=False,
                  max_length=_params()["reference"]["max_length"])
    # a plain dvc repo (no hydra: params.yaml as written) with one commit (dvclive reads the git revision)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dst, check=True, env=_env(0))
    return dst


def _env(seed: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": str(seed), "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}


def _start(repo: Path, how: str, seed: int) -> subprocess.Popen:
    if how == "dvc":
        cmd = ["dvc", "repro", "train"]
    else:
        cmd = [sys.executable, "stages/train.py", "--lists", "data/lists", "--reference", "data/reference",
               "--out", "models/lpoi", "--live", "metrics/train",
               "--accelerate-config", "conf/accelerate/ddp.yaml"]  # dvc.yaml's cmd: the same fingerprint
    return subprocess.Popen(cmd, cwd=repo, env=_env(seed), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_after_checkpoint(proc: subprocess.Popen, ckpt: Path) -> None:
    import psutil

    deadline = time.time() + 300
    while proc.poll() is None and not (ckpt / "trainer_state.json").exists() and time.time() < deadline:
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail(f"the run ended before {ckpt.name} could be killed:\n" + proc.stdout.read()[-3000:])
    parent = psutil.Process(proc.pid)
    children = parent.children(recursive=True)
    # dvc first: killed after its stage process, dvc would react to the child's death by rewriting
    # .dvc/tmp/rwlock, and a kill in the middle of that write leaves it empty (DVC does not write it atomically)
    for p in [parent, *children]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


def _outputs(adapter: Path, live: Path) -> dict[str, bytes | dict]:
    out = {f"adapter/{p.name}": p.read_bytes() for p in sorted(adapter.iterdir())}
    for p in sorted((live / "plots" / "metrics").glob("*.tsv")):
        out[f"plots/{p.name}"] = p.read_bytes()
    out["metrics.json"] = (live / "metrics.json").read_bytes()
    return out


def test_killed_twice_then_resumed_equals_uninterrupted(repo, tmp_path):
    p = validate(_params())
    data = repo / "data"
    train(p.train, p.model, p.reference, TrainPaths(lists=data / "lists/lists.jsonl", out=tmp_path / "full",
          reference=data / "reference/reference.jsonl", live=tmp_path / "live"), progress=False)
    want = _outputs(tmp_path / "full" / "adapter", tmp_path / "live")
    ckpts = repo / "models" / "lpoi" / "checkpoints"

    _kill_after_checkpoint(_start(repo, "dvc", seed=1), ckpts / "step-2")
    _kill_after_checkpoint(_start(repo, "script", seed=2), ckpts / "step-6")
    rows = (repo / "metrics/train/plots/metrics/loss.tsv").read_text().splitlines()
    assert 1 + 6 <= len(rows) <= 1 + STEPS - 1  # the killed run logged past its last checkpoint

    final = _start(repo, "dvc", seed=3)
    log, _ = final.communicate(timeout=600)
    assert final.returncode == 0, log[-4000:]
    assert "resuming from" in log and ("(step 6/10)" in log or "(step 8/10)" in log), log[-4000:]
    got = _outputs(repo / "models" / "lpoi" / "adapter", repo / "metrics" / "train")
    assert sorted(got) == sorted(want) and "adapter/adapter_config.json" in got
    for name in want:
        assert got[name] == want[name], name
    loss = [r.split("\t") for r in (repo / "metrics/train/plots/metrics/loss.tsv").read_text().splitlines()]
    assert [int(r[0]) for r in loss[1:]] == list(range(1, STEPS + 1))
    assert not ckpts.exists() or not any(ckpts.glob("step-*"))  # removed once training finished
