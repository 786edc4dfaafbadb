"""#11 acceptance for the per-sample stages: the real stage scripts on the bundled sample and tiny models,
SIGKILLed at exact points (``LPOI_FAULT``: a line written but not journaled, a row and its journal line
written, a block computed but not written), then re-run: every output folder is byte-identical to an
uninterrupted run's (hidden journal and fingerprint files included) and so are the metrics. Also: a second
run of a stage while one holds the folder is refused; temp files a kill left are removed; hand-edited
outputs (a reference value, a list PNG replaced by a magenta image, a half-truncated PNG) are recomputed.

Uninterrupted runs and re-runs execute the stage scripts in this process (no interpreter start-up); the
runs that are killed are real subprocesses.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from headtree import committed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

# stage -> (its arguments for output folder OUT, the upstream folders it reads)
ARGS = {
    "detect": lambda out: ["--prepared", "prepared", "--out", out],
    "segment": lambda out: ["--prepared", "prepared", "--detect", "full/detect", "--out", out],
    "verify": lambda out: ["--prepared", "prepared", "--segment", "full/segment", "--out", out],
    "lists": lambda out: ["--prepared", "prepared", "--segment", "full/segment", "--verify", "full/verify",
                          "--out", out],
    "reference": lambda out: ["--lists", "full/lists", "--out", out],
    "generate": lambda out: ["amber", "--out", out],
}


def _argv(stage: str, out: str) -> list[str]:
    return ["--params", "params.yaml", *ARGS[stage](out), "--metrics", f"full/m/{out.rsplit('/', 1)[-1]}.json"]


def run_here(ws: Path, stage: str, out: str) -> str | None:
    """Run ``stages/<stage>.py`` in this process (cwd = ``ws``); the error message when it exits with one."""
    script = REPO / "stages" / f"{stage}.py"
    saved = sys.argv[:], os.getcwd(), sys.path[:]
    sys.argv = [str(script), *_argv(stage, out)]
    sys.path.insert(0, str(script.parent))
    os.chdir(ws)
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            return str(e.code)
    finally:
        sys.argv, _, sys.path = saved[0], os.chdir(saved[1]), saved[2]
    return None


def spawn(ws: Path, stage: str, out: str, fault: str) -> subprocess.Popen:
    # one intra-op thread, as in this process (tests/conftest.py): float reductions split over another
    # number of threads may round differently, and then a resumed row would differ in its last digits
    env = {**os.environ, "LPOI_FAULT": fault, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "stages" / f"{stage}.py"), *_argv(stage, out)], cwd=ws,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def killed(ws: Path, stage: str, out: str, fault: str) -> None:
    p = spawn(ws, stage, out, fault)
    err = p.communicate(timeout=600)[1]
    assert p.returncode == -signal.SIGKILL, f"{stage} was not killed at {fault} (rc {p.returncode}):\n{err[-3000:]}"


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A small workspace: 10 sample records prepared, params with small batches, every stage run once."""
    from lpoi.listgen.prepare import run_prepare

    ws = tmp_path_factory.mktemp("kill")
    p = yaml.safe_load(committed("params.yaml").read_text())
    for section in ("detect", "segment", "verify", "generate"):
        p[section]["batch_size"] = 2  # small blocks: several blocks per stage, kills land mid-run
    p["lists"]["num_workers"] = 0
    p["generate"].update(max_new_tokens=6, use_adapter=False)
    p["bench"]["root"] = str(REPO / "data/sample/bench")
    p["bench"]["amber"]["limit"] = 7
    (ws / "params.yaml").write_text(yaml.safe_dump(p))
    pairs = json.loads((REPO / "data/sample/pairs.json").read_text())[:10]
    (ws / "pairs.json").write_text(json.dumps(pairs))
    run_prepare(ws / "pairs.json", REPO / "data/sample/images", ws / "prepared/prepared.jsonl",
                ws / "prepared/rejects.jsonl", 0.5)
    for stage in ARGS:
        assert run_here(ws, stage, f"full/{stage}") is None, stage
    return ws


