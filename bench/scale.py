"""Per-sample stages on the local runner vs Ray (``compute.engine``), in one run: samples/s and their ratio.

    python bench/scale.py                    # CPU: local (1 process) vs a local Ray with 2 CPU actors
    python bench/scale.py --workers 4 --copies 8
    python bench/scale.py --gpus 8           # a GPU node: local on 1 GPU vs 8 actors x 1 GPU

The committed project (``git archive HEAD``) is copied to a temp dir; the embedded default's pairs are
repeated ``--copies`` times (each copy's prompts marked, so ``prepare`` keeps them all); ``prepare`` runs
once; then for each engine the stage scripts detect -> segment -> verify -> lists -> reference run as DVC
runs them. samples/s = samples / wall seconds of detect + segment + verify + reference (stage processes,
model loading included); lists runs untimed (its input to reference). The Ray side joins one Ray head the
script starts first (its start-up is printed, not timed: a cluster is started once, not per stage).
Last lines: ``identical=True`` when every output of the Ray side is byte-identical to the local side's, and
``ratio=X.XX`` (Ray samples/s over local samples/s). Not a timed test: it prints, it never asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TIMED = ("detect", "segment", "verify", "reference")
STAGES = {  # dvc.yaml's commands, with the run's own params file and out folders
    "detect": ["--prepared", "data/prepared", "--out", "{o}/detect", "--metrics", "{o}/detect.json"],
    "segment": ["--prepared", "data/prepared", "--detect", "{o}/detect", "--out", "{o}/segment",
                "--metrics", "{o}/segment.json"],
    "verify": ["--prepared", "data/prepared", "--segment", "{o}/segment", "--out", "{o}/verify",
               "--metrics", "{o}/verify.json"],
    "lists": ["--prepared", "data/prepared", "--segment", "{o}/segment", "--verify", "{o}/verify",
              "--out", "{o}/lists", "--metrics", "{o}/lists.json"],
    "reference": ["--lists", "{o}/lists", "--out", "{o}/reference", "--metrics", "{o}/reference.json"],
}


def _export(dst: Path) -> None:
    with subprocess.Popen(["git", "archive", "--format=tar", "HEAD"], cwd=REPO, stdout=subprocess.PIPE) as git:
        with tarfile.open(fileobj=git.stdout, mode="r|") as tar:
            tar.extractall(dst, filter="data")


def _pairs(repo: Path, copies: int) -> int:
    src = json.loads((repo / "data/sample/pairs.json").read_text())
    rows = [{**r, "id": f"{r.get('id', i)}-c{c}", "prompt": r["prompt"] + ("" if c == 0 else f" ({c})")}
            for c in range(copies) for i, r in enumerate(src)]
    (repo / "data/sample/pairs.json").write_text(json.dumps(rows, indent=1))
    return len(rows)


def _run(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[1:3])} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    return time.perf_counter() - t0


def _side(repo: Path, engine: str, params: dict, env: dict) -> tuple[float, int]:
    (repo / f"params_{engine}.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = f"out_{engine}"
    secs = 0.0
    for stage, args in STAGES.items():
        cmd = [sys.executable, f"stages/{stage}.py", "--params", f"params_{engine}.yaml",
               *(a.format(o=out) for a in args)]
        s = _run(cmd, repo, env)
        print(f"  {engine:5s} {stage:9s} {s:7.1f} s", flush=True)
        secs += s if stage in TIMED else 0.0
    samples = json.loads((repo / out / "detect.json").read_text())["samples"]
    return secs, samples


def _identical(repo: Path) -> bool:
    a, b = repo / "out_local", repo / "out_ray"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and not p.name.startswith("."))
    return all((b / f).is_file() and (a / f).read_bytes() == (b / f).read_bytes() for f in files
               if not f.name.endswith(".timings.json"))


def _wait_port(port: int, head: subprocess.Popen, timeout: float = 120) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        if head.poll() is not None:
            sys.exit(f"error: ray start --head exited with {head.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(2)  # the GCS answers before the raylet registers
                return
        time.sleep(0.5)
    sys.exit(f"error: the Ray head did not open port {port} in {timeout:.0f} s")


def _stop(head: subprocess.Popen) -> None:
    """Stop the head this script started and every process under it (never another user's Ray)."""
    import psutil

    try:
        tree = psutil.Process(head.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    head.terminate()  # `ray start --block` stops its cluster on SIGTERM
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        head.kill()
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="Ray actors (default: %(default)s)")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs: local uses 1, Ray uses this many actors x 1 GPU")
    ap.add_argument("--copies", type=int, default=2, help="copies of the embedded default's pairs (default: 2)")
    ap.add_argument("--keep", action="store_true", help="keep the temp project (its path is printed)")
    args = ap.parse_args()
    workers = args.gpus or args.workers

    tmp = Path(tempfile.mkdtemp(prefix="lpoi-scale-"))
    repo = tmp / "repo"
    _export(repo)
    n = _pairs(repo, args.copies)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    _run([sys.executable, "stages/prepare.py", "--pairs", "data/sample/pairs.json", "--images", "data/sample/images",
          "--out", "data/prepared", "--metrics", "out_prepare.json"], repo, env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    print(f"{n} pairs; local: 1 process; ray: {workers} actors" + (f" x 1 GPU" if args.gpus else " x 1 CPU"))

    t0 = time.perf_counter()
    port = 6391
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", str(workers),
                             "--num-gpus", str(args.gpus), "--include-dashboard", "false", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_port(port, head)
        print(f"  ray head started in {time.perf_counter() - t0:.1f} s (not timed)", flush=True)
        local_s, samples = _side(repo, "local", {**params, "compute": {**params["compute"], "engine": "local"}}, env)
        ray_compute = {**params["compute"], "engine": "ray", "address": f"127.0.0.1:{port}", "workers": workers,
                       "gpus_per_worker": 1 if args.gpus else 0}
        ray_s, _ = _side(repo, "ray", {**params, "compute": ray_compute}, env)
    finally:
        _stop(head)
    local_rate, ray_rate = samples / local_s, samples / ray_s
    print(f"local: {samples} samples through {'+'.join(TIMED)} in {local_s:.1f} s = {local_rate:.3f} samples/s")
    print(f"ray:   {samples} samples through {'+'.join(TIMED)} in {ray_s:.1f} s = {ray_rate:.3f} samples/s")
    print(f"identical={_identical(repo)}")
    print(f"ratio={ray_rate / local_rate:.2f}")
    if args.keep:
        print(f"kept: {repo}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
