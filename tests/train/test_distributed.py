"""Two CPU processes (torchrun + gloo, DDP through accelerate) end at the same adapter as one process
with the same global batch: 2 processes x batch 1 == 1 process x batch 2 == 1 process x batch 1 x
accumulation 2 (DDP averages the gradients of equal per-process batches; the loss is a batch mean).
The same holds under FSDP2 (conf/accelerate/fsdp.yaml through ``accelerate launch``), across a SIGKILL.
"""

import json
import os
import subprocess
import sys
import time
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


@pytest.mark.parametrize("kind", ["NO", "MULTI_CPU", "MULTI_GPU", "FSDP"])
def test_the_model_is_moved_to_the_device_unless_fsdp_shards_it_there(kind):
    """Under FSDP2 the loaded model stays on the CPU: ``fully_shard`` moves it unit by unit (a whole-model
    ``.to(device)`` first would put the full base model on every GPU). Otherwise the recipe moves it."""
    from types import SimpleNamespace
    from unittest import mock

    from accelerate.utils import DistributedType

    from lpoi.train.distributed import place_model, sharding_places_model

    acc = SimpleNamespace(distributed_type=DistributedType[kind], device=torch.device("cuda", 1))
    model = mock.Mock(spec=torch.nn.Module)
    place_model(acc, model)
    assert sharding_places_model(acc) == (kind == "FSDP")
    if kind == "FSDP":
        model.to.assert_not_called()
    else:
        model.to.assert_called_once_with(torch.device("cuda", 1))


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


# ---------------------------------------------------------------------------------------------- FSDP2


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process below it (torchrun starts its workers in new sessions)."""
    import psutil

    parent = psutil.Process(proc.pid)
    for p in [*parent.children(recursive=True), parent]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


def _launch_fsdp(job: Path, summary: Path, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "conf/accelerate/fsdp.yaml"), "--num_processes", "2", "-m", "lpoi.train.recipe",
           str(job), "--summary", str(summary)]
    return subprocess.Popen(cmd, cwd=job.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.slow
def test_fsdp2_equals_one_process_and_a_killed_run_resumes(tmp_path):
    """conf/accelerate/fsdp.yaml as shipped: 2 gloo processes under FSDP2 x batch 1 x accumulation 2,
    SIGKILLed after a checkpoint and re-run, end at the adapter (and curve) of 1 process x batch 4.

    Tolerance 1e-5 as for DDP: FSDP2 reduce-scatters (averages) the same gradients in another summation
    order; a lost optimizer state or a replayed step would move the weights by ~lr = 3e-3."""
    lists = write_synthetic_lists(tmp_path / "data", n_samples=6, k=3)
    kw = dict(lists_path=str(lists), reference="online", model_name="tiny/llava", beta=1.0, lr=3e-3, max_steps=6,
              batch_size=1, grad_accum=2, save_steps=2, seed=3, scheduler="linear",
              lora={"r": 4, "alpha": 16, "dropout": 0.0},
              live_dir=str(tmp_path / "live"), out_dir=str(tmp_path / "fsdp"))
    job = tmp_path / "job.json"
    job.write_text(json.dumps(split(kw)))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    victim = _launch_fsdp(job, tmp_path / "killed.json", env)
    first = tmp_path / "fsdp" / "checkpoints" / "step-2" / "trainer_state.json"
    deadline = time.time() + 240
    while victim.poll() is None and not first.exists() and time.time() < deadline:
        time.sleep(0.02)
    if victim.poll() is not None:
        pytest.fail("the FSDP run ended before it could be killed:\n" + victim.stdout.read()[-4000:])
    _kill_tree(victim)
    assert not (tmp_path / "fsdp" / "adapter").exists()
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(first.parent / "trainable")).read_metadata().state_dict_metadata
    lora = {k: m for k, m in meta.items() if "lora_" in k and k.startswith("model.")}
    # really FSDP (not DDP): every LoRA tensor was saved as 2 shards, one per process; no frozen weight saved
    assert lora and all(len(m.chunks) == 2 for m in lora.values()), {k: len(m.chunks) for k, m in lora.items()}
    assert not [k for k in meta if k.startswith("model.") and "lora_" not in k]

    again = _launch_fsdp(job, tmp_path / "resumed.json", env)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # meanwhile, the one-process run
        one = train(**{**kw, "out_dir": tmp_path / "one", "batch_size": 4, "grad_accum": 1, "live_dir": None,
                       "save_steps": 0, "progress": False})
    finally:
        torch.set_num_threads(n)
    try:
        log, _ = again.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        _kill_tree(again)
        pytest.fail("the resumed FSDP run did not finish in 240 s")
    assert again.returncode == 0, log[-4000:]

    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["resumed_from"] in (2, 4) and resumed["global_batch"] == one["global_batch"] == 4
    a, b = _adapter(tmp_path / "one"), _adapter(tmp_path / "fsdp")
    assert a.keys() == b.keys()
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 1e-3  # it did train
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    rows = [r.split("\t") for r in (tmp_path / "live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()]
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4, 5, 6]  # the killed part of the curve survived
    want = [h["loss"] for h in one["history"]]
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], want, atol=1e-5, rtol=0)
