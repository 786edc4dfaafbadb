"""What every stage entry point shares: resumable output folders, devices, timing, metrics.

Long stages keep their output folder across runs (``persist: true`` in dvc.yaml) so that a killed run
resumes where it stopped. A persisted folder is only reused while the run's *fingerprint* (the params
it reads and the content of its inputs) is unchanged; otherwise it is emptied first, so a new
threshold can never be served results computed under the old one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .io import atomic_write_json

__all__ = ["fingerprint", "pick_device", "resumable_dir", "Stopwatch", "write_metrics"]

FINGERPRINT = ".lpoi-fingerprint.json"


def _hash_path(h, path: Path) -> None:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.name != FINGERPRINT:
                h.update(p.relative_to(path).as_posix().encode())
                _hash_file(h, p)
    elif path.is_file():
        _hash_file(h, path)
    else:
        h.update(b"<missing>")


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)


def fingerprint(params: dict[str, Any], inputs: list[str | os.PathLike] = ()) -> str:
    """sha256 of the params (canonical JSON) and the bytes of every input file or folder."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for p in inputs:
        h.update(str(p).encode())
        _hash_path(h, Path(p))
    return h.hexdigest()


def resumable_dir(path: str | os.PathLike, fp: str) -> Path:
    """Create ``path`` or reuse it when its fingerprint matches ``fp``; empty it otherwise (and say so).

    Shards of one stage (``--shard i/n``) start together on the same folder: the check-and-clear runs under
    an exclusive lock, so the first shard clears a stale folder and the others find the new fingerprint.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = path / FINGERPRINT
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            old = json.loads(marker.read_text()).get("fingerprint") if marker.exists() else None
            if old != fp:
                if any(path.iterdir()):
                    print(f"[lpoi] {path}: inputs or params changed since the last run; starting afresh",
                          file=sys.stderr)
                shutil.rmtree(path)
            else:
                print(f"[lpoi] {path}: resuming (finished samples are skipped)", file=sys.stderr)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, {"fingerprint": fp})
    return path


def pick_device(name: str = "auto") -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Stopwatch:
    """Wall time of a stage, for the samples/s figures in its metrics."""

    def __init__(self):
        self.t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def rate(self, n: int) -> float:
        return n / self.seconds if self.seconds > 0 else 0.0


def write_metrics(path: str | os.PathLike, metrics: dict[str, Any]) -> None:
    """One flat-ish JSON per stage under metrics/ (``dvc metrics diff`` reads them)."""
    atomic_write_json(path, _round(metrics))


def _round(v: Any) -> Any:
    # 6 significant digits: diffs show real changes, not float noise
    if isinstance(v, float):
        return float(f"{v:.6g}")
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_round(x) for x in v]
    return v
