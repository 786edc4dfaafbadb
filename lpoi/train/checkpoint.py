"""Resumable training state: ``<root>/step-N`` folders, written atomically, LoRA-only, sharded.

A checkpoint holds what a killed run needs to continue exactly where it stopped:

* ``trainable/`` -- the trainable (LoRA) weights and their AdamW state, through
  ``torch.distributed.checkpoint`` with ``ignore_frozen_params``: every process writes its own shards
  (FSDP2) or rank 0 the replicated tensors (one process, DDP); the frozen base weights are never
  written (they come from the base model again). The same code serves every distributed mode;
* ``scheduler.pt``, ``scaler.pt`` (fp16), ``rng_rank{i}.pt`` (each process's torch/python/numpy RNG);
* ``history.jsonl`` -- the authoritative per-step metrics 1..N. The dvclive folder is *not*
  persisted (DVC deletes it before re-running the stage), so a resumed run re-creates its curves
  from here rather than from whatever survived in the dvclive folder;
* ``trainer_state.json`` -- step and the configuration fingerprint, written last: a folder without
  it is an interrupted write and is ignored (``.tmp-step-N`` folders are removed at start).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from lpoi.io import atomic_write_json, atomic_write_text

# A one-process run saves with `dcp.save(..., no_dist=True)`, which is exactly what torch.distributed.checkpoint
# then warns it "assumes" (once per checkpoint); the message is for callers who forgot to initialise a
# process group, which a one-process run has no need of. Silenced by its message and raising module only.
warnings.filterwarnings("ignore", message=r"torch\.distributed is disabled, unavailable or uninitialized",
                        category=UserWarning, module=r"torch\.distributed\.checkpoint")

__all__ = ["config_fingerprint", "latest_checkpoint", "load_checkpoint", "read_state", "remove_checkpoints",
           "remove_partial", "save_checkpoint"]

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")


def config_fingerprint(config: dict) -> str:
    """sha256 (16 hex digits) of a JSON-able description of the run (the config objects' ``model_dump``)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def latest_checkpoint(root: Path) -> tuple[int, Path] | None:
    """The newest complete ``step-N`` folder under ``root`` (None when there is none)."""
    if not root.is_dir():
        return None
    found = []
    for p in root.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return max(found) if found else None


def read_state(path: Path) -> dict:
    """A checkpoint folder's ``trainer_state.json`` (step, fingerprint): read before deciding to resume."""
    return json.loads((path / "trainer_state.json").read_text())


def remove_checkpoints(root: Path) -> None:
    """Drop every checkpoint (complete or partial) once training is done, and ``root`` if nothing else is
    in it. The train stage's folder keeps its fingerprint marker, so DVC never caches it as an empty
    directory (which it warns about on every run) and the next run can say what changed."""
    if not root.is_dir():
        return
    for p in root.iterdir():
        if CHECKPOINT_RE.match(p.name) or p.name.startswith(".tmp-step-"):
            shutil.rmtree(p, ignore_errors=True)
    if not any(root.iterdir()):
        root.rmdir()


def remove_partial(root: Path) -> None:
    """Drop checkpoint folders a kill left half-written."""
    if root.is_dir():
        for p in root.glob(".tmp-step-*"):
            shutil.rmtree(p, ignore_errors=True)


def _dcp_state(model, optimizer):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(ignore_frozen_params=True)
    msd, osd = get_state_dict(model, getattr(optimizer, "optimizer", optimizer), options=opts)
    return {"model": msd, "optim": osd}, opts


def save_checkpoint(root: Path, step: int, *, accelerator, model, optimizer, scheduler, state: dict,
                    history: list[dict], keep: int) -> Path:
    """Write ``root/step-{step}``; every process must call it (the sharded write is collective)."""
    import torch.distributed.checkpoint as dcp

    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    sd, _ = _dcp_state(model, optimizer)
    dcp.save(sd, checkpoint_id=str(tmp / "trainable"), no_dist=accelerator.num_processes == 1)
    torch.save(_rng_state(), tmp / f"rng_rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        atomic_write_text(tmp / "history.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        atomic_write_json(tmp / "trainer_state.json", state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        older = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)))
        for _, p in older[:-keep] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, *, accelerator, model, optimizer, scheduler) -> list[dict]:
    """Restore a :func:`save_checkpoint` folder in place; returns its history rows (the trainer state:
    :func:`read_state`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import set_state_dict

    sd, opts = _dcp_state(model, optimizer)
    kw = {"checkpoint_id": str(path / "trainable"), "no_dist": accelerator.num_processes == 1}
    dcp.load({"model": sd["model"]}, **kw)  # strict: every LoRA tensor must be there
    # AdamW has no state for parameters that never had a gradient (LLaVA's unused last vision layer);
    # the template has zeros for them (torch initialises it with a zero-lr step) and keeps them
    dcp.load({"optim": sd["optim"]}, **kw, planner=DefaultLoadPlanner(allow_partial_load=True))
    # strict=False: the frozen base weights are not in a checkpoint (they come from the base model)
    set_state_dict(model, getattr(optimizer, "optimizer", optimizer), model_state_dict=sd["model"],
                   optim_state_dict=sd["optim"], options=replace(opts, strict=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if accelerator.scaler is not None and (path / "scaler.pt").exists():
        accelerator.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    _set_rng_state(torch.load(path / f"rng_rank{accelerator.process_index}.pt", weights_only=True))
    return [json.loads(line) for line in (path / "history.jsonl").read_text().splitlines() if line]


def _rng_state() -> dict:
    import numpy as np

    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    a = state["numpy"]
    np.random.set_state((a[0], np.array(a[1], dtype=np.uint32), a[2], a[3], a[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
