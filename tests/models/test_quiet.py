"""A stage's log shows the pipeline's progress, not library noise (issue 23): the known warnings of the
original Grounding DINO package are filtered where it is used, and transformers' weight-loading bars
are off unless LPOI_VERBOSE=1. Each check runs in a fresh interpreter with every warning shown
(``-W default``), as a stage process starts: a filter installed by an earlier test cannot hide anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

DETECT = """
from PIL import Image
from lpoi.listgen.backends import open_detector
det = open_detector("groundingdino", "tiny/groundingdino-py", device="cpu")
img = Image.new("RGB", (64, 48), (120, 30, 200))
det.detect(det.encode([{"id": "a"}], [img], [["a cat"]]), 0.0, 0.0)
print("detected")
"""

LOAD = """
from lpoi.models import load_vlm
load_vlm("tiny/llava")
print("loaded")
"""


def _run(code: str, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default", **env}
    return subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_original_grounding_dino_runs_without_warnings():
    out = _run(DETECT)
    assert out.returncode == 0 and "detected" in out.stdout, out.stderr[-3000:]
    assert "Warning" not in out.stderr, out.stderr[-3000:]


def test_weight_loading_bars_only_with_lpoi_verbose():
    quiet = _run(LOAD)
    assert quiet.returncode == 0 and "loaded" in quiet.stdout, quiet.stderr[-3000:]
    assert "Loading weights" not in quiet.stderr, quiet.stderr[-3000:]
    verbose = _run(LOAD, LPOI_VERBOSE="1")
    assert verbose.returncode == 0 and "Loading weights" in verbose.stderr, verbose.stderr[-3000:]
