"""Two CPU processes (torchrun + gloo, DDP through accelerate) end at the same adapter as one process
with the same global batch: 2 processes x batch 1 == 1 process x batch 2 == 1 process x batch 1 x
accumulation 2 (DDP averages the gradients of equal per-process batches; the loss is a batch mean).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lpoi.train.data import write_synthetic_lists
from trainkw import run_train as train
from trainkw import split

REPO = Path(__file__).resolve().parents[2]


def _adapter(out):
    from safetensors.torch import load_file

    return load_file(Path(out) / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    lists = write_synthetic_lists(tmp_path / "data", n_samples=6, k=3)
    kw = dict(
        lists_path=str(lists),
        reference_path=None,
        reference="online",  # the reference forward (adapter disabled) also goes through DDP
        model_name="tiny/llava",
        method="lpoi",
        beta=1.0,
        lr=3e-3,
        max_steps=3,
        batch_size=1,
        save_steps=0,
        progress=False,
        seed=3,
        scheduler="linear",
        lora={"r": 4, "alpha": 16, "dropout": 0.0},
        live_dir=str(tmp_path / "live2"),
    )
    (tmp_path / "kw.json").write_text(json.dumps(split({**kw, "out_dir": str(tmp_path / "two")})))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "lpoi.train.recipe",
            str(tmp_path / "kw.json"),
            "--summary",
            str(tmp_path / "two.json"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # meanwhile, the single-process runs
        one = train(**{**kw, "out_dir": tmp_path / "one", "batch_size": 2, "live_dir": None})
        accum = train(**{**kw, "out_dir": tmp_path / "accum", "grad_accum": 2, "live_dir": None})
    finally:
        torch.set_num_threads(n)
    try:
        log, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun forwards SIGTERM to its workers
        log, _ = proc.communicate(timeout=30)
        pytest.fail("torchrun did not finish in 180 s:\n" + log[-4000:])
    assert proc.returncode == 0, log[-4000:]

    two = json.loads((tmp_path / "two.json").read_text())
    assert two["global_batch"] == one["global_batch"] == accum["global_batch"] == 2
    losses = {
        name: [h["loss"] for h in s["history"]] for name, s in (("two", two), ("one", one), ("accum", accum))
    }
    np.testing.assert_allclose(losses["two"], losses["one"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(losses["accum"], losses["one"], atol=1e-5, rtol=0)
    a, b, c = _adapter(tmp_path / "one"), _adapter(tmp_path / "two"), _adapter(tmp_path / "accum")
    assert a.keys() == b.keys() == c.keys()
    moved = max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k)
    assert moved > 1e-3  # the adapters did train (lora_B starts at 0)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert max(float((a[k] - c[k]).abs().max()) for k in a) < 1e-5
    # only the main process logged, one row per step
    rows = (tmp_path / "live2" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    assert len(rows) == 1 + 3