def _same_as_full(ws: Path, stage: str, out: str) -> None:
    got, want = files(ws / out), files(ws / "full" / stage)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], f"{stage}: {name} differs from the uninterrupted run"
    m = lambda name: json.loads((ws / "full" / "m" / f"{name}.json").read_text())  # noqa: E731
    assert m(out.rsplit("/", 1)[-1]) == m(stage), f"{stage}: metrics differ after the resume"


@pytest.mark.parametrize("stage,faults", [
    ("detect", ["row:3"]),  # a line written, its journal line not
    ("segment", ["journal:3"]),  # a row and its journal line written (its masks on disk)
    ("verify", ["block:2"]),  # a block computed, nothing of it written
    ("lists", ["row:4", "journal:2"]),  # killed twice: then in the re-run itself
    ("reference", ["block:2"]),
    ("generate", ["row:3"]),
])
def test_killed_then_rerun_equals_uninterrupted(ws, stage, faults):
    out = f"full/{stage}.k"  # beside the uninterrupted run's folder: rows hold paths relative to their folder
    for fault in faults:
        killed(ws, stage, out, fault)
    assert 0 < sum(1 for _ in (ws / out).rglob("*.jsonl")) and files(ws / out) != files(ws / "full" / stage)
    assert run_here(ws, stage, out) is None
    _same_as_full(ws, stage, out)
    timings = json.loads((ws / "full/m" / f"{stage}.k.timings.json").read_text())
    assert timings["resumed"] > 0  # it resumed, it did not start over


@pytest.mark.timeout(600)  # a hang guard for the wait below, not a timing
def test_a_second_run_is_refused_while_one_holds_the_folder(ws):
    p = spawn(ws, "lists", "full/lists.c", "journal:1:stop")  # stops itself holding the lock, one row written
    try:
        while Path(f"/proc/{p.pid}/stat").read_text().split()[2] != "T":
            assert p.poll() is None, "the stage ended before reaching its stop point"
            time.sleep(0.1)
        err = run_here(ws, "lists", "full/lists.c")
        assert err is not None and "in use by another run of this stage" in err and f"pid {p.pid}" in err
        assert "\n" not in err.strip()
    finally:
        p.kill()
        p.wait()
    assert run_here(ws, "lists", "full/lists.c") is None  # the lock died with it; the run resumes
    _same_as_full(ws, "lists", "full/lists.c")


def _copy(ws: Path, stage: str) -> str:
    shutil.copytree(ws / "full" / stage, ws / "full" / f"{stage}.e")
    return f"full/{stage}.e"


def test_edited_lists_are_rebuilt(ws, capsys):
    from PIL import Image

    out = _copy(ws, "lists")
    pngs = sorted((ws / out / "images").glob("*.png"))
    size = Image.open(pngs[3]).size
    Image.new("RGB", size, (255, 0, 255)).save(pngs[3])  # replaced by a magenta image
    pngs[11].write_bytes(pngs[11].read_bytes()[: pngs[11].stat().st_size // 2])  # half-truncated
    (ws / out / "images" / f".{pngs[0].name}.x1y2.tmp").write_bytes(b"left by a kill")
    assert run_here(ws, "lists", out) is None
    err = capsys.readouterr().err
    assert "not exactly what this stage wrote" in err and "removed 1 temp file" in err
    _same_as_full(ws, "lists", out)


def test_an_edited_reference_value_is_recomputed(ws, capsys):
    out = _copy(ws, "reference")
    path = ws / out / "reference.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    row = json.loads(lines[3])
    row["list"][1] += 0.5
    lines[3] = json.dumps(row) + "\n"
    path.write_text("".join(lines))
    assert run_here(ws, "reference", out) is None
    assert "not exactly what this stage wrote" in capsys.readouterr().err
    _same_as_full(ws, "reference", out)
