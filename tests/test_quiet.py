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

REPO = Path(__file__).resolve().parents[1]

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


CHECKPOINT = """
import sys, torch
import lpoi.train.checkpoint  # noqa: F401  (what the recipe imports before it saves)
import torch.distributed.checkpoint as dcp
dcp.save({"w": torch.zeros(3)}, checkpoint_id=sys.argv[1], no_dist=True)
sd = {"w": torch.ones(3)}
dcp.load(sd, checkpoint_id=sys.argv[1], no_dist=True)
assert sd["w"].sum() == 0
print("saved")
"""

ADAPTER = """
import sys
from peft import LoraConfig, get_peft_model
from lpoi.eval.generate import load_for_generation
from lpoi.models import load_vlm
model, _ = load_vlm("tiny/llava")
get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(sys.argv[1])
load_for_generation("tiny/llava", adapter_dir=sys.argv[1], device="cpu")
print("adapted")
"""


def _run_args(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-W", "default", "-c", code, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_one_process_checkpoint_saves_and_loads_without_warnings(tmp_path):
    out = _run_args(CHECKPOINT, str(tmp_path / "ckpt"))
    assert out.returncode == 0 and "saved" in out.stdout, out.stderr[-3000:]
    assert "Warning" not in out.stderr, out.stderr[-3000:]


def test_loading_an_adapter_for_generation_asks_the_hub_nothing_and_warns_nothing(tmp_path):
    out = _run_args(ADAPTER, str(tmp_path / "adapter"))
    assert out.returncode == 0 and "adapted" in out.stdout, out.stderr[-3000:]
    assert "Warning" not in out.stderr, out.stderr[-3000:]
