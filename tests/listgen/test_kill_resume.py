"""A list-generation stage killed with SIGKILL mid-run and re-run writes exactly what an uninterrupted run
writes (the real stage script, the tiny detector, the bundled sample)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from headtree import committed  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _detect(cwd: Path, out: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "stages/detect.py"), "--params", "params.yaml",
                             "--prepared", "prepared", "--out", out], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    params = yaml.safe_load(committed("params.yaml").read_text())
    params["detect"]["batch_size"] = 2  # small blocks, so rows land on disk one block at a time
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    from lpoi.listgen.prepare import run_prepare

    run_prepare(REPO / "data/sample/pairs.json", REPO / "data/sample/images", tmp_path / "prepared/prepared.jsonl",
                tmp_path / "prepared/rejects.jsonl", 0.5)

    ref = _detect(tmp_path, "full")
    assert ref.wait(timeout=600) == 0, ref.stderr.read()

    victim = _detect(tmp_path, "killed")
    out = tmp_path / "killed/detect.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and victim.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.05)
    if victim.poll() is not None:
        pytest.fail("the stage finished before it could be killed; make the blocks smaller")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    n_before = out.read_bytes().count(b"\n")
    assert 0 < n_before < 24

    again = _detect(tmp_path, "killed")
    assert again.wait(timeout=600) == 0, again.stderr.read()
    assert "resuming" in again.stderr.read()
    for name in ("detect.jsonl", "rejects.jsonl"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    shutil.rmtree(tmp_path / "prepared")
