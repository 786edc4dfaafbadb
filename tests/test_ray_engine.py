"""``compute.engine: ray``: the detect stage of the embedded default on a local Ray with 2 CPU actors writes the
bytes the local runner writes -- also when one actor is SIGKILLed mid-stage (Ray restarts it and retries its
block) and when the stage process itself is SIGKILLed and the stage re-run (it resumes from its journal).

Runs the committed project (commit to test a change) in a scratch copy. Skipped without Ray
(``pip install -e ".[ray]"``): Ray is an optional extra, and a local Ray takes ~20 s to start here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from headtree import head_tree

pytest.importorskip("ray", reason='compute.engine: ray needs the ray extra (pip install -e ".[ray]")')
pytestmark = [pytest.mark.slow, pytest.mark.needs_nltk]  # detect extracts objects with NLTK

OUTPUTS = ("detect.jsonl", "rejects.jsonl")


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="1")
    env.pop("PYTHONPATH", None)  # the stage scripts put their own checkout first
    return env


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The committed project with data/prepared made, and one params file per engine (batch 1: 24 blocks)."""
    dst = tmp_path_factory.mktemp("ray") / "repo"
    shutil.copytree(head_tree(), dst, ignore=shutil.ignore_patterns("__pycache__"))
    p = yaml.safe_load((dst / "params.yaml").read_text())
    p["detect"]["batch_size"] = 1
    for engine in ("local", "ray"):
        p["compute"].update(engine=engine, workers=2)
        (dst / f"params_{engine}.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    r = subprocess.run([sys.executable, "stages/prepare.py", "--pairs", "data/sample/pairs.json", "--images",
                        "data/sample/images", "--out", "data/prepared", "--metrics", "metrics/prepare.json"],
                       cwd=dst, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return dst


def _detect(repo: Path, engine: str, out: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "stages/detect.py", "--params", f"params_{engine}.yaml", "--prepared",
                             "data/prepared", "--out", out, "--metrics", f"{out}.json"], cwd=repo, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the detect stage did not finish in time:\n" + proc.communicate()[0][-3000:])
    assert proc.returncode == 0, log[-4000:]
    return log


@pytest.fixture(scope="module")
def local(repo) -> Path:
    _finish(_detect(repo, "local", "det_local"))
    return repo / "det_local"


def _same(repo: Path, out: str, local: Path) -> None:
    for name in OUTPUTS:
        assert (repo / out / name).read_bytes() == (local / name).read_bytes(), name
    assert (repo / f"{out}.json").read_bytes() == (repo / "det_local.json").read_bytes()  # the metrics


def _rows(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _wait_rows(proc: subprocess.Popen, path: Path, n: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while _rows(path) < n:
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {n} rows in {path} while the stage ran:\n" + proc.communicate()[0][-3000:])
        time.sleep(0.05)


def _actors(proc: subprocess.Popen) -> list:
    import psutil

    found = []
    for p in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "_BlockWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def test_two_ray_actors_write_the_bytes_of_the_local_runner(repo, local):
    log = _finish(_detect(repo, "ray", "det_ray"))
    assert "written 24" in log, log[-2000:]
    _same(repo, "det_ray", local)


def test_a_sigkilled_actor_is_restarted_and_the_stage_ends_identical(repo, local):
    proc = _detect(repo, "ray", "det_kill_actor")
    _wait_rows(proc, repo / "det_kill_actor" / "detect.jsonl", 2)
    actors = _actors(proc)
    assert actors, "no Ray actor process found under the stage"
    actors[0].kill()  # SIGKILL, mid-stage: its queued blocks are retried on the restarted actor
    _finish(proc)
    assert _rows(repo / "det_kill_actor" / "detect.jsonl") == 24
    _same(repo, "det_kill_actor", local)


def test_a_sigkilled_stage_resumes_on_ray_and_ends_identical(repo, local):
    import psutil

    out = repo / "det_kill_driver" / "detect.jsonl"
    proc = _detect(repo, "ray", "det_kill_driver")
    _wait_rows(proc, out, 3)
    tree = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)  # the stage and the Ray it started, as a killed `dvc repro` leaves it
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    done = _rows(out)
    assert 3 <= done < 24, done
    log = _finish(_detect(repo, "ray", "det_kill_driver"))
    import re

    resumed = re.search(r"detect: resumed (\d+),", log)
    # (a row whose journal line the kill prevented is recomputed: it is not counted as resumed)
    assert resumed and done - 1 <= int(resumed.group(1)) <= done, log[-2000:]
    _same(repo, "det_kill_driver", local)
